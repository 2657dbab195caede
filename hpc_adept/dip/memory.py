"""Memory the DIP training will need, estimated before any work.

The network's activations dominate. Their sizes come from one forward pass of the real
network on PyTorch's ``meta`` device (shapes only: no memory, milliseconds), so the estimate
follows any configured network. Calibrated on this project's CPU runs (reference network,
peak RSS 820 MiB at 32 x 48 x 48 and 3.3 GB at 136 x 96 x 96): peak = base + 1.5 x the summed
layer outputs + optimiser state + the rank's projections.
"""

from __future__ import annotations

from collections.abc import Sequence

ACTIVATION_FACTOR = 1.5      # saved tensors per layer output (BN/ReLU inputs, gradients)
BASE_BYTES = 512 * 2**20     # interpreter, torch, MPI, buffers
CHECKPOINTED_FRACTION = 0.35  # activation checkpointing keeps block inputs only (about)


def activation_elements(in_channels: int, channels: Sequence[int], strides: Sequence[int],
                        skip_channels: int, volume_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(summed output elements of every layer, parameter count) for one forward pass."""
    import torch

    from hpc_adept.dip.network import DipNetwork

    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    with torch.device("meta"):
        model = DipNetwork(in_channels, channels, strides, skip_channels)
        noise = torch.empty(1, in_channels, *volume_shape)
    hooks = [m.register_forward_hook(count) for m in model.modules()
             if not list(m.children())]
    try:
        model(noise)
    finally:
        for hook in hooks:
            hook.remove()
    return total, sum(p.numel() for p in model.parameters())


def estimate_dip_bytes(in_channels: int, channels: Sequence[int], strides: Sequence[int],
                       skip_channels: int, volume_shape: tuple[int, int, int],
                       n_angles_local: int, detector_shape: tuple[int, int],
                       bf16: bool = False, activation_checkpointing: bool = False) -> int:
    """Peak bytes of one rank's DIP training (float32 unless ``bf16``).

    Parameters
    ----------
    volume_shape : (nz, ny, nx)
    n_angles_local : int
        Angles this rank projects per step.
    detector_shape : (nv, nu)
    """
    elements, params = activation_elements(in_channels, channels, strides, skip_channels,
                                           volume_shape)
    activation = ACTIVATION_FACTOR * elements * (2 if bf16 else 4)
    if activation_checkpointing:
        activation *= CHECKPOINTED_FRACTION
    optimiser = 4 * 4 * params  # weights, gradients, Adam's two moments
    projections = 3 * 4 * n_angles_local * detector_shape[0] * detector_shape[1]
    return int(BASE_BYTES + activation + optimiser + projections)
