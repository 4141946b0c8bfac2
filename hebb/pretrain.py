"""Hebbian pre-training (docs/NETWORKS.md#pre-training): all Hebbian layers learn in the same forward pass, no labels.

Each Hebbian layer computes its update from its own input in that pass (`HebbConv2d.hebbian_learning`),
stores -ΔW in `.grad`, and one plain SGD step (no momentum, no weight decay) applies W += lr·ΔW to all of
them, as the reference code did. Images stay on the device as uint8 and are converted per batch; the order
comes from a seeded generator on the device.

Batch norm during pre-training: the BN layers run in training mode, so each Hebbian layer learns from
batch-normalised input, exactly as in the reference; their affine parameters are not trained (they stay
at 1 and 0 until fine-tuning). Because the running statistics gathered while the weights move describe
old weights, they are recomputed at the end (`recalibrate_batchnorm`): one pass with the final weights over
up to `bn_calibration_images` training images, with cumulative (not exponential) averages. Feature
extraction and fine-tuning then start from statistics that match the weights.

Inside a torch.distributed process group (`hebb.distributed`) each process takes its share of every batch,
and the Hebbian moments and BN statistics are pooled over the processes, so the weights are those of one
process on the whole batch.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from hebb import distributed
from hebb.data import to_float
from hebb.errors import UserError
from hebb.network import HebbNet


def _batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Shuffled index batches; a last batch of a single image is dropped (BN cannot normalise it)."""
    order = torch.randperm(n, generator=generator, device=device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if len(idx) >= 2:
            yield idx


@torch.no_grad()
def recalibrate_batchnorm(net: HebbNet, images: torch.Tensor, device: torch.device | str = "cpu",
                          max_images: int = 10_000, batch_size: int = 256, seed: int = 0) -> None:
    """Recompute every BN layer's running statistics with the current weights (cumulative averages)."""
    device = torch.device(device)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(images) < 2:
        return
    was_training = net.training
    learning = [(conv, conv.hebbian_learning) for _, conv in net.hebbian_modules()]
    net.set_hebbian_learning(False)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the calibration pass
    g = torch.Generator(device="cpu").manual_seed(seed)
    pick = torch.randperm(len(images), generator=g)[:max_images]
    net.train()
    unpool = distributed.pool_statistics(net)
    try:
        for start in range(0, len(pick), batch_size):
            idx = pick[start:start + batch_size]
            if len(idx) >= 2:
                net.features(to_float(images[distributed.shard(idx)], device))
    finally:
        unpool()
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        for conv, on in learning:
            conv.hebbian_learning = on
        net.train(was_training)


def _finite_flags(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([p.detach().isfinite().all() for p in params])


def pretrain(net: HebbNet, images: torch.Tensor, epochs: int = 1, batch_size: int = 64, lr: float = 1e-3,
             device: torch.device | str = "cpu", seed: int = 0, progress: bool = True,
             on_epoch_end: Callable[[int, HebbNet, dict], None] | None = None,
             bn_calibration_images: int = 10_000, fit_input: bool = True) -> dict:
    """Train the Hebbian layers of `net` on uint8 images (N, 3, H, W) without labels; return statistics.

    epochs, batch_size, lr: the reference uses lr 1e-3, batch 64, plain SGD. `on_epoch_end(epoch, net,
    stats)` runs after every epoch (1-based), e.g. to save a checkpoint. `fit_input` fits the net's input
    normalisation / ZCA on these images first. Non-finite weights stop training with a `UserError` naming
    the layer and epoch; the net keeps the weights of the last good epoch.
    Returns: epochs, images, batch_size, lr, time_s, epoch_times_s, images_per_s.
    """
    device = torch.device(device)
    if epochs < 1 or batch_size < 2 or not lr > 0:
        raise UserError(f"need epochs >= 1, batch size >= 2 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if len(images) < 2:
        raise UserError(f"pre-training needs at least 2 images, got {len(images)}")
    hebbian = net.hebbian_modules()
    if not hebbian:
        raise UserError(f"network spec '{net.spec}' has no Hebbian (H) layer to pre-train")
    top_layer = hebbian[-1][0]
    net.to(device)
    images = images.to(device)
    if fit_input:
        net.fit_input(images, seed=seed)
    distributed.broadcast_state(net)
    params = [conv.weight for _, conv in hebbian]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)
    generator = torch.Generator(device=device).manual_seed(seed)
    stats = {"epochs": 0, "images": len(images), "batch_size": batch_size, "lr": lr, "epoch_times_s": []}
    started = time.perf_counter()
    net.train()
    net.set_hebbian_learning(True)
    unpool = distributed.pool_statistics(net)
    try:
        for epoch in range(1, epochs + 1):
            good = [p.detach().clone() for p in params]
            t0 = time.perf_counter()
            bar = tqdm(total=len(images), desc=f"pretrain {net.rule} epoch {epoch}/{epochs}", unit="img",
                       disable=not progress, leave=False)
            with torch.no_grad():
                for idx in _batches(len(images), batch_size, generator, device):
                    optimizer.zero_grad(set_to_none=True)
                    net.features(to_float(images[distributed.shard(idx)], device), top_layer)
                    optimizer.step()
                    bar.update(len(idx))
            bar.close()
            finite = _finite_flags(params).tolist()  # one host sync per epoch
            if not all(finite):
                bad = hebbian[finite.index(False)][0]
                for p, g in zip(params, good):
                    p.data.copy_(g)
                raise UserError(f"pre-training diverged: layer {bad} weights became non-finite in epoch {epoch} "
                                f"(lr {lr}); the weights before that epoch are kept; try a smaller --lr")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stats["epoch_times_s"].append(round(time.perf_counter() - t0, 3))
            stats["epochs"] = epoch
            if on_epoch_end is not None:
                net.set_hebbian_learning(False)
                recalibrate_batchnorm(net, images, device, bn_calibration_images, seed=seed)
                on_epoch_end(epoch, net, _finish(stats, started))
                net.train()
                net.set_hebbian_learning(True)
    finally:
        unpool()
        net.set_hebbian_learning(False)
        optimizer.zero_grad(set_to_none=True)
    if on_epoch_end is None:
        recalibrate_batchnorm(net, images, device, bn_calibration_images, seed=seed)
    net.eval()
    return _finish(stats, started)


def _finish(stats: dict, started: float) -> dict:
    out = dict(stats)
    out["epoch_times_s"] = list(stats["epoch_times_s"])
    out["time_s"] = round(time.perf_counter() - started, 3)
    train_time = sum(out["epoch_times_s"]) or 1e-9
    out["images_per_s"] = round(out["images"] * out["epochs"] / train_time, 1)
    return out
