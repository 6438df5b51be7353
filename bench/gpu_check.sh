#!/usr/bin/env bash
# The prepared GPU check for issue #8 (run on a lent GPU machine, e.g. through the `device`
# tool): the OT correctness check and timings, then the Table-1 cell CIFAR-10-LT IF 100 on the
# JPEG copy of CIFAR-10 (stage 1 once, then CE and OT under both presets, seed 0).
#
#   bash bench/gpu_check.sh PATH/TO/cifar10_jpeg_q75.npz [OUT_DIR]
#
# Needs only the repository (with its .venv) and the archive (56 MB). Writes JSON and logs under
# OUT_DIR (default bench/results/gpu). NOT RUN YET: no GPU was available to the session that
# wrote it; the paper-preset stage 2 (f1 trained, 40 epochs of batch 16) is expected to take
# far longer than the 10-minute budget until the whole-step work of #8 lands.
set -euo pipefail
DATA=${1:?give the path of cifar10_jpeg_q75.npz}
OUT=${2:-bench/results/gpu}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"
# the Triton kernels' checks (interpreter and sm_90 build), then the benchmark, whose first
# step compares every fast path on the GPU (the compiled Triton kernels included) with the
# reference for values and gradients
$PY -m pytest -q tests/reweight/test_triton_ot.py tests/reweight/test_fused.py | tee "$OUT/tests.log"
$PY bench/ot_speed.py --device cuda --out "$OUT/ot_speed_cuda.json" | tee "$OUT/ot_speed.log"
# One reproduce invocation: stage 1 built once, CE and OT (paper preset) plus the released-code
# rows (--fidelity), all on the GPU with the data resident there.
$PY -m orchestrator.reproduce table1 --columns cifar10_if100 --methods ce ot_weight_vector \
  --fidelity --seeds 1 --gpus-per-trial 1 --storage "$OUT/runs" --quiet \
  --set data.source=cifar10_jpeg --set "data.root=$DATA" 2>&1 | tee "$OUT/table1_cell.log"
$PY -m orchestrator.report table1 --storage "$OUT/runs" --format md --out "$OUT/table1_cell.md"
echo "paper Table 1, CIFAR-10-LT IF 100: OT 18.13, CE 29.86 (top-1 error %); ours are on the"
echo "JPEG q75 copy (CIFAR-10 (JPEG q75 copy)). Report: $OUT/table1_cell.md"
