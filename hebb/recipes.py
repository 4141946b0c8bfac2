"""The training recipe, once: pre-train a method's network, then read it out on the labelled images.

Every caller (the `hebbir pretrain` / `finetune` commands, the evaluation sweep, the quickstart) goes through
these functions, so a method means the same thing everywhere (docs/NETWORKS.md#recipes):

- `pretrained_network(method, arch, images, ...)`: the network of a method before it sees a label. Hebbian
  rules learn from the unlabelled images (`hebb.pretrain.pretrain`), "vae" trains the trunk as a VAE encoder,
  "sgd" is a fresh network, "random" a network of frozen random layers whose BN statistics are measured.
  All fit the input normalisation on the unlabelled images. A method runs on the first architecture built for
  it unless it names one: "sgd@ARCH" is SGD from scratch on the registry's architecture ARCH.
- `read_out(net, readout, labelled, val, layer, ...)`: "finetune" (end to end, `hebb.finetune.finetune`),
  "probe" (frozen trunk, linear head on cached features, `hebb.finetune.probe`), "probe-std" (the same head
  on features standardised per dimension, ours: the reference probe has none), "probe-flip" (the head trained
  on random horizontal flips of the labelled images, ours too) or "hebbian" (frozen trunk, teacher-signal
  classifier).
- `subsample(split, limit, seed)`: the one seeded sample of at most `limit` items of a split.

Inside a torch.distributed process group (torchrun, `hebb.distributed`) Hebbian pre-training, fine-tuning and
probes run data-parallel; VAE pre-training and the Hebbian classifier refuse to.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from hebb.architectures import architecture, canonical_arch
from hebb.data import ArraySet
from hebb.errors import UserError

#: Methods without a learning stage of their own before the read-out.
UNTRAINED_METHODS = ("sgd", "random")
READOUTS = ("finetune", "probe", "probe-std", "probe-flip", "hebbian")


def methods(arch: str | None = None) -> tuple[str, ...]:
    """Methods (pre-training rules and baselines) an architecture is built for; all of them for None."""
    from hebb.architectures import ARCHITECTURES

    plans = [architecture(arch)] if arch else list(ARCHITECTURES.values())
    return tuple(dict.fromkeys(rule for plan in plans for rule in plan.rules)) + UNTRAINED_METHODS


def parse_method(method: str) -> tuple[str, str | None]:
    """'rule' or 'rule@arch' (a method on another architecture than its first) -> (rule, current arch name)."""
    rule, _, arch = method.partition("@")
    return rule, (canonical_arch(arch) if arch else None)


def canonical_method(method: str) -> str:
    """`method` with the architecture it names (if any) under its current name, so that results recorded
    before a rename read as today's method; an unknown name is left as it is (`arch_for` refuses it)."""
    from hebb.architectures import ARCHITECTURES

    rule, at, arch = method.partition("@")
    return rule + at + ARCHITECTURES.resolve(arch)


def arch_for(method: str, arch: str | None = None) -> str:
    """`arch` checked against `method`, or (None) the architecture the method names ('rule@arch') or else the
    first registered architecture built for it."""
    from hebb.architectures import ARCHITECTURES

    method, named = parse_method(method)
    if named is not None and arch is not None and named != canonical_arch(arch):
        raise UserError(f"method '{method}@{named}' names another architecture than '{arch}'")
    arch = arch or named
    if arch is not None:
        arch = canonical_arch(arch)
        if method not in methods(arch):
            raise UserError(f"method '{method}' is not built for '{arch}' (it takes {', '.join(methods(arch))})")
        return arch
    for name in ARCHITECTURES:
        if method in methods(name):
            return name
    raise UserError(f"unknown method '{method}' (choose from {', '.join(methods())})")


def subsample(split: ArraySet, limit: int | None, seed: int) -> ArraySet:
    """A seeded random subset of at most `limit` items, in their original order (splits are sorted by class:
    never slice them)."""
    if limit is None or limit >= len(split):
        return split
    g = torch.Generator().manual_seed(seed)
    return split.subset(torch.randperm(len(split), generator=g)[:limit].sort().values)


def pretrained_network(method: str, arch: str | None, images: torch.Tensor, num_classes: int, *,
                       epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                       spec: str | None = None, layer: int | None = None, device: torch.device | str = "cpu", seed: int = 0,
                       progress: bool = True, on_epoch_end: Callable | None = None,
                       resume: Path | None = None) -> tuple[torch.nn.Module, dict]:
    """The network of `method` on `arch` after its unsupervised stage on uint8 `images` (no labels).

    epochs / batch_size / lr None: the trainer's defaults (1 Hebbian epoch, 20 VAE epochs) and the
    architecture's reference batch size and Hebbian learning rate. layer: for "sgd" and "random", build the
    net cut after that layer (the other methods learn every layer). resume: "vae" only, a progress file that
    lets an interrupted pre-training continue after its last finished epoch (`hebb.baselines.vae_pretrain`). Returns (net in eval mode on `device`, stats with epochs, time_s, images_per_s, settings).
    """
    from hebb.network import build_network
    from hebb.pretrain import pretrain, recalibrate_batchnorm

    arch = arch_for(method, arch)
    method = parse_method(method)[0]
    plan = architecture(arch)
    device = torch.device(device)
    batch_size = batch_size or plan.batch_size
    if lr is None and method != "vae":
        lr = plan.hebbian_lr
    if lr is not None and not lr > 0:
        raise UserError(f"the learning rate must be positive, got {lr}")
    if resume is not None and method != "vae":
        raise UserError(f"only VAE pre-training can resume from a progress file, not {method}")
    torch.manual_seed(seed)
    if method == "random" and spec is None:
        spec = "R" * plan.depth + "G"
    cut = {"cut_layer": layer} if method in UNTRAINED_METHODS and layer is not None else {}
    net = build_network(arch, num_classes=num_classes, rule=method, spec=spec, **cut)
    settings = {"method": method, "arch": arch, "seed": seed, "spec": net.spec}
    started = time.perf_counter()
    if method in UNTRAINED_METHODS:
        net.to(device).fit_input(images, seed=seed)
        if method == "random":
            recalibrate_batchnorm(net, images, device, seed=seed)
        stats = {"epochs": 0, "time_s": 0.0, "epoch_times_s": [], "images_per_s": 0.0}
    elif method == "vae":
        from hebb.baselines import check_vae_arch, vae_pretrain

        check_vae_arch(arch)
        _refuse_data_parallel("VAE pre-training")
        options = {k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None}
        stats = vae_pretrain(net, images, batch_size=batch_size, device=device, seed=seed, progress=progress,
                             on_epoch_end=on_epoch_end, resume=resume, **options)
    else:
        options = {"epochs": epochs} if epochs is not None else {}
        stats = pretrain(net, images, batch_size=batch_size, lr=lr, device=device, seed=seed, progress=progress,
                         on_epoch_end=on_epoch_end, **options)
    if method not in UNTRAINED_METHODS:
        settings.update(epochs=stats.get("epochs"), batch_size=batch_size, lr=stats.get("lr", lr))
    stats = dict(stats, settings=settings, wall_s=round(time.perf_counter() - started, 3))
    return net.to(device).eval(), stats


def read_out(net, readout: str, labelled: ArraySet, val: ArraySet | None, layer: int | None = None, *,
             device: torch.device | str = "cpu", seed: int = 0, progress: bool = True,
             **options) -> tuple[torch.nn.Module, dict]:
    """Train the read-out `readout` of `net` cut after `layer` on the labelled images; best epoch on `val`.

    options go to the read-out's trainer (epochs, batch_size, lr, weight_decay, augment for "finetune").
    Returns (net in eval mode, stats with val_acc, best_epoch, epochs, time_s, history).
    """
    from hebb.finetune import finetune, probe, train_hebbian_classifier

    if readout not in READOUTS:
        raise UserError(f"unknown read-out '{readout}' (choose from {', '.join(READOUTS)})")
    options = {k: v for k, v in options.items() if v is not None}
    if readout != "finetune" and options.pop("augment", False):
        raise UserError(f"augmentation is for end-to-end fine-tuning, not the {readout} read-out")
    if readout == "hebbian" and "weight_decay" in options:
        raise UserError("a Hebbian classifier takes no weight decay")
    if readout == "hebbian":
        _refuse_data_parallel("the Hebbian classifier")
    train_fn = {"finetune": finetune, "probe": probe, "probe-std": probe, "probe-flip": probe,
                "hebbian": train_hebbian_classifier}[readout]
    if readout == "probe-std":
        options["standardize"] = True
    if readout == "probe-flip":
        options["mirror"] = True
    net, stats = train_fn(net, labelled, val, layer=layer, device=device, seed=seed, progress=progress, **options)
    stats["readout"] = readout
    return net, stats


def _refuse_data_parallel(what: str) -> None:
    from hebb import distributed

    if distributed.active():
        raise UserError(f"{what} does not run data-parallel: leave out --distributed (torchrun) for it")
