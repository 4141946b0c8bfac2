"""Pre-training epoch and fine-tuning run, each against a straightforward loop on the same images.

    pretrain   hebb.pretrain.pretrain, one epoch over n images (the architecture's batch size and Hebbian
               learning rate: 64 and 1e-3 for cifar6, 10 and 1 for wide3), input fitting left out
    unfused    the FastHebb-style loop: per layer unfold the input, compute the outputs from the patch rows,
               apply the plain matrix rule (HPCA: tril(YᵀY)·W; SoftHebb: its step), then SGD on all layers
    finetune   hebb.finetune.finetune, end to end at layer 5, with validation every epoch
    plain      the same net, epochs, optimiser and per-epoch validation pass in a bare loop
    probe      hebb.finetune.probe, a linear head on frozen layer-5 features (features once, Adam, validation)
    plain      the bare forward for the features, then the same head, epochs and validation in a bare loop
"""

from __future__ import annotations

import copy
import inspect
import statistics

import torch
import torch.nn.functional as F

from bench import flops
from bench.rules import UNFUSED, unfold_rows
from bench.timing import sync, wall_time
from hebb.data import ArraySet, to_float
from hebb.network import build_network


def _accepted(fn, **kwargs) -> dict:
    """The subset of kwargs that `fn` accepts (the training functions grow options over time)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _pretrain(net, images, device, batch_size, lr, seed=0):
    from hebb.pretrain import pretrain

    extra = _accepted(pretrain, fit_input=False, bn_calibration_images=256)
    return pretrain(net, images, epochs=1, batch_size=batch_size, lr=lr, device=device, seed=seed,
                    progress=False, **extra)


def _unfused_update(conv, rows: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    if conv.rule == "swta":
        return UNFUSED["swta"](rows, w2, conv.temperature)
    if conv.rule != "softhebb":
        return UNFUSED[conv.rule](rows, w2)
    dw = UNFUSED["softhebb"](rows, w2, conv.inv_temperature)
    rate = conv.eta * ((w2.norm(dim=1) - 1).abs() + 1e-10).sqrt()
    return dw * rate[:, None] / (dw.abs().max() + 1e-30)


@torch.no_grad()
def unfused_epoch(net, images: torch.Tensor, device: torch.device, batch_size: int = flops.BATCH,
                  lr: float = 1e-3, seed: int = 0) -> None:
    """One pre-training epoch the straightforward way (unfold per layer + the plain matrix rule)."""
    net.train()
    order = torch.randperm(len(images), generator=torch.Generator(device=device).manual_seed(seed), device=device)
    for start in range(0, len(images), batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < 2:
            continue
        x = net.preprocess(to_float(images[idx], device))
        deltas = []
        for block in net.layers:
            if block.norm_first:
                x = block.bn(x)
            if block.padding:
                x = F.pad(x, (block.padding,) * 4, mode="reflect")
            conv = block.conv
            m, k = conv.weight.shape[0], conv.kernel_size
            w2 = conv.weight.reshape(m, -1)
            rows = unfold_rows(x, k)
            deltas.append(_unfused_update(conv, rows, w2))
            w_used = w2 if conv.rule in ("hpca", "softhebb") else F.normalize(w2, dim=1)
            side = x.shape[-1] - k + 1
            y = conv.activation((rows @ w_used.T).reshape(x.shape[0], side, side, m).permute(0, 3, 1, 2))
            if block.pool is not None:
                y = block.pool(y)
            x = y if block.norm_first else block.bn(y)
        for block, dw in zip(net.layers, deltas):
            block.conv.weight.add_(dw.reshape_as(block.conv.weight), alpha=lr)
    sync(device)


def pretrain_epoch(rule: str, images: torch.Tensor, device: torch.device, repeats: int = 1,
                   warmup_images: int = 256, baseline: bool = True, arch: str = "cifar6") -> dict:
    """Seconds of one epoch of `pretrain` over `images` (median of `repeats`), and of the unfused loop."""
    from hebb.architectures import architecture

    plan = architecture(arch)
    batch, lr = plan.batch_size, plan.hebbian_lr
    torch.manual_seed(0)
    proto = build_network(arch=arch, rule=rule).to(device)
    images = images.to(device)
    n = len(images)
    _pretrain(copy.deepcopy(proto), images[:warmup_images], device, batch, lr)  # warm-up: allocator, kernels
    epochs = []
    for _ in range(repeats):
        stats = _pretrain(copy.deepcopy(proto), images, device, batch, lr)
        epochs.append(stats["epoch_times_s"][0])
    epochs.sort()
    epoch_s = epochs[len(epochs) // 2]
    out = {"rule": rule, "arch": arch, "n_images": n, "batch": batch, "lr": lr, "epoch_s": epoch_s,
           "epoch_s_all": epochs, "images_per_s": n / epoch_s, "time_s_with_bn_recalibration": stats["time_s"]}
    if baseline:
        unfused_epoch(copy.deepcopy(proto), images[:warmup_images], device, batch, lr)
        t, _ = wall_time(lambda: unfused_epoch(copy.deepcopy(proto), images, device, batch, lr), device)
        out.update(unfused_epoch_s=t, unfused_images_per_s=n / t, speedup_vs_unfused=t / epoch_s)
    return out


@torch.no_grad()
def _val_correct(model, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> int:
    model.eval()
    hits = sum(int((model(x[s:s + batch_size]).argmax(1) == labels[s:s + batch_size]).sum())
               for s in range(0, len(x), batch_size))
    model.train()
    return hits


def plain_finetune(net, train: ArraySet, device: torch.device, epochs: int, batch_size: int = 64,
                   lr: float = 1e-3, weight_decay: float = 5e-2, seed: int = 0, val: ArraySet | None = None) -> None:
    """The bare loop: SGD Nesterov 0.9, cross-entropy, top-1 on `val` after every epoch, no early stopping."""
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    images, labels = train.images.to(device), train.labels.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen, device=device)
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(net(to_float(images[idx], device)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if val is not None:
            _val_correct(net, to_float(val.images.to(device), device), val.labels.to(device))
    sync(device)


def _alternate(project, bare, device: torch.device, repeats: int):
    """(median s of project(), median s of bare() or None, project()'s last result), the two run in turn."""
    times, bare_times, result = [], [], None
    for _ in range(repeats):
        t, result = wall_time(project, device)
        times.append(t)
        if bare is not None:
            bare_times.append(wall_time(bare, device)[0])
    return statistics.median(times), statistics.median(bare_times) if bare_times else None, result


def finetune_run(train: ArraySet, val: ArraySet, device: torch.device, epochs: int, layer: int = 5,
                 baseline: bool = True, repeats: int = 3) -> dict:
    """Wall seconds of one `finetune` call (HPCA-initialised net, cut at `layer`) and of the bare loop,
    median of `repeats` runs of each, in turn."""
    from hebb.finetune import finetune

    torch.manual_seed(0)
    proto = build_network(rule="hpca").to(device).cut(layer, len(train.classes))
    warm = ArraySet(train.images[:128], train.labels[:128], train.paths[:128], train.classes)
    finetune(copy.deepcopy(proto), warm, None, layer=layer, epochs=1, device=device, progress=False)
    if baseline:
        plain_finetune(copy.deepcopy(proto), warm, device, 1)
    t, tp, (_, stats) = _alternate(
        lambda: finetune(copy.deepcopy(proto), train, val, layer=layer, epochs=epochs, device=device, progress=False),
        (lambda: plain_finetune(copy.deepcopy(proto), train, device, epochs, val=val)) if baseline else None,
        device, repeats)
    out = {"config": {"train_images": len(train), "val_images": len(val), "epochs": epochs, "layer": layer,
                      "batch": 64, "init": "hpca (untrained weights)", "repeats": repeats},
           "run_s": t, "epoch_times_s": stats.get("epoch_times_s"),
           "train_images_per_s": len(train) * epochs / t}
    if baseline:
        out.update(plain_loop_s=tp, overhead_vs_plain=t / tp)
    return out


def plain_probe(net, train: ArraySet, val: ArraySet, device: torch.device, epochs: int, layer: int = 5,
                batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> None:
    """The bare probe: features by the bare forward, then dropout + linear head with Adam, top-1 each epoch."""
    net.eval()
    with torch.no_grad():
        feats = torch.cat([net.features(to_float(train.images[s:s + 250].to(device), device), layer).flatten(1)
                           for s in range(0, len(train), 250)])
        val_feats = torch.cat([net.features(to_float(val.images[s:s + 250].to(device), device), layer).flatten(1)
                               for s in range(0, len(val), 250)])
    labels, val_labels = train.labels.to(device), val.labels.to(device)
    torch.manual_seed(seed)
    linear = torch.nn.Linear(feats.shape[1], len(train.classes)).to(device)
    head = torch.nn.Sequential(torch.nn.Dropout(0.5), linear)
    opt = torch.optim.Adam(linear.parameters(), lr=lr)
    gen = torch.Generator(device=device).manual_seed(seed)
    for _ in range(epochs):
        head.train()
        order = torch.randperm(len(feats), generator=gen, device=device)
        for start in range(0, len(feats), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _val_correct(linear, val_feats, val_labels)
    sync(device)


def probe_run(train: ArraySet, val: ArraySet, device: torch.device, epochs: int, layer: int = 5,
              baseline: bool = True, repeats: int = 3) -> dict:
    """Wall seconds of one `probe` call (HPCA-initialised net, layer 5) and of the bare probe loop, median of
    `repeats` runs of each, in turn."""
    from hebb.finetune import probe

    torch.manual_seed(0)
    proto = build_network(rule="hpca").to(device)
    warm = ArraySet(train.images[:128], train.labels[:128], train.paths[:128], train.classes)
    probe(copy.deepcopy(proto), warm, warm, layer=layer, epochs=1, device=device, progress=False)
    if baseline:
        plain_probe(copy.deepcopy(proto), warm, warm, device, 1, layer)
    t, tp, (_, stats) = _alternate(
        lambda: probe(copy.deepcopy(proto), train, val, layer=layer, epochs=epochs, device=device, progress=False),
        (lambda: plain_probe(copy.deepcopy(proto), train, val, device, epochs, layer)) if baseline else None,
        device, repeats)
    out = {"config": {"train_images": len(train), "val_images": len(val), "epochs": epochs, "layer": layer,
                      "batch": 64, "init": "hpca (untrained weights)", "repeats": repeats},
           "run_s": t, "features_s": stats.get("features_s")}
    if baseline:
        out.update(plain_loop_s=tp, overhead_vs_plain=t / tp)
    return out
