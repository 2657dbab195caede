#!/usr/bin/env bash
# Submit the pipeline as a chain of jobs, one per stage, each starting when the previous one
# succeeded (--dependency=afterok), e.g. to give each stage its own size or time limit:
#
#   jobs/chain.sh CONFIG [--set key=value ...] ...   (--set repeatable, as for adept)
#
# Per-stage sbatch options: ADEPT_SBATCH_<STAGE>, e.g.
#   ADEPT_SBATCH_PTYCHO="--nodes=8 --time=04:00:00" ADEPT_SBATCH_RECON="--nodes=1" \
#       jobs/chain.sh jobs/configs/paper.yaml
# Options for every stage: ADEPT_SBATCH (e.g. "--ntasks-per-node=2 --gpus-per-node=0" on CPUs).
# Evaluate runs when the config names evaluate.reference; the report comes last.
# Prints the job ids; `scancel` the first to cancel the chain.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: jobs/chain.sh CONFIG [--set key=value ...]" >&2
    exit 2
fi
ADEPT_HOME=${ADEPT_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export ADEPT_HOME
# shellcheck source=../launch/env.sh
source "$ADEPT_HOME/launch/env.sh"
config=$1
shift
# Overrides as adept takes them: --set k=v ... (one or more after each --set; repeatable).
overrides=()
while [[ $# -gt 0 ]]; do
    if [[ $1 != --set ]]; then
        echo "jobs/chain.sh: unexpected argument '$1' (usage: jobs/chain.sh CONFIG" \
             "[--set key=value ...])" >&2
        exit 2
    fi
    shift
    if [[ $# -eq 0 || $1 == --set ]]; then
        echo "jobs/chain.sh: --set expects at least one key=value" >&2
        exit 2
    fi
    while [[ $# -gt 0 && $1 != --set ]]; do
        overrides+=("$1")
        shift
    done
done
# The run directory and whether to evaluate, from the resolved config (errors stop here);
# NUL-separated so that any character of a path (spaces, newlines) survives.
fields=()
while IFS= read -r -d '' field; do
    fields+=("$field")
done < <(python - "$config" "${overrides[@]}" <<'PY'
import sys
from hpc_adept.config import load_config
from hpc_adept.errors import AdeptError
try:
    cfg = load_config(sys.argv[1], sys.argv[2:])
except AdeptError as exc:
    sys.exit(f"jobs/chain.sh: {exc}")
reference = cfg.evaluate.reference
sys.stdout.write(f"{cfg.output.dir}\0{'1' if reference else '0'}\0")
PY
)
if [[ ${#fields[@]} -ne 2 ]]; then
    exit 2  # the config did not load: python said why
fi
run_dir=${fields[0]}
evaluate=${fields[1]}
stages=(ptycho align recon)
[[ $evaluate == 1 ]] && stages+=(evaluate)
dependency=()
set_args=()
[[ ${#overrides[@]} -gt 0 ]] && set_args=(--set "${overrides[@]}")
for stage in "${stages[@]}" report; do
    var="ADEPT_SBATCH_${stage^^}"
    # shellcheck disable=SC2086
    if [[ $stage == report ]]; then
        id=$(sbatch --parsable --ntasks=1 --job-name=adept-report ${ADEPT_SBATCH:-} \
             ${!var:-} "${dependency[@]}" "$ADEPT_HOME/jobs/stage.sbatch" report "$run_dir")
    else
        id=$(sbatch --parsable --job-name="adept-$stage" ${ADEPT_SBATCH:-} ${!var:-} \
             "${dependency[@]}" "$ADEPT_HOME/jobs/stage.sbatch" "$stage" "$config" \
             "${set_args[@]}")
    fi
    echo "$stage: job ${id%%;*}"
    dependency=(--dependency="afterok:${id%%;*}" --kill-on-invalid-dep=yes)
done
