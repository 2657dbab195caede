"""The untrained 3-D encoder-decoder of the deep image prior (after ADePt's reference).

Architecture (REFERENCE.md, "The ADePt reference implementation"), all 3-D:

- input: fixed noise ``[1, in_channels, nz, ny, nx]`` drawn from U[0, noise_scale];
- encoder block i: conv3 (stride s_i) + BN + ReLU, conv3 + BN + ReLU;
- skip i: 1x1x1 conv of the encoder block's *input* to ``skip_channels`` + BN + LeakyReLU;
- decoder level i (deepest first): nearest upsampling to the skip's size, concatenation
  with skip i, BN, conv3, BN, ReLU, conv1, BN, ReLU;
- head: conv1 to one channel, ``sigmoid(t) * (hi - lo) + lo``.

With the default strides (2, 2, 1, 1, 1) the bottleneck is reduced by 4 along every axis
(lateral and depth). Upsampling goes to the exact size of the skip tensor, so any volume
shape works (odd sizes included). BatchNorm stays in training mode, as in the reference.

Volume decomposition: after :meth:`DipNetwork.split_over` the network computes only one
z slab of every feature map (the input noise is the slab's part of the full noise). A
:class:`SlabExchange` supplies the neighbours' planes before each 3x3x3 convolution and
sums over the slabs for BatchNorm's statistics, so the slabs' outputs are exactly the
slabs of the one-process output. The implementation over ranks is
:class:`hpc_adept.parallel.slabs.SlabExchange`; this module knows no MPI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hpc_adept.config import DipConfig


class SlabExchange(Protocol):
    """What a network computing one z slab needs from the other slabs."""

    def halo(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """``[N, C, L, H, W]`` -> ``[N, C, L + 2 width, H, W]``: the neighbouring slabs'
        planes on each side, zeros beyond the volume's ends (differentiable)."""

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over all slabs (differentiable)."""


class _SlabBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm over all slabs: the statistics and the two reductions of the
    backward are summed over the slabs; every pass over the feature map is one fused kernel.

    Returns the *local* parts of the weight and bias gradients (the caller sums the weight
    gradients over the slabs, as for every other parameter).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, slabs, stats):  # noqa: D102
        channels = x.shape[1]
        shape = (1, -1, 1, 1, 1)
        dims = (0, 2, 3, 4)
        n_local = x.numel() // channels
        # Two-pass local moments (torch.var_mean's Welford kernel is ~6x slower on CPU).
        mean_local = x.mean(dims)
        m2_local = (x - mean_local.view(shape)).square_().sum(dims)
        # One reduction of (n, sum, sum of squared means, M2) in float64, where the
        # between-slab term sum n_i (mean_i - mean)^2 does not cancel. The count enters as
        # a Python number filled on the device (new_tensor would copy from the host and
        # wait for it on a GPU), and the summed count is never read back to the host.
        mean64 = mean_local.double()
        total = slabs.all_reduce(torch.cat([mean64.new_full((1,), float(n_local)),
                                            mean64 * n_local, mean64.square() * n_local,
                                            m2_local.double()]))
        n = total[0]
        mean64 = total[1:channels + 1] / n
        between = (total[channels + 1:2 * channels + 1] - n * mean64.square()).clamp_min(0.0)
        var64 = (total[2 * channels + 1:] + between) / n
        mean, var = mean64.to(x.dtype), var64.to(x.dtype)
        invstd = torch.rsqrt(var + eps)
        out = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        ctx.save_for_backward(x, mean, invstd, weight)
        ctx.slabs, ctx.n, ctx.eps = slabs, n, eps
        stats.extend((mean.detach(), var.detach(), ctx.n))  # for the running statistics
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, mean, invstd, weight = ctx.saved_tensors
        shape = (1, -1, 1, 1, 1)
        # the local sums of grad * xhat and grad in one fused pass (BatchNorm's own kernel)
        _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, None, None, mean, invstd, True, ctx.eps, [False, True, True])
        total = ctx.slabs.all_reduce(torch.stack([sum_dy, sum_dy_xhat])) / ctx.n
        scale = invstd if weight is None else invstd * weight
        # (grad - mean(grad) - xhat mean(grad xhat)) scale, as a per-channel affine map of x
        # plus grad * scale: two passes
        slope = total[1] * invstd * scale
        grad_x = torch.addcmul((mean * slope - total[0] * scale).view(shape), x,
                               slope.neg().view(shape))
        grad_x.addcmul_(grad, scale.view(shape))
        grad_w = sum_dy_xhat if weight is not None else None
        grad_b = sum_dy if weight is not None else None
        return grad_x, grad_w, grad_b, None, None, None


def _slab_batch_norm(bn: nn.BatchNorm3d, x: torch.Tensor, slabs: SlabExchange) -> torch.Tensor:
    """Training-mode BatchNorm of a feature map split into z slabs: global statistics,
    combined from each slab's mean and variance (as accurate as the one-process BatchNorm);
    the running statistics are updated the same way."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # statistics in float32, as autocast does for BatchNorm
    weight, bias = (bn.weight, bn.bias) if bn.affine else (None, None)
    stats: list[torch.Tensor] = []
    out = _SlabBatchNorm.apply(x, weight, bias, bn.eps, slabs, stats)
    if bn.track_running_stats and bn.running_mean is not None:
        mean, var, n = stats
        with torch.no_grad():
            momentum = bn.momentum if bn.momentum is not None else 0.1
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            # n / max(n - 1, 1) on the device: reading n would wait for the GPU
            unbiased = var * (n / (n - 1.0).clamp_min(1.0))
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
            bn.num_batches_tracked += 1
    return out


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    # No bias before BatchNorm: BN removes it exactly, so its true gradient is zero and
    # Adam would only amplify rounding noise in it (a needless rank-count dependence).
    return [nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm3d(c_out), nn.ReLU(inplace=True)]


class DipNetwork(nn.Module):
    """3-D encoder-decoder with skip connections, output in ``[out_min, out_max]``.

    Parameters
    ----------
    in_channels : int
        Channels of the input noise (reference: 48).
    channels : sequence of int
        Output channels of the encoder blocks (= decoder channels at the same level);
        reference: (32, 64, 96, 96, 96).
    strides : sequence of int
        Stride of each encoder block's first convolution (reference: (2, 2, 1, 1, 1)).
    skip_channels : int
        Channels of each skip branch (reference: 8).
    out_range : (float, float)
        Output interval of the scaled sigmoid (reference: (-0.03, 0.03)), phase per voxel.
    init_gain : float
        Gain of the Xavier-uniform initialisation of every convolution (reference: 0.2).
    activation_checkpointing : bool
        Recompute each block's activations in the backward pass (less memory, ~30% more
        compute), for large volumes.
    """

    def __init__(self, in_channels: int = 48, channels: Sequence[int] = (32, 64, 96, 96, 96),
                 strides: Sequence[int] = (2, 2, 1, 1, 1), skip_channels: int = 8,
                 out_range: tuple[float, float] = (-0.03, 0.03), init_gain: float = 0.2,
                 activation_checkpointing: bool = False) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError("channels and strides must be non-empty and of equal length")
        self.out_min, self.out_max = float(out_range[0]), float(out_range[1])
        self.activation_checkpointing = activation_checkpointing
        c_prev = in_channels
        encoders, skips, decoders = [], [], []
        for c, s in zip(channels, strides, strict=True):
            encoders.append(nn.Sequential(*_conv_bn_relu(c_prev, c, 3, s),
                                          *_conv_bn_relu(c, c, 3)))
            skips.append(nn.Sequential(nn.Conv3d(c_prev, skip_channels, 1, bias=False),
                                       nn.BatchNorm3d(skip_channels),
                                       nn.LeakyReLU(0.2, inplace=True)))
            c_prev = c
        # Decoder level i takes the deeper level's output (or the bottleneck) plus skip i.
        deeper = list(channels[1:]) + [channels[-1]]
        for c, c_deep in zip(channels, deeper, strict=True):
            decoders.append(nn.Sequential(nn.BatchNorm3d(c_deep + skip_channels),
                                          *_conv_bn_relu(c_deep + skip_channels, c, 3),
                                          *_conv_bn_relu(c, c, 1)))
        self.encoders = nn.ModuleList(encoders)
        self.skips = nn.ModuleList(skips)
        self.decoders = nn.ModuleList(decoders)
        self.head = nn.Conv3d(channels[0], 1, 1)
        self.total_stride = 1
        for stride in strides:
            self.total_stride *= int(stride)
        self._slabs: SlabExchange | None = None
        self.reset_parameters(init_gain)

    def split_over(self, slabs: SlabExchange | None) -> None:
        """Compute one z slab from now on (None: the whole volume again).

        The slab must start on a multiple of :attr:`total_stride` and, unless it is the
        last one, have a length that is a multiple of it; the input is then the slab's part
        of the full input and the output the slab's part of the full output.
        """
        self._slabs = slabs

    def reset_parameters(self, gain: float) -> None:
        """Xavier-uniform weights with ``gain``, zero biases; BN to identity."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.xavier_uniform_(module.weight, gain=gain)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and self.training and x.requires_grad:
            return checkpoint(self._block, block, x, use_reentrant=False)
        return self._block(block, x)

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        slabs = self._slabs
        if slabs is None:
            return block(x)
        for layer in block:
            if isinstance(layer, nn.Conv3d) and layer.kernel_size[0] > 1:
                # the z padding comes from the neighbours (zeros at the volume's ends)
                pad = layer.padding[0]
                x = F.conv3d(slabs.halo(x, pad), layer.weight, layer.bias, layer.stride,
                             (0, *layer.padding[1:]))
            elif isinstance(layer, nn.BatchNorm3d):
                x = _slab_batch_norm(layer, x, slabs)
            else:
                x = layer(x)
        return x

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """Map the input ``[1, in_channels, nz, ny, nx]`` to the volume ``[nz, ny, nx]``."""
        feats, skip_out = noise, []
        for enc, skip in zip(self.encoders, self.skips, strict=True):
            skip_out.append(self._run(skip, feats))
            feats = self._run(enc, feats)
        for level in reversed(range(len(self.decoders))):
            target = skip_out[level]
            if feats.shape[2:] != target.shape[2:]:
                feats = F.interpolate(feats, size=target.shape[2:], mode="nearest")
            feats = self._run(self.decoders[level], torch.cat([feats, target], dim=1))
        out = self.head(feats)
        if out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()  # the output and everything after it in float32
        out = torch.sigmoid(out)
        return (out * (self.out_max - self.out_min) + self.out_min)[0, 0]


def make_input_noise(in_channels: int, shape: Sequence[int], scale: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Fixed network input, U[0, scale], float32 ``[1, in_channels, nz, ny, nx]`` on CPU."""
    return torch.rand((1, in_channels, *shape), generator=generator) * scale


def count_parameters(model: nn.Module) -> int:
    """Number of trainable values."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def network_from_config(d: DipConfig, seed: int) -> DipNetwork:
    """The network of the ``dip`` section on the host, its weights drawn from ``seed``
    (``runtime.seed``: the same initial network on every rank)."""
    torch.manual_seed(seed)
    return DipNetwork(d.in_channels, d.channels, d.strides, d.skip_channels,
                      init_gain=d.init_gain, out_range=tuple(d.output_range),
                      activation_checkpointing=d.activation_checkpointing)


def input_from_config(d: DipConfig, volume_shape: Sequence[int], seed: int,
                      z: range) -> torch.Tensor:
    """The fixed input's slices ``z``, float32 ``[1, in_channels, len(z), ny, nx]`` on the
    host.

    The whole input is drawn (from ``seed + 1``) on every rank, then cut, so any split of
    the volume sees the numbers of the one-process input.
    """
    noise = make_input_noise(d.in_channels, volume_shape, d.input_noise_scale,
                             torch.Generator().manual_seed(seed + 1))
    return noise[:, :, z.start:z.stop].contiguous()
