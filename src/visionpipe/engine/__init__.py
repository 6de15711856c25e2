"""Training engine: device/precision resolution, the loop, checkpoints and distributed helpers."""
