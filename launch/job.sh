#!/usr/bin/env bash
# Run one adept command on all ranks of the current allocation (srun) or locally (mpiexec),
# with preemption handling. Used by jobs/*.sbatch; the environment comes from launch/env.sh.
#
#   launch/job.sh COMMAND ARGS...      e.g. launch/job.sh run -c my.yaml --set dip.iterations=50
#
# Under SLURM: srun --mpi=$ADEPT_MPI_PLUGIN (default pmi2) over the job's tasks. Elsewhere:
# mpiexec -n $ADEPT_RANKS (default 1). On SIGUSR1 or SIGTERM (time limit, preemption) the
# ranks get SIGTERM. Under SLURM with ADEPT_REQUEUE=1 (default) the job is requeued when, and
# only when, adept exits with 75 (EX_TEMPFAIL: stopped at a checkpoint, the same command
# resumes it, e.g. the DIP). Any other status ends the job with that status: 0 done; a stage
# without checkpoints killed by the signal (e.g. 143) or an error is not requeued, since a
# rerun would start that work over and could hit the same limit again.
set -uo pipefail
ADEPT_HOME=${ADEPT_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
rank_wrapper="$ADEPT_HOME/launch/rank.sh"
if [[ -n ${SLURM_JOB_ID:-} ]]; then
    launcher=(srun --mpi="${ADEPT_MPI_PLUGIN:-pmi2}" --kill-on-bad-exit=1 "$rank_wrapper")
else
    launcher=(mpiexec -n "${ADEPT_RANKS:-1}" "$rank_wrapper")
fi

stopping=0
child=
on_signal() {
    stopping=1
    echo "adept job: $1 received, asking the ranks to checkpoint and stop" >&2
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
        # Signal the ranks without cancelling the step (a SIGTERM to srun would cancel it and
        # SIGKILL the ranks after KillWait, maybe before their checkpoint is written).
        scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null
    elif [[ -n $child ]]; then
        kill -TERM "$child" 2>/dev/null  # mpiexec forwards it to the ranks
    fi
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

echo "adept job: $(date -Is) host $(hostname) job ${SLURM_JOB_ID:-local}" \
     "tasks ${SLURM_NTASKS:-${ADEPT_RANKS:-1}}: adept $*" >&2
"${launcher[@]}" adept "$@" &
child=$!
status=0
# `wait` returns early when a trapped signal arrives: keep waiting for the ranks to finish.
while true; do
    wait "$child"
    status=$?
    kill -0 "$child" 2>/dev/null || break
done
EXIT_STOPPED=75  # hpc_adept.errors.EXIT_STOPPED
if [[ $status == "$EXIT_STOPPED" && -n ${SLURM_JOB_ID:-} && ${ADEPT_REQUEUE:-1} == 1 ]]; then
    echo "adept job: stopped at a checkpoint; requeueing job $SLURM_JOB_ID to continue" >&2
    scontrol requeue "$SLURM_JOB_ID"
elif [[ $stopping == 1 && $status != 0 && $status != "$EXIT_STOPPED" ]]; then
    echo "adept job: stopped by the signal without a checkpoint (status $status); not" \
         "requeued: rerun with a longer time limit or more ranks" >&2
fi
echo "adept job: $(date -Is) finished with status $status" >&2
exit "$status"
