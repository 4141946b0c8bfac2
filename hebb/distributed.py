"""Data-parallel training over the processes `torchrun` starts (docs/SCALING.md#data-parallel-training).

Inside `process_group()` every process holds all the images and the same network, walks the same seeded
batch order, and takes its contiguous share of every batch (`shard`). The trainers do the rest through the
helpers here, which do nothing without a process group, so a single process runs exactly as before:

- Hebbian pre-training (`pool_statistics`): each Hebbian layer sums its raw update moments over the
  processes before it turns them into ΔW (normalisation, SoftHebb's rate), and each batch-norm layer
  normalises with the statistics of the whole batch. Every process then applies the same step: N processes
  on a global batch reach the weights of one process on that batch, up to float32 rounding.
- Fine-tuning and probes (`data_parallel`): DistributedDataParallel averages the gradients; each process
  weighs its loss by its share of the batch, so the average is the gradient of the whole batch's mean loss.
  Batch norm normalises with each process's own batch there, as under DDP (SyncBatchNorm needs a GPU and drops
  BN*); the running statistics are averaged over the processes after every epoch.

Collectives go through gloo for CPU tensors and NCCL for CUDA tensors.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from hebb.errors import UserError

#: The environment torchrun gives each process (env:// initialisation reads it).
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def active() -> bool:
    """Whether this process belongs to an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that prints and writes files."""
    return rank() == 0


@contextmanager
def process_group() -> Iterator[None]:
    """Join the job torchrun launched (env:// initialisation) for the duration of the block, then leave it.

    A clear `UserError` when the torchrun environment is missing or torch was built without distributed support.
    """
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise UserError(f"--distributed needs the environment torchrun sets ({', '.join(missing)} missing): launch "
                        f"as torchrun --nproc-per-node N \"$(command -v hebbir)\" COMMAND --distributed ...")
    if not dist.is_available() or not dist.is_gloo_available():
        raise UserError("--distributed: this torch build has no torch.distributed with the gloo backend")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """The device this process computes on: its own GPU (LOCAL_RANK) when `device` is CUDA and a group is up."""
    if device.type != "cuda" or not active():
        return device
    index = int(os.environ.get("LOCAL_RANK", 0))
    if index >= torch.cuda.device_count():
        raise UserError(f"process {rank()} wants GPU {index}, but only {torch.cuda.device_count()} are visible: "
                        f"start at most that many processes per machine")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def shard(t: torch.Tensor) -> torch.Tensor:
    """This process's contiguous share of the rows of `t` (all of `t` without a process group)."""
    if not active():
        return t
    return t.tensor_split(world_size())[rank()]


def all_sum(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum each tensor over the processes, in place; return them."""
    if active():
        for t in tensors:
            dist.all_reduce(t)
    return tensors


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """The rows of every process's `local`, concatenated in rank order (the inverse of `shard`)."""
    if not active():
        return local
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(local)], device=local.device))
    longest = max(int(s) for s in sizes)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(n)] for part, n in zip(parts, sizes)])


def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (they start, and stay, identical)."""
    if active():
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` wrapped in DistributedDataParallel when a process group is up, else `module` itself.

    Buffers are not broadcast at every step (a ZCA matrix alone is 37 MB): each process's BN keeps its own
    running statistics until `average_batchnorm` pools them.
    """
    if not active():
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                               broadcast_buffers=False)


def average_batchnorm(module: nn.Module) -> None:
    """Replace every BN layer's running mean and variance by their average over the processes."""
    if not active():
        return
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats:
            for t in all_sum([bn.running_mean, bn.running_var]):
                t.div_(world_size())


def pool_statistics(net: nn.Module) -> Callable[[], None]:
    """Make the training-mode passes of `net` pool their statistics over the processes; return the undo.

    Hebbian layers sum their update moments (`HebbConv2d.reduce_sums`), batch-norm layers normalise with the
    mean and variance of the whole batch and update their running statistics with them. For passes without
    gradients (pre-training, BN recalibration). Nothing changes without a process group. Calls nest: each
    undo restores what its call found.
    """
    if not active():
        return lambda: None
    from hebb.layers import HebbConv2d

    hebbian = [m for m in net.modules() if isinstance(m, HebbConv2d)]
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.reduce_sums for m in hebbian], [bn.__dict__.get("forward") for bn in bns]
    for m in hebbian:
        m.reduce_sums = all_sum
    for bn in bns:
        bn.forward = functools.partial(_pooled_batch_norm, bn)

    def undo() -> None:
        for m, reducer in zip(hebbian, saved[0]):
            m.reduce_sums = reducer
        for bn, forward in zip(bns, saved[1]):
            if forward is None:
                bn.__dict__.pop("forward", None)
            else:
                bn.forward = forward

    return undo


@torch.no_grad()
def _pooled_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """`bn(x)` with the batch statistics of every process's x together (training mode), else `bn(x)`."""
    if not bn.training or not bn.track_running_stats:
        return type(bn).forward(bn, x)
    from hebb.network import BatchNormStar

    dims = [0, *range(2, x.dim())]
    # Two passes in float64 (sum, then squared deviations): the variance of large activations stays exact.
    sums = torch.cat([x.sum(dims, dtype=torch.float64), x.new_full((1,), x.numel() / x.shape[1],
                                                                    dtype=torch.float64)])
    all_sum([sums])
    count = sums[-1]
    mean = sums[:-1] / count
    shape = (1, -1) + (1,) * (x.dim() - 2)
    squares = (x - mean.view(shape)).square().sum(dims)
    var = all_sum([squares])[0] / count
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / bn.num_batches_tracked.item() if bn.momentum is None else bn.momentum
    bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
    unbiased = var * count / (count - 1).clamp_min(1)
    bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
    out = F.batch_norm(x, mean.to(x.dtype), var.to(x.dtype), bn.weight, bn.bias, False, 0.0, bn.eps)
    return bn.rescale(out) if isinstance(bn, BatchNormStar) else out
