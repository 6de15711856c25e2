#!/usr/bin/env bash
# End to end: wall time of `make run` on the built-in data from a clean data folder (goal < 5 min on
# 2 cores). Prints one JSON line. Run from the repository root: bash benchmarks/end_to_end.sh
set -euo pipefail
make install >/dev/null
rm -rf data/0*/*/ mlflow.db mlartifacts
start=$(date +%s.%N)
make run >/tmp/visionpipe-end-to-end.log 2>&1
end=$(date +%s.%N)
printf '{"benchmark": "end_to_end", "seconds": %.1f, "cores": %s, "command": "bash benchmarks/end_to_end.sh (make run)"}\n' \
  "$(echo "$end - $start" | bc)" "$(nproc)"
