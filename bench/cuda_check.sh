#!/usr/bin/env bash
# Exercise the CUDA backend on a GPU machine: the whole test suite (cuda-marked tests run there),
# a small GPU profile of the quick space, and the GPU noise floor. Results go to $OUT (or
# bench/results). Needs torch with CUDA, pytest, psutil, tqdm (nvidia-ml-py optional).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/nvidia_smi.txt"
python3 -m pytest -q -rs tests 2>&1 | tail -15 | tee "$OUT/cuda_tests.log"
python3 -m latpred.cli profile --space quick --device cuda --db "$OUT/gpu_quick.sqlite" --batch-sizes 1,8,32 \
    --threads 1 --no-progress 2>&1 | tee "$OUT/gpu_profile.log"
python3 -m latpred.cli db info "$OUT/gpu_quick.sqlite" 2>&1 | tee -a "$OUT/gpu_profile.log"
python3 bench/repeatability.py --device cuda --space quick --n 60 --json "$OUT/repeatability_cuda.json" 2>&1 \
    | tail -3 | tee "$OUT/repeatability_cuda.log"
