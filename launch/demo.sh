#!/usr/bin/env bash
# The demo: simulate a dataset from the real IC layout, reconstruct every scan by LSQ-ML
# ptychography, then the volume by FBP, on
# ADEPT_DEMO_RANKS MPI ranks (default 2). Run from the repository root (make demo does).
set -euo pipefail
config=${ADEPT_DEMO_CONFIG:-jobs/configs/demo.yaml}
ranks=${ADEPT_DEMO_RANKS:-2}
export MPIEXEC_TIMEOUT=${MPIEXEC_TIMEOUT:-1800}
launch=(mpiexec -n "$ranks")
command -v mpiexec >/dev/null || launch=()
"${launch[@]}" adept simulate -c "$config"
"${launch[@]}" adept ptycho -c "$config"
"${launch[@]}" adept recon -c "$config"
run_dir=$(python -c "import sys; from hpc_adept.config import load_config; \
print(load_config(sys.argv[1]).output.dir)" "$config")
echo "demo finished: volumes in $run_dir, slices in $run_dir/figures/fbp_slices.png"
