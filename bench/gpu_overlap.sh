#!/usr/bin/env bash
# One GPU session, time-boxed (each step under `timeout -s INT`; a cut-off profile stays resumable),
# for the host/device overlap composition (latpred/graph/overlap.py):
#   1. the CUDA stage-timing and in-place tests (tests/test_overlap.py, tests/test_inplace.py);
#   2. the 14-model torchvision zoo measured whole with its host/GPU/single-call stage times
#      (bench/measure_zoo.py, 2 passes; no predictor needed on the device);
#   3. a training store of the `default` space (then `coverage`), one pass, every spec with host_ms/gpu_ms;
#   4. the other CUDA backend tests.
# Usage: bash bench/gpu_overlap.sh [DEFAULT_TIMEOUT_S [COVERAGE_TIMEOUT_S [BACKEND_TESTS]]]
#   (defaults 180, 45, 1; a coverage time box of 0 skips that space, BACKEND_TESTS=0 skips step 4).
# Results go to $OUT (or bench/results/gpu_overlap).
# Needs torch with CUDA, torchvision, scikit-learn, skops (carried as a wheel on the lent machines).
set -uo pipefail
cd "$(dirname "$0")/.."
T_DEFAULT=${1:-180}
T_COVERAGE=${2:-45}
BACKEND_TESTS=${3:-1}
OUT=${OUT:-bench/results/gpu_overlap}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LOG="$OUT/gpu_overlap.log"
DB=/tmp/gpu_stages.sqlite
step() { echo "== $(date -u +%T) $*" | tee -a "$LOG"; }

step "device"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, torchvision, sklearn; print(torch.__version__, torchvision.__version__, sklearn.__version__)'; } 2>&1 | tee -a "$LOG"
step "stage-timing and in-place tests on the GPU"
timeout -s INT 90 python3 -m pytest -q -rs tests/test_overlap.py tests/test_inplace.py 2>&1 | tail -15 | tee -a "$LOG"
step "zoo: 14 models x batch 1,8,32 x utilization 0,0.5, 2 passes, with stage times"
timeout -s INT 200 python3 bench/measure_zoo.py --device cuda --models torchvision:zoo --batch-sizes 1,8,32 \
    --utilization 0,0.5 --passes 2 --json "$OUT/zoo_stages_gpu.json" 2>"$OUT/zoo_stages_gpu.log" | tee -a "$LOG"
tail -3 "$OUT/zoo_stages_gpu.log" | tee -a "$LOG"
step "profile default (one pass, time box ${T_DEFAULT} s) + coverage (one pass)"
timeout -s INT "$T_DEFAULT" python3 -m latpred.cli profile --space default --device cuda --db "$DB" \
    --threads 1 --passes 1 --no-progress 2>&1 | tail -3 | tee -a "$LOG"
if [ "$T_COVERAGE" -gt 0 ]; then
  timeout -s INT "$T_COVERAGE" python3 -m latpred.cli profile --space coverage --device cuda --db "$DB" \
      --threads 1 --passes 1 --no-progress 2>&1 | tail -3 | tee -a "$LOG"
fi
python3 - "$DB" "$OUT/gpu_stages.sqlite" <<'EOF' 2>&1 | tee -a "$LOG"
import json, shutil, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
rows = c.execute("SELECT extra_json FROM samples WHERE status = 'ok'").fetchall()
extra = [json.loads(r[0] or "{}") for r in rows]
print(f"{len(rows)} ok samples; gpu_ms in {sum('gpu_ms' in e for e in extra)}, host_ms in {sum('host_ms' in e for e in extra)}, host_probe_ms in {sum('host_probe_ms' in e for e in extra)}; "
      f"gpu_error in {sum('gpu_error' in e for e in extra)}: {sorted({e['gpu_error'][:80] for e in extra if 'gpu_error' in e})[:5]}")
c.close()
shutil.copyfile(sys.argv[1], sys.argv[2])
EOF
if [ "$BACKEND_TESTS" = 1 ]; then
  step "CUDA backend tests"
  timeout -s INT 60 python3 -m pytest -q -rs tests/test_devices.py tests/test_load.py tests/test_metadata.py 2>&1 | tail -6 | tee -a "$LOG"
fi
step "done"
