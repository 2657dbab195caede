#!/usr/bin/env bash
# Workstation launcher: one adept command on N local MPI ranks (one per GPU when there are
# GPUs), with the environment of launch/env.sh.
#
#   launch/local.sh [-n RANKS] COMMAND ARGS...
#   launch/local.sh -n 2 run -c jobs/configs/demo.yaml
set -euo pipefail
ranks=${ADEPT_RANKS:-}
if [[ ${1:-} == -n ]]; then
    ranks=$2
    shift 2
fi
if [[ -z $ranks ]]; then
    ranks=$(nvidia-smi -L 2>/dev/null | wc -l || true)
    [[ ${ranks:-0} -ge 1 ]] || ranks=1
fi
export ADEPT_RANKS=$ranks
export MPIEXEC_TIMEOUT=${MPIEXEC_TIMEOUT:-86400}
# shellcheck source=env.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"
exec "$ADEPT_HOME/launch/job.sh" "$@"
