"""Pipeline stages: each combines kernels with hpc_adept.parallel; plan (checks) then run.

Every stage follows :mod:`hpc_adept.stages.protocol`; :mod:`hpc_adept.stages.registry` is the
table of them that the command line and ``adept run`` read.
"""
