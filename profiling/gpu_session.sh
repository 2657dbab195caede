#!/usr/bin/env bash
# The GPU measurements of issue 9, in steps that each fit a 10-minute command on a lent GPU
# machine (or any GPU node), run from the repository root:
#
#   bash profiling/gpu_session.sh check       # GPU tests: projector (torch and triton), DIP, ptycho
#   bash profiling/gpu_session.sh projector   # bench_projector --triton: torch vs triton vs reference
#   bash profiling/gpu_session.sh roofline    # bytes/FLOPs floors vs measured (both projector kernels)
#   bash profiling/gpu_session.sh dip         # DIP step at the paper's size: fp32 / bf16 / checkpointing
#   bash profiling/gpu_session.sh margin      # lateral margin's cost per DIP step (issue 18)
#   bash profiling/gpu_session.sh paper-data  # paper_scale.py --simulate-only: the dataset
#   bash profiling/gpu_session.sh paper       # paper_scale.py: the paper's problem end to end
#
# Each step writes its output to ${OUT:-runs/gpu_session}/STEP.txt as well as the terminal.
# Python: the first of $PYTHON, python3. Packages the machine lacks (e.g. PyWavelets, zarr,
# mpi4py with mpich for the 2-rank tests) can be carried as wheels in .whl/ (ignored by git;
# `pip download --no-deps -d .whl NAME` for the machine's Python on one with network).
# Every `paper` run starts from an empty runs/paper_scale/run (only the dataset made by
# `paper-data` is reused), so its stage times are the whole work: it must finish within one
# call for the comparison with the paper's Table 1.
set -euo pipefail

step=${1:?usage: bash profiling/gpu_session.sh check|projector|roofline|dip|paper-data|paper}
PYTHON=${PYTHON:-python3}
out_dir=${OUT:-runs/gpu_session}
mkdir -p "$out_dir"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --upgrade .whl/*.whl
fi

run() {  # the command line first, then its output, into STEP.txt
    { echo "\$ $*"; "$@"; } 2>&1 | tee -a "$out_dir/$step.txt"
}

: >"$out_dir/$step.txt"
run nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
run "$PYTHON" - <<'PY'
import importlib
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN",
      torch.backends.cudnn.version(), "NCCL",
      ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "-",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
for name in ("triton", "cupy", "mpi4py"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # noqa: BLE001
        print(name, "not usable:", type(exc).__name__, exc)
PY
case "$step" in
    check)  # a skipped GPU test is a failure here: every GPU path must run
        run "$PYTHON" -m pytest -q -rs -p no:cacheprovider --timeout 150 -m gpu tests
        if grep -Eq "[0-9]+ skipped" "$out_dir/$step.txt"; then
            echo "gpu_session check: GPU tests were skipped (see SKIPPED above)" >&2
            exit 1
        fi ;;
    projector)
        run "$PYTHON" profiling/bench_projector.py --device cuda --triton --repeats 10 ;;
    roofline)
        run "$PYTHON" profiling/roofline.py --device cuda ;;
    dip)
        run "$PYTHON" profiling/bench_dip.py gpu ;;
    margin)  # the small network as on the CPU (RESULTS), then the paper's network
        run "$PYTHON" profiling/bench_margin.py --device cuda --region 40 56 56 --angles 32
        run "$PYTHON" profiling/bench_margin.py --device cuda --region 48 64 64 --angles 48 \
            --steps 3 --channels 32 64 96 96 96 --in-channels 48 ;;
    paper-data)  # simulation is not part of Table 1; done apart, reused by `paper`
        run "$PYTHON" profiling/paper_scale.py --workdir runs/paper_scale --simulate-only ;;
    paper)
        run "$PYTHON" profiling/paper_scale.py --workdir runs/paper_scale ;;
    *)
        echo "unknown step: $step" >&2
        exit 2 ;;
esac
