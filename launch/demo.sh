#!/usr/bin/env bash
# The demo: simulate a dataset from the real IC layout, then run the whole pipeline
# (adept run: ptycho -> align -> recon (FBP, DIP) -> evaluate -> report) on
# ADEPT_DEMO_RANKS MPI ranks (default 2). Run from the repository root (make demo does).
set -euo pipefail
config=${ADEPT_DEMO_CONFIG:-jobs/configs/demo.yaml}
ranks=${ADEPT_DEMO_RANKS:-2}
[[ $ranks =~ ^[1-9][0-9]*$ ]] || { echo "demo: ADEPT_DEMO_RANKS must be a positive integer, got '$ranks'" >&2; exit 2; }
export MPIEXEC_TIMEOUT=${MPIEXEC_TIMEOUT:-3600}
# The cores this process may use, shared by the ranks (torch and NumPy read it).
cores=$(nproc 2>/dev/null || echo 1)
threads=$(( cores / ranks )); (( threads >= 1 )) || threads=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
launch=(mpiexec -n "$ranks")
command -v mpiexec >/dev/null || launch=()
"${launch[@]}" adept simulate -c "$config"
"${launch[@]}" adept run -c "$config"
run_dir=$(python -c "import sys; from hpc_adept.config import load_config; \
print(load_config(sys.argv[1]).output.dir)" "$config")
echo "demo finished: report in $run_dir/report.html (and report.md), volumes and metrics.json in $run_dir"
