#!/usr/bin/env bash
# One GPU session, time-boxed (each step under `timeout -s INT`, so an interrupted profile stays
# resumable): the CUDA backend's tests, the torchvision zoo measured whole on the GPU
# (`latpred validate`, for fitting and scoring a GPU composition), 20 random calibration networks,
# and a GPU training store (part of the `default` space plus `coverage`, one pass each).
# Usage: bash bench/gpu_whole_model.sh PREDICTOR_DIR [DEFAULT_LIMIT]
#   PREDICTOR_DIR: any predictor of this GPU (only its op list and predictions enter the report;
#   the measurements are what matter: refit later with `latpred calibrate --from-validation`).
# Results go to $OUT (or bench/results/gpu). Needs torch with CUDA, torchvision, scikit-learn, skops.
set -uo pipefail
cd "$(dirname "$0")/.."
PRED=${1:?usage: bash bench/gpu_whole_model.sh PREDICTOR_DIR [DEFAULT_LIMIT]}
LIMIT=${2:-2175}
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LOG="$OUT/gpu_session.log"
ZOO=resnet18,resnet50,mobilenet_v2,mobilenet_v3_large,efficientnet_b0,vgg16,densenet121,googlenet,squeezenet1_1
ZOO=$ZOO,shufflenet_v2_x1_0,regnet_y_400mf,convnext_tiny,vit_b_16,alexnet
MODELS=$(echo "$ZOO" | tr ',' '\n' | sed 's/^/torchvision:/' | paste -sd,)
step() { echo "== $(date -u +%T) $*" | tee -a "$LOG"; }

step "device"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c 'import torch, torchvision, sklearn; print(torch.__version__, torchvision.__version__, sklearn.__version__)'; } 2>&1 | tee -a "$LOG"
step "CUDA backend tests"
timeout -s INT 60 python3 -m pytest -q -rs tests/test_devices.py tests/test_load.py tests/test_metadata.py 2>&1 | tail -8 | tee -a "$LOG"
step "zoo: 14 models x batch 1,8,32 x utilization 0,0.5"
timeout -s INT 170 python3 -m latpred.cli validate --predictor "$PRED" --device cuda --models "$MODELS" --batch-sizes 1,8,32 \
    --utilization 0,0.5 --json "$OUT/whole_model_gpu.json" 2>&1 | tee -a "$LOG" | tail -3
step "20 random calibration networks"
cp -r "$PRED" /tmp/gpu_pred_cal
timeout -s INT 140 python3 -m latpred.cli calibrate --predictor /tmp/gpu_pred_cal --device cuda --networks 20 \
    --cases "$OUT/calibration_cases_gpu.json" 2>&1 | tee -a "$LOG" | tail -3
step "profile default (first $LIMIT specs, one pass) + coverage (one pass)"
timeout -s INT 120 python3 -m latpred.cli profile --space default --device cuda --db "$OUT/gpu_default_coverage.sqlite" \
    --threads 1 --passes 1 --limit "$LIMIT" --no-progress 2>&1 | tail -3 | tee -a "$LOG"
timeout -s INT 55 python3 -m latpred.cli profile --space coverage --device cuda --db "$OUT/gpu_default_coverage.sqlite" \
    --threads 1 --passes 1 --no-progress 2>&1 | tail -3 | tee -a "$LOG"
python3 -m latpred.cli db info "$OUT/gpu_default_coverage.sqlite" 2>&1 | tail -25 | tee -a "$LOG"
step "done"
