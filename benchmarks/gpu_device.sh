#!/usr/bin/env bash
# The one script to run on a GPU machine, in one call of this workplace's device tool:
#
#     run(command="bash benchmarks/gpu_device.sh", carry=[".whl"], timeout_s=480)
#
# Before the call, here (it needs a registry; the GPU machine has none), fill the git-ignored .whl/
# with the wheels benchmarks/gpu_wheels.txt lists (~15 MB; never commit them):
#
#     bash benchmarks/gpu_device.sh --download
#
# On the machine (torch, transformers, peft, accelerate, triton, ..., but no pydantic, datasets,
# trl, liger-kernel or cut-cross-entropy): the wheels go into /tmp/site (no index, no
# dependencies: the list is complete), then benchmarks/gpu.py runs with a time budget
# (BUDGET_S, default 400 s from the start of this script): first the smoke test of seglm's GPU
# path (benchmarks/gpu_smoke.py: seglm train in bf16 and fp16 with the fused head and LoRA on
# lm_head, seglm eval, a 2-process torchrun eval where there are 2 GPUs), then the LoRA training
# steps and the output-layer rows; a row that would start after the budget is skipped, so the
# call ends in about 8 minutes. Writes $OUT/gpu.json and $OUT/gpu.log (nvidia-smi's output in it).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/gpu_wheels.txt

requirements() {
    grep -v -e '^#' -e '^$' "$WHEELS"
}

download() {
    for version in 3.11 3.12 3.13; do
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl $(requirements) || return 1
    done
    du -sh .whl
}

device() {
    local started=$SECONDS
    export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    python3 --version
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    if compgen -G ".whl/*.whl" >/dev/null; then
        # One at a time: a wheel missing for this Python loses its rows, not the others.
        for requirement in $(requirements); do
            python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
                --target /tmp/site --find-links .whl "$requirement" \
                || echo "not installed: $requirement"
        done
        export PYTHONPATH=/tmp/site:src
    else
        echo "no wheels in .whl/ (bash benchmarks/gpu_device.sh --download): seglm needs pydantic"
    fi
    python3 benchmarks/gpu.py --parts smoke train head --out "$OUT/gpu.json" \
        --time-budget-s $((${BUDGET_S:-400} - (SECONDS - started))) "$@"
}

if [[ "${1:-}" == "--download" ]]; then
    download
    exit
fi
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
device "$@" 2>&1 | tee "$OUT/gpu.log"
exit "${PIPESTATUS[0]}"
