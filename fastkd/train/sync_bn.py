"""``--sync-bn``: BatchNorm statistics computed over the global batch of all ranks.

Under DDP each rank normalises with the mean and variance of its own batch B, so N ranks do not train the
model one process does with batch N x B (and BN with a small per-rank batch is noisier). Synchronised
BatchNorm uses the statistics of the whole global batch, in the forward and in the backward, which makes N
ranks compute what one process computes, up to float reduction order.

On GPUs this is ``torch.nn.SyncBatchNorm`` (fused NCCL kernels). It refuses CPU tensors (and DDP refuses
it in a CPU model), so on the CPU :class:`CPUSyncBatchNorm` computes the same with all-reduces whose
backward all-reduces the gradients, as torch's kernels do:
``mean = sum_r sum(x_r) / n``, ``var = sum_r sum((x_r - mean)^2) / n`` (biased, for normalising; the
running variance gets the unbiased ``var * n / (n - 1)``, as BatchNorm does), ``n`` the global count per
channel. It uses this formula in a single process too, so that a ``--sync-bn`` run computes the same
numbers whatever its number of ranks: the CPU's own kernel is less exact (measured against float64 on
random inputs, a ShuffleNet's float32 gradients are off by 3e-3 median relative with it, 4e-6 with this
formula), far more than the all-reduces' reduction order changes.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) in the forward and in the backward: the gradient of a sum over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(x) if dist.is_initialized() and dist.get_world_size() > 1 else x


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any of 1d/2d/3d: same parameters and buffers) whose training statistics are those of
    all ranks."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = torch.full((1,), xf.numel() // xf.shape[1], dtype=xf.dtype)
        sums = _sum_over_ranks(torch.cat([xf.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = xf - mean.view(shape)
        var = _sum_over_ranks(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1 - f).add_((var * n / (n - 1)).to(self.running_var.dtype), alpha=f)
        return y.to(x.dtype)


def convert(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``model`` synchronised over the ranks, weights and buffers kept: by
    ``torch.nn.SyncBatchNorm`` on an accelerator, on the CPU by :class:`CPUSyncBatchNorm` (the modules change
    class in place, so the model's feature taps and state-dict keys stay)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            m.__class__ = CPUSyncBatchNorm
    return model
