"""Run a trained model on raw images: the preprocessing and post-processing the pyfunc model ships."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from visionpipe.data.images import load_rgb, to_rgb
from visionpipe.data.transforms import compose
from visionpipe.tasks import get_task, transform_normalization

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"


def save_bundle(bundle: dict[str, Any], folder: Path) -> None:
    """Write spec.json + model.safetensors into ``folder`` (created)."""
    from visionpipe.engine.checkpoint import save_weights

    folder.mkdir(parents=True, exist_ok=True)
    save_weights(bundle["state_dict"], folder / WEIGHTS_FILE, metadata={"task": bundle["spec"]["task"]})
    (folder / SPEC_FILE).write_text(json.dumps(bundle["spec"], indent=2))


def load_bundle(folder: str | Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    folder = Path(folder)
    return {"spec": json.loads((folder / SPEC_FILE).read_text()), "state_dict": load_file(str(folder / WEIGHTS_FILE))}


def decode_image(item: Any) -> np.ndarray:
    """A path, base64-encoded image bytes, raw bytes, PIL image or HxWx3 array, as an RGB uint8 array."""
    if isinstance(item, np.ndarray):
        array = item if item.ndim == 3 else np.repeat(item[..., None], 3, axis=2)
        return np.ascontiguousarray(array[..., :3].astype(np.uint8))
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, (bytes, bytearray)):
        return to_rgb(Image.open(io.BytesIO(item)))
    if isinstance(item, (str, Path)):
        text = str(item)
        try:
            is_file = len(text) < 4096 and Path(text).is_file()
        except OSError:  # a long base64 string is no file name
            is_file = False
        if is_file:
            return load_rgb(text)
        try:
            return to_rgb(Image.open(io.BytesIO(base64.b64decode(text, validate=True))))
        except Exception:
            raise ValueError(f"{text[:80]!r} is neither an existing image file nor base64-encoded image bytes") from None
    raise TypeError(f"Cannot read an image from {type(item).__name__}")


def encode_png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def limit_detections(result: dict[str, Any], score_threshold: float | None = None, max_detections: int | None = None) -> dict[str, Any]:
    """A detection result (``boxes``, ``labels``, ``scores``, best first) cut to the boxes scoring at least
    ``score_threshold``, then to the first ``max_detections``; other results are returned unchanged."""
    if "scores" not in result:
        return result
    keep = [i for i, s in enumerate(result["scores"]) if score_threshold is None or s >= score_threshold]
    keep = sorted(keep, key=lambda i: -result["scores"][i])[:max_detections]
    return {**result, **{k: [result[k][i] for i in keep] for k in ("boxes", "labels", "scores")}}


class Predictor:
    """A trained model with its preprocessing; ``predict`` maps images to task outputs."""

    def __init__(self, bundle: dict[str, Any], device: str | torch.device = "cpu", batch_size: int = 16):
        self.spec = bundle["spec"]
        self.task = get_task(self.spec)
        self.device = torch.device(device)
        self.model = self.task.build_model()
        self.model.load_state_dict(bundle["state_dict"])
        self.model.to(self.device).eval()
        mean, std = transform_normalization(self.spec["task"], self.spec["mean"], self.spec["std"])
        self.transform = compose(self.spec["task"], [], self.spec["image_size"], mean, std, train=False)
        self.batch_size = batch_size

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs) -> "Predictor":
        return cls(load_bundle(folder), **kwargs)

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        extra = {"bboxes": np.zeros((0, 4), dtype=np.float32), "labels": []} if self.spec["task"] == "detection" else {}
        return self.transform(image=pixels, **extra)["image"]

    @torch.inference_mode()
    def predict(self, images: Iterable[Any], score_threshold: float | None = None,
                max_detections: int | None = None) -> list[dict[str, Any]]:
        """Task outputs per image. Detection: keep boxes scoring at least ``score_threshold``, at most
        ``max_detections`` per image (on top of the model's own evaluation.* post-processing)."""
        arrays = [decode_image(i) for i in images]
        out: list[dict[str, Any]] = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start:start + self.batch_size]
            batch = torch.stack([self.preprocess(a) for a in chunk]).to(self.device)
            out.extend(self._postprocess(batch, chunk))
        if score_threshold is not None or max_detections is not None:
            out = [limit_detections(r, score_threshold, max_detections) for r in out]
        return out

    def _postprocess(self, batch: torch.Tensor, originals: list[np.ndarray]) -> list[dict[str, Any]]:
        classes, task = self.spec["classes"], self.spec["task"]
        if task == "classification":
            scores, idx = self.task.postprocess(self.model(batch))
            return [{"label": classes[i[0]], "score": float(s[0]), "top_labels": [classes[j] for j in i], "top_scores": [float(v) for v in s]}
                    for i, s in zip(idx.tolist(), scores.tolist())]
        if task == "detection":
            size = self.spec["image_size"]
            results = []
            for det, original in zip(self.model(list(batch)), originals):
                h, w = original.shape[:2]
                boxes = det["boxes"].float().cpu() * torch.tensor([w / size, h / size, w / size, h / size])
                results.append({"boxes": [[round(v, 2) for v in b] for b in boxes.tolist()],
                                "labels": [classes[i - 1] for i in det["labels"].tolist()],
                                "scores": [round(float(s), 5) for s in det["scores"].tolist()]})
            return results
        logits = self.model(batch).float()
        results = []
        for logit, original in zip(logits, originals):
            up = torch.nn.functional.interpolate(logit[None], size=original.shape[:2], mode="bilinear", align_corners=False)
            results.append({"mask": up.argmax(1)[0].to(torch.uint8).cpu().numpy()})
        return results
