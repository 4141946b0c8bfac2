"""Supervised reading of the features: end-to-end fine-tuning, a frozen-feature linear probe, accuracy.

Fine-tuning (docs/NETWORKS.md#fine-tuning, the reference recipe as default): the net cut after layer l gets dropout 0.5 + a
linear classifier and trains end to end on the labelled images with SGD (Nesterov momentum 0.9), lr 1e-3 for
the first half of the epochs then halved every epoch, L2 5e-2 (10 classes) or 1e-2 (more), cross-entropy,
and early stopping: the weights of the epoch with the best validation accuracy are kept. Optional GPU-side
augmentation (random translation with reflect padding + horizontal flip, airbench-style) runs on whole
batches on the device.

A net whose classifier is Hebbian (spec letter H, `hebb.network.HebbianClassifier`) is read instead by
`train_hebbian_classifier`: the trunk stays as it is and only the classifier learns, with the supervised
teacher-signal rule (docs/RULES.md#teacher-signal: lr 0.1, one or two epochs).

Inside a torch.distributed process group (`hebb.distributed`) fine-tuning and the probe's head train with
DistributedDataParallel: every process walks the same batch order and takes its share of each batch; a probe's
features are computed on each process's share of the images and gathered.
"""

from __future__ import annotations

import copy
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from hebb import distributed
from hebb.data import ArraySet, to_float
from hebb.dropout import Dropout
from hebb.errors import UserError
from hebb.network import ARCHITECTURES, HebbNet, trainable_parameters


def default_weight_decay(num_classes: int, arch: str | None = None) -> float:
    """The reference L2 penalty: the architecture's own reference value where it has one
    (`ArchPlan.weight_decay`), else 5e-2 for CIFAR-10-sized problems (up to 10 classes), 1e-2 for more."""
    plan = ARCHITECTURES.get(arch)
    if plan is not None and plan.weight_decay is not None:
        return plan.weight_decay
    return 5e-2 if num_classes <= 10 else 1e-2


def reference_lr(epoch: int, epochs: int, lr: float) -> float:
    """lr for 0-based `epoch`: constant for the first half (10 of 20), then halved every epoch."""
    decay_start = math.ceil(epochs / 2)
    return lr * 0.5 ** max(0, epoch - decay_start + 1)


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation by up to `pad` pixels (reflect padding) and horizontal flip, per image, on x's device."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    if pad <= 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(-1, x.shape[1], -1,
                                                                                       padded.shape[3])
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(-1, x.shape[1], h, -1)
    return out.gather(3, cols)


@torch.no_grad()
def predict_logits(net: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu",
                   batch_size: int = 500) -> torch.Tensor:
    """Logits of uint8 images, in eval mode, on `device`."""
    was_training = net.training
    net.eval()
    try:
        out = [net(to_float(images[i:i + batch_size], device)) for i in range(0, len(images), batch_size)]
    finally:
        net.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, getattr(net, "num_classes", 1), device=device)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, topk=(1, 5)) -> dict[str, torch.Tensor]:
    """Per-k count of rows whose label is among the k best logits (device tensors, no host sync)."""
    labels = labels.to(logits.device)
    kmax = min(max(topk), logits.shape[1])
    best = logits.topk(kmax, dim=1).indices
    hits = best == labels.view(-1, 1)
    return {f"top{k}": hits[:, :min(k, kmax)].any(dim=1).sum() for k in topk}


def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device | str = "cpu",
             topk=(1, 5), batch_size: int = 500) -> dict[str, float]:
    """Top-k accuracy of `net` on uint8 images: {"top1": fraction, "top5": fraction} (eval mode)."""
    if len(images) == 0:
        raise UserError("accuracy needs at least one image")
    correct = topk_correct(predict_logits(net, images, device, batch_size), labels, topk)
    return {k: v.item() / len(images) for k, v in correct.items()}


def _check_sets(train: ArraySet, val: ArraySet | None) -> int:
    if len(train) < 2:
        raise UserError(f"fine-tuning needs at least 2 labelled images, got {len(train)}")
    if val is not None and list(val.classes) != list(train.classes):
        raise UserError("training and validation sets have different classes")
    return len(train.classes)


def _end_epoch(net: nn.Module, val: ArraySet | None, device: torch.device, t0: float,
               epoch_times: list[float]) -> float | None:
    """Wait for the device, record the epoch's seconds, return the validation top-1 (None without val)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    epoch_times.append(round(time.perf_counter() - t0, 3))
    if val is None or not len(val):
        return None
    return accuracy(net, val.images, val.labels, device, topk=(1,))["top1"]


def _run_stats(val: ArraySet | None, best_acc: float, best_epoch: int, epoch_times: list[float], started: float,
               images: int, **settings) -> dict:
    """The stats dict of a training run: best validation accuracy, timings, rate, and the run's settings."""
    train_time = sum(epoch_times) or 1e-9
    return {"val_acc": best_acc if val is not None and len(val) else None, "best_epoch": best_epoch,
            "epochs": len(epoch_times), "time_s": round(time.perf_counter() - started, 3),
            "epoch_times_s": epoch_times, "images_per_s": round(images * len(epoch_times) / train_time, 1),
            "images": images, **settings}


def _backward(loss: torch.Tensor, rows: int, batch: int, world: int) -> None:
    """Backpropagate a process's mean loss over its `rows` of a `batch`; DDP averages the gradients over the
    `world` processes, so weighing by rows · world / batch gives the gradient of the whole batch's mean loss."""
    (loss * (rows * world / batch) if world > 1 else loss).backward()


def _sgd(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)


def _cut_for(net: HebbNet, layer: int | None, num_classes: int, classifier: str | None) -> int:
    """Cut `net` after `layer` (None: its top layer) with a fresh classifier unless it already has the
    asked-for one; return the layer."""
    layer = net.num_feature_layers if layer is None else layer
    if layer > net.num_feature_layers:
        raise UserError(f"this network was cut after layer {net.num_feature_layers}; cannot fine-tune at "
                        f"layer {layer}")
    kind = net.classifier_kind if classifier is None else classifier.upper()
    if net.cut_layer != layer or net.num_classes != num_classes or net.classifier.out_features != num_classes \
            or kind != net.classifier_kind:
        net.cut(layer, num_classes, classifier=kind)
    return layer


def finetune(net: HebbNet, train: ArraySet, val: ArraySet | None, layer: int | None = None, epochs: int = 20,
             batch_size: int = 64, lr: float = 1e-3, weight_decay: float | None = None, momentum: float = 0.9,
             augment: bool = False, device: torch.device | str = "cpu", seed: int = 0,
             progress: bool = True) -> tuple[HebbNet, dict]:
    """Fine-tune `net` cut after `layer` end to end on the labelled `train` set; early stopping on `val`.

    layer None: the net's top feature layer (its architecture's depth for a whole net). If the net is not
    yet cut at `layer` for this many classes, it is cut (a fresh classifier of the spec's kind; a Hebbian
    classifier, which backprop cannot train, is replaced by a linear one: to train that, use
    `train_hebbian_classifier`). R layers stay frozen. weight_decay None = `default_weight_decay`. Returns
    (net with the best epoch's weights, in eval mode, stats): val_acc (best top-1 fraction, None without
    val), best_epoch, epochs, time_s, epoch_times_s, images_per_s, history (per epoch: epoch, lr,
    train_loss, train_acc, val_acc).
    """
    device = torch.device(device)
    num_classes = _check_sets(train, val)
    if epochs < 1 or batch_size < 2 or not lr > 0:
        raise UserError(f"need epochs >= 1, batch size >= 2 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    layer = _cut_for(net, layer, num_classes, "G" if net.classifier_kind == "H" else None)  # backprop: linear
    weight_decay = default_weight_decay(num_classes, net.arch) if weight_decay is None else weight_decay
    torch.manual_seed(seed)  # dropout
    net.to(device)
    net.set_hebbian_learning(False)
    params = trainable_parameters(net)
    if not params:
        raise UserError(f"network spec '{net.spec}' has nothing to train")
    optimizer = _sgd(params, lr, weight_decay, momentum)
    model = distributed.data_parallel(net, device)
    world = distributed.world_size()
    generator = torch.Generator(device=device).manual_seed(seed)
    images, labels = train.images.to(device), train.labels.to(device)
    history, epoch_times = [], []
    best_acc, best_epoch, best_state = -1.0, 0, None
    started = time.perf_counter()
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = reference_lr(epoch, epochs, lr)
        t0 = time.perf_counter()
        net.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        order = torch.randperm(len(images), generator=generator, device=device)
        bar = tqdm(total=len(images), desc=f"finetune epoch {epoch + 1}/{epochs}", unit="img",
                   disable=not progress, leave=False)
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2 * world:  # BN needs 2 images in every process
                continue
            x = to_float(images[idx], device)
            if augment:
                x = augment_batch(x, generator)
            x, y = distributed.shard(x), distributed.shard(labels[idx])
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            _backward(loss, len(y), len(idx), world)
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(idx)
            bar.update(len(idx))
        bar.close()
        distributed.all_sum([loss_sum, correct])
        distributed.average_batchnorm(net)  # every process validates the same net
        val_acc = _end_epoch(net, val, device, t0, epoch_times)
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                  "train_loss": round(loss_sum.item() / max(seen, 1), 5),
                  "train_acc": round(correct.item() / max(seen, 1), 5), "val_acc": val_acc}
        history.append(record)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {record['train_loss']:.4f}, train acc "
                       f"{record['train_acc']:.2%}" + ("" if val_acc is None else f", val acc {val_acc:.2%}"),
                       file=sys.stderr)
        score = val_acc if val_acc is not None else float(epoch)  # no validation: keep the last epoch
        if score > best_acc:
            best_acc, best_epoch = score, epoch + 1
            best_state = copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    return net, _run_stats(val, best_acc, best_epoch, epoch_times, started, len(images), layer=layer, lr=lr,
                           weight_decay=weight_decay, batch_size=batch_size, augment=augment, history=history)


def train_hebbian_classifier(net: HebbNet, train: ArraySet, val: ArraySet | None, layer: int | None = None,
                             epochs: int = 2, batch_size: int = 64, lr: float = 0.1,
                             device: torch.device | str = "cpu", seed: int = 0,
                             progress: bool = True) -> tuple[HebbNet, dict]:
    """Train a Hebbian classifier (teacher signal) on the frozen features of `net` cut after `layer`.

    The net is cut (layer None: its top feature layer) with a fresh `HebbianClassifier` unless it already
    has one there; the trunk runs in eval mode and never changes. Each batch applies W += lr · dW (plain, as
    the reference's lr 0.1); the epoch with the best validation accuracy is kept. Returns (net in eval mode,
    stats) with the keys of `finetune`'s stats (weight_decay None, augment False).
    """
    device = torch.device(device)
    num_classes = _check_sets(train, val)
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise UserError(f"need epochs >= 1, batch size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    layer = _cut_for(net, layer, num_classes, "H")
    net.to(device).eval()
    head = net.classifier
    generator = torch.Generator(device=device).manual_seed(seed)
    images, labels = train.images.to(device), train.labels.to(device)
    history, epoch_times = [], []
    best_acc, best_epoch, best_weight = -1.0, 0, None
    started = time.perf_counter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        correct = torch.zeros((), device=device, dtype=torch.long)
        order = torch.randperm(len(images), generator=generator, device=device)
        bar = tqdm(total=len(images), desc=f"hebbian classifier epoch {epoch + 1}/{epochs}", unit="img",
                   disable=not progress, leave=False)
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                idx = order[start:start + batch_size]
                feats = net.features(to_float(images[idx], device)).flatten(1)
                correct += (head(feats).argmax(1) == labels[idx]).sum()  # before the update, like a train acc
                head.weight.add_(head.hebbian_delta(feats, labels[idx]), alpha=lr)
                bar.update(len(idx))
        bar.close()
        val_acc = _end_epoch(net, val, device, t0, epoch_times)
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": None,
                  "train_acc": round(correct.item() / len(images), 5), "val_acc": val_acc}
        history.append(record)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{epochs}: train acc {record['train_acc']:.2%}"
                       + ("" if val_acc is None else f", val acc {val_acc:.2%}"), file=sys.stderr)
        score = val_acc if val_acc is not None else float(epoch)
        if score > best_acc:
            best_acc, best_epoch, best_weight = score, epoch + 1, head.weight.detach().clone()
    head.weight.copy_(best_weight)
    return net, _run_stats(val, best_acc, best_epoch, epoch_times, started, len(images), layer=layer, lr=lr,
                           weight_decay=None, batch_size=batch_size, augment=False, classifier="hebbian",
                           rule=head.rule, history=history)


@torch.no_grad()
def extract_features(net: HebbNet, images: torch.Tensor, layer: int, device: torch.device | str = "cpu",
                     batch_size: int = 500, progress: bool = False) -> torch.Tensor:
    """Flattened `features(x, layer)` of uint8 images in eval mode, as one (N, d) tensor on `device`."""
    was_training = net.training
    net.eval()
    out = []
    try:
        for i in tqdm(range(0, len(images), batch_size), desc=f"features layer {layer}", disable=not progress,
                      leave=False):
            out.append(net.features(to_float(images[i:i + batch_size], device), layer).flatten(1))
    finally:
        net.train(was_training)
    return torch.cat(out)


#: The SoftHebb read-out schedule: Adam, lr halved at these epochs (1-based epoch counts, as the reference).
PROBE_MILESTONES = (10, 17, 25, 30, 35, 40, 45)


def fit_linear_head(feats: torch.Tensor, labels: torch.Tensor, val_feats: torch.Tensor | None,
                    val_labels: torch.Tensor | None, num_classes: int, epochs: int = 50, batch_size: int = 64,
                    lr: float = 1e-3, weight_decay: float = 0.0, milestones: tuple[int, ...] = PROBE_MILESTONES,
                    device: torch.device | str = "cpu", seed: int = 0, standardize: bool = False,
                    progress: bool = True, mirrored: torch.Tensor | None = None) -> tuple[nn.Linear, dict]:
    """Dropout 0.5 + linear head on fixed features (N, d): Adam, lr halved at `milestones`, best val epoch.

    With `standardize`, the head learns on features shifted and scaled to zero mean and unit variance per
    dimension (statistics of `feats`), and the returned layer has that affine map folded in, so it still takes
    raw features. `mirrored`: the features of the same images mirrored left-right (same rows); each epoch
    every row is replaced by its mirror with probability 1/2, i.e. random horizontal flips with the features
    computed once. Returns (the best epoch's nn.Linear, stats with val_acc, best_epoch, epochs, epoch_times_s,
    history).
    """
    device = torch.device(device)
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise UserError(f"need epochs >= 1, batch size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if mirrored is not None and mirrored.shape != feats.shape:
        raise UserError(f"the mirrored features must hold one row per image of the features "
                        f"({tuple(feats.shape)}), got {tuple(mirrored.shape)}")
    torch.manual_seed(seed)
    linear = nn.Linear(feats.shape[1], num_classes).to(device)
    head = nn.Sequential(Dropout(0.5), linear)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [m for m in milestones if m < epochs], gamma=0.5)
    model = distributed.data_parallel(head, device)
    world = distributed.world_size()
    generator = torch.Generator(device=device).manual_seed(seed)
    flips = torch.Generator(device=device).manual_seed(seed + 1)  # its own: the order is the plain probe's
    labels = labels.to(device)
    shift, scale = _standardizer(feats, device) if standardize else (None, None)
    history, epoch_times = [], []
    best_acc, best_epoch, best_state = -1.0, 0, None
    bar = tqdm(range(epochs), desc="probe", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        head.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        order = torch.randperm(len(feats), generator=generator, device=device)
        if mirrored is not None:
            flip = torch.rand(len(feats), generator=flips, device=device) < 0.5
        for start in range(0, len(feats), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < world:  # every process needs a row
                continue
            mine = distributed.shard(idx)
            y = labels[mine]
            batch = feats[mine].to(device)
            if mirrored is not None:
                batch = torch.where(flip[mine, None], mirrored[mine].to(device), batch)
            logits = model(batch if shift is None else (batch - shift) * scale)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            _backward(loss, len(y), len(idx), world)
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
        distributed.all_sum([loss_sum, correct])
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                  "train_loss": round(loss_sum.item() / len(feats), 5),
                  "train_acc": round(correct.item() / len(feats), 5), "val_acc": None}
        schedule.step()
        if val_feats is not None and len(val_feats):
            record["val_acc"] = head_accuracy(_folded(linear, shift, scale), val_feats, val_labels)
        epoch_times.append(round(time.perf_counter() - t0, 3))
        history.append(record)
        if record["val_acc"] is not None:
            bar.set_postfix_str(f"val {record['val_acc']:.2%}")
        score = record["val_acc"] if record["val_acc"] is not None else float(epoch)
        if score > best_acc:
            best_acc, best_epoch = score, epoch + 1
            best_state = copy.deepcopy(linear.state_dict())
    bar.close()
    linear.load_state_dict(best_state)
    linear = _folded(linear, shift, scale)
    has_val = val_feats is not None and len(val_feats) > 0
    return linear.eval(), {"val_acc": best_acc if has_val else None, "best_epoch": best_epoch, "epochs": epochs,
                           "epoch_times_s": epoch_times, "history": history}


@torch.no_grad()
def _standardizer(feats: torch.Tensor, device: torch.device, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and 1/std of `feats` (float64 sums, in chunks: the features may not fit twice)."""
    total = torch.zeros(feats.shape[1], dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    for i in range(0, len(feats), chunk):
        part = feats[i:i + chunk].to(device, torch.float64)
        total += part.sum(0)
        squares += part.square().sum(0)
    mean = total / len(feats)
    std = (squares / len(feats) - mean.square()).clamp_min(0).sqrt()
    # A dimension that never varies on the training features carries nothing to learn from: weight it 0.
    scale = torch.where(std > 1e-8, 1.0 / std.clamp_min(1e-8), torch.zeros_like(std))
    return mean.float(), scale.float()


@torch.no_grad()
def _folded(linear: nn.Linear, shift: torch.Tensor | None, scale: torch.Tensor | None) -> nn.Linear:
    """`linear` applied after (x - shift) * scale, as one nn.Linear on raw x (`linear` itself when no shift)."""
    if shift is None:
        return linear
    out = nn.Linear(linear.in_features, linear.out_features).to(linear.weight.device)
    out.weight.copy_(linear.weight * scale)
    out.bias.copy_(linear.bias - out.weight @ shift)
    return out


@torch.no_grad()
def head_logits(linear: nn.Module, feats: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits (N, classes) of a linear head on fixed features (N, d), in batches, on the head's device."""
    device = next(linear.parameters()).device
    return torch.cat([linear(feats[i:i + batch_size].to(device)) for i in range(0, len(feats), batch_size)])


def head_accuracy(linear: nn.Module, feats: torch.Tensor, labels: torch.Tensor, topk=(1,),
                  batch_size: int = 4096) -> float | dict[str, float]:
    """Top-1 accuracy (a fraction) of a linear head on fixed features; a dict for several k."""
    logits = head_logits(linear, feats, batch_size)
    correct = topk_correct(logits, labels, topk)
    out = {k: v.item() / len(feats) for k, v in correct.items()}
    return out["top1"] if tuple(topk) == (1,) else out


def probe(net: HebbNet, train: ArraySet, val: ArraySet | None, layer: int | None = None, epochs: int = 50,
          batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.0,
          milestones: tuple[int, ...] = PROBE_MILESTONES, device: torch.device | str = "cpu", seed: int = 0,
          progress: bool = True, feature_batch: int = 250, standardize: bool = False,
          mirror: bool = False) -> tuple[HebbNet, dict]:
    """Linear probe: the trunk cut after `layer` stays frozen, dropout 0.5 + a linear head learn on its features.

    The features of `train` and `val` are computed once (eval mode) and cached on `device`; the head trains
    with `fit_linear_head` (with `mirror`, on random horizontal flips: the features of the mirrored training
    images are computed once too). The net is cut in place, gets the head as its classifier and is returned in eval
    mode with its trunk unchanged. Returns (net, stats) with the keys of `finetune`'s stats plus feature_dim
    and features_s.
    """
    device = torch.device(device)
    num_classes = _check_sets(train, val)
    layer = _cut_for(net, layer, num_classes, "G")
    net.to(device).eval()
    net.set_hebbian_learning(False)
    started = time.perf_counter()
    feats = distributed.gather_rows(extract_features(net, distributed.shard(train.images), layer, device,
                                                     batch_size=feature_batch, progress=progress))
    has_val = val is not None and len(val) > 0
    val_feats = distributed.gather_rows(extract_features(net, distributed.shard(val.images), layer, device,
                                                         batch_size=feature_batch)) if has_val else None
    mirrored = distributed.gather_rows(extract_features(net, distributed.shard(train.images.flip(-1)), layer,
                                                        device, batch_size=feature_batch)) if mirror else None
    features_s = time.perf_counter() - started
    linear, stats = fit_linear_head(feats, train.labels, val_feats, val.labels if has_val else None, num_classes,
                                    epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                    milestones=milestones, device=device, seed=seed, standardize=standardize,
                                    progress=progress, mirrored=mirrored)
    net.classifier.load_state_dict(linear.state_dict())
    net.eval()
    return net, _run_stats(val, stats["val_acc"] if has_val else -1.0, stats["best_epoch"], stats["epoch_times_s"],
                           started, len(train), layer=layer, lr=lr, weight_decay=weight_decay,
                           batch_size=batch_size, augment=False, readout="probe", feature_dim=feats.shape[1],
                           features_s=round(features_s, 3), history=stats["history"])
