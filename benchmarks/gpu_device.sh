#!/usr/bin/env bash
# benchmarks/gpu.py on the device machine (an H200), in one call of the device tool:
#
#     run(command="bash benchmarks/gpu_device.sh", carry=[".whl"], timeout_s=480)
#
# Estimated 4-5 minutes there; gpu.py skips the rows that would start after 390 s, so the call
# ends inside its limit. Before the call, here, in the repository root (.whl/ is git-ignored:
# never commit the wheels; six pure-Python wheels, about 3 MB):
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#         --platform manylinux2014_x86_64 -d .whl \
#         liger-kernel==0.8.5 cut-cross-entropy==25.1.1 trl==1.16.0 \
#         datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#
# The machine has torch 2.11, triton, transformers, peft, accelerate and pandas (seglm runs from
# src/); it lacks the comparison packages. Liger-Kernel and CCE need only torch and triton. TRL's
# kernel imports trl.trainer.utils in its backward, which imports datasets (and so dill and
# multiprocess): hence the last three. Without .whl/ the Liger, CCE and TRL rows are skipped
# with a note. Results come back in $OUT: gpu.json, gpu.log, nvidia-smi.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:src
else
    echo "no wheels in .whl/: the Liger-Kernel, CCE and TRL rows will be skipped"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    | tee "$OUT/nvidia-smi.txt"
python3 benchmarks/gpu.py --time-budget-s 390 --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu.log"
