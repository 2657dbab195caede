# shellcheck shell=bash
# Environment of an adept run; sourced by jobs/*.sbatch and launch/local.sh.
#
# Site settings come from ADEPT_SITE_FILE, else $ADEPT_HOME/jobs/site.env when present
# (copy jobs/site.env.example): ADEPT_MODULES (modules to load; an error when there is no
# `module` command), ADEPT_VENV (a virtual environment with hpc_adept installed, an error
# when it does not exist; unset: $ADEPT_HOME/.venv when present, else adept from PATH),
# ADEPT_MPI_PLUGIN (srun --mpi plugin: pmi2, pmix, cray_shasta ...).
#
# Debugging distributed runs: ADEPT_DEBUG_DIST=1 sets
#   NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,COLL   NCCL's view of the rings and collectives
#   TORCH_DISTRIBUTED_DEBUG=DETAIL                checks that ranks call the same collectives
#   TORCH_CPP_LOG_LEVEL=INFO                      process-group set-up and timeouts
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=1             a failed NCCL op aborts instead of hanging
# Other variables worth knowing: NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME (the network
# interface when the default one is wrong), NCCL_IB_DISABLE=1 (no InfiniBand),
# MPIEXEC_TIMEOUT (mpiexec kills a hung job after this many seconds).
ADEPT_HOME=${ADEPT_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export ADEPT_HOME
site=${ADEPT_SITE_FILE:-$ADEPT_HOME/jobs/site.env}
if [[ -f $site ]]; then
    # shellcheck disable=SC1090
    source "$site"
fi
if [[ -n ${ADEPT_MODULES:-} ]]; then
    if ! command -v module >/dev/null 2>&1; then
        echo "launch/env.sh: ADEPT_MODULES is set ($ADEPT_MODULES) but there is no module" \
             "command here; load the environment modules init script or unset ADEPT_MODULES" >&2
        return 2 2>/dev/null || exit 2
    fi
    # shellcheck disable=SC2086
    if ! module load $ADEPT_MODULES; then
        echo "launch/env.sh: module load $ADEPT_MODULES failed" >&2
        return 2 2>/dev/null || exit 2
    fi
fi
# ADEPT_VENV, when set, must be a virtual environment; the default one is optional (adept may
# be installed otherwise, e.g. by the modules).
if [[ -n ${ADEPT_VENV:-} ]]; then
    if [[ ! -f $ADEPT_VENV/bin/activate ]]; then
        echo "launch/env.sh: ADEPT_VENV=$ADEPT_VENV is not a virtual environment" \
             "(no bin/activate)" >&2
        return 2 2>/dev/null || exit 2
    fi
    # shellcheck disable=SC1091
    source "$ADEPT_VENV/bin/activate"
elif [[ -f $ADEPT_HOME/.venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    source "$ADEPT_HOME/.venv/bin/activate"
fi
export PYTHONUNBUFFERED=1
if [[ ${ADEPT_DEBUG_DIST:-0} == 1 ]]; then
    export NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,COLL TORCH_DISTRIBUTED_DEBUG=DETAIL \
           TORCH_CPP_LOG_LEVEL=INFO TORCH_NCCL_ASYNC_ERROR_HANDLING=1
fi
if ! command -v adept >/dev/null; then
    echo "adept: not found; set ADEPT_VENV or install hpc_adept (make venv)" >&2
    return 2 2>/dev/null || exit 2
fi
