#!/usr/bin/env bash
# Per-rank wrapper: threads per rank and the GPU binding, then exec the command.
# The program binds cuda:(local_rank % visible GPUs) itself (hpc_adept/backend.py), with the
# local rank taken from MPI, so every GPU of the node stays visible to every rank (hiding
# GPUs per task, e.g. --gpus-per-task, breaks CUDA IPC for GPU-aware MPI and NCCL).
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}
fi
exec "$@"
