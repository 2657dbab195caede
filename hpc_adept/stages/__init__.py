"""Pipeline stages: each combines kernels with hpc_adept.parallel; plan (checks) then run."""
