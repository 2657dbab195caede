"""hpc_adept: ADePt ptycho-laminography of integrated circuits on MPI + GPUs."""

__version__ = "0.1.0"
