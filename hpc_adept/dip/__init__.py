"""Deep image prior reconstruction (ADePt): network, loss terms, training loop, checkpoints.

MPI-free kernels: the distributed pieces (gradient all-reduce, stop agreement) come in
through :class:`hpc_adept.dip.trainer.Communicator` (see :mod:`hpc_adept.parallel.ddp`).
"""

from hpc_adept.dip.checkpoint import (
    fingerprint,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from hpc_adept.dip.losses import (
    data_loss,
    emphasise,
    fourier_emphasis,
    tv_loss,
    tv_slice_weights,
    wavelet_emphasis,
)
from hpc_adept.dip.network import DipNetwork, count_parameters, make_input_noise
from hpc_adept.dip.shard import ShardData, data_weight
from hpc_adept.dip.trainer import (
    Communicator,
    DipTrainer,
    SerialCommunicator,
    TrainResult,
    train_dip,
)

__all__ = [
    "Communicator",
    "DipNetwork",
    "DipTrainer",
    "SerialCommunicator",
    "ShardData",
    "TrainResult",
    "count_parameters",
    "data_loss",
    "data_weight",
    "emphasise",
    "fingerprint",
    "fourier_emphasis",
    "list_checkpoints",
    "load_latest_checkpoint",
    "make_input_noise",
    "save_checkpoint",
    "train_dip",
    "tv_loss",
    "tv_slice_weights",
    "wavelet_emphasis",
]
