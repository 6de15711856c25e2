#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md in one prepared run (< 8 minutes on one lent GPU). Run from the
# repository root on the GPU machine, with the project's venv (or its packages) and the `bench` extra:
#
#     OUT=/path/to/results bash benchmarks/gpu_suite.sh          # $OUT: where every figure lands
#
# Each step prints JSON lines (one per measurement, each with its command) into $OUT/gpu_suite.jsonl and
# has its own time limit, so a slow step cannot eat the others' time:
#   1. real-JPEG ResNet-50 training at 224 px, data.decode cpu then gpu (nvJPEG), 16 workers   (~2.5 min)
#   2. detection on the GPU: GPU-busy % of the real pipeline path (FCOS and rtdet)              (~1.5 min)
#   3. the peer comparison (benchmarks/peer.py) at GPU scale: visionpipe vs Ultralytics         (~3 min)
#   4. MLflow system metrics (system/gpu_*) of one `visionpipe run`, in a file store under $OUT (~0.5 min)
# Steps 1-4 skip themselves (with a JSON line saying why) when their prerequisite is missing.
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
LOG="$OUT/gpu_suite.jsonl"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/src:$ROOT/benchmarks:${PYTHONPATH:-}" KEDRO_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 \
       MLFLOW_DISABLE_TELEMETRY=true NO_ALBUMENTATIONS_UPDATE=1 YOLO_OFFLINE=1
PY=${PYTHON:-python}
started=$(date +%s)

note() { printf '{"benchmark": "gpu_suite", "step": "%s", "note": "%s"}\n' "$1" "$2" | tee -a "$LOG"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, JSON lines to the log, the rest to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" >&2
  timeout "$limit" "$@" > >(tee -a "$OUT/$name.log" | grep '^{' >> "$LOG") 2>>"$OUT/$name.log"
  local rc=$?
  [ $rc -eq 0 ] || note "$name" "exit $rc (124: hit its ${limit}s limit); see $name.log"
}

$PY - <<'EOF' | tee -a "$LOG"
import json, torch
print(json.dumps({"benchmark": "gpu_suite", "step": "device", "cuda": torch.cuda.is_available(),
                  "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "torch": torch.__version__}))
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$OUT/nvidia-smi.txt" 2>&1 || true

# 1. real JPEG, ResNet-50 @224 (the >= 5,000 img/s goal): data.decode cpu (PIL + albumentations in workers) vs gpu (nvJPEG)
JPEG=${JPEG_DIR:-/tmp/gpu_suite_jpeg}
if $PY -c "import skimage, simplejpeg" 2>/dev/null; then
  [ -d "$JPEG" ] || step jpeg_build 90 $PY benchmarks/jpeg_path.py build --out "$JPEG" --files 8000
  step jpeg_decode_gpu 40 $PY benchmarks/jpeg_path.py decode --data "$JPEG" --images 4000 --batch 256 --device cuda
  for decode in cpu gpu; do
    step "jpeg_train_$decode" 75 $PY benchmarks/jpeg_path.py train --data "$JPEG" --images 8000 --batch-size 256 --workers 16 \
      --device cuda --decode $decode
  done
else
  note jpeg "skipped: the bench extra (scikit-image, simplejpeg) is not installed: pip install -e '.[bench]'"
fi

# 2. detection on the GPU: the real pipeline path (decode + augment in workers, AMP, eval), GPU-busy sampled by NVML
step detection_gpu 60 $PY benchmarks/gpu_pipeline.py --tasks detection --epochs 3 --scale 16 --workdir "$OUT"
step detection_gpu_fcos 60 $PY benchmarks/gpu_pipeline.py --tasks detection --epochs 3 --scale 16 --workdir "$OUT/fcos" \
  --yaml "{model: {name: fcos, kwargs: {fpn_channels: 64}}}"

# 3. peer comparison at GPU scale. Ultralytics in its own venv: from the package index when one is reachable, else
# from the wheels in $PEER_WHEELS (`pip download ultralytics ultralytics-thop --no-deps -d DIR` beforehand), over the
# machine's own torch
WHEELS=${PEER_WHEELS:+--peer-wheels $PEER_WHEELS}
step peer_gpu 200 $PY benchmarks/peer.py --device cuda $WHEELS --tasks detection classification --train 2000 --val 500 --det-epochs 5 \
  --cls-train 4000 --cls-val 1000 --cls-epochs 5 --batch 64 --workdir "$OUT/peer"

# 4. MLflow system metrics with GPU rows, in a file store copied back under $OUT
PROJECT="$OUT/sysmetrics_project"
rm -rf "$PROJECT" && mkdir -p "$PROJECT" && cp -r "$ROOT/conf" "$ROOT/pyproject.toml" "$PROJECT/" && cp -r "$ROOT/src" "$PROJECT/src"
( cd "$PROJECT" && MLFLOW_TRACKING_URI="file://$OUT/mlruns" VISIONPIPE_SYSTEM_METRICS_INTERVAL=1 step sysmetrics 60 \
    $PY -m visionpipe run --pipelines=classification --params="classification.train.epochs=3,classification.data.builtin.train_images=4000" )
$PY - "$OUT/mlruns" <<'EOF' | tee -a "$LOG"
import json, sys
from pathlib import Path
names = sorted({p.name for p in Path(sys.argv[1]).glob("*/*/metrics/system/*")})
print(json.dumps({"benchmark": "gpu_suite", "step": "sysmetrics", "system_metrics": names, "store": sys.argv[1]}))
EOF
printf '{"benchmark": "gpu_suite", "step": "done", "seconds": %d, "out": "%s"}\n' $(( $(date +%s) - started )) "$OUT" | tee -a "$LOG"
