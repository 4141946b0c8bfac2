"""The embedded default pipeline: CIFAR-10 -> SoftHebb pre-training -> 10% probe -> index, ready for the app.

Steps (each reused when its result already exists with the same settings; `force` redoes them):
  1. CIFAR-10 in the data directory, imported from `$HEBBIR_CIFAR10_ARCHIVE`, else
     `../shared/datasets/cifar10-jpg.tar.gz` beside the repository, else downloaded through torchvision;
  2. a SoftHebb pre-trained network, its wide 3-block net (one epoch, no labels) -> `CHECKPOINTS/quickstart-softhebb.pt`;
  3. its linear probe on the 10% label regime (frozen trunk) -> `CHECKPOINTS/quickstart-softhebb-probe10.pt`;
  4. an index of the 40,000-image training split at `index_data/quickstart` (block 3, the registry's default
     reduction with the probe head's class probabilities appended, `HEAD_WEIGHT`; exact search).

SoftHebb's frozen features are the method of choice here: one unsupervised epoch, no back-propagation into
the trunk, and the best retrieval of the methods measured (reports/cifar10). Two configurations: on a GPU the
reference one; on a CPU one that fits its budget of 15 minutes on 2 cores: the same one epoch over all
40,000 training images (timed end to end: README), with the probe validated on a 2,000-image sample and the
projection fitted on 4,000 images. `CPU_CONFIG` / `GPU_CONFIG` hold the numbers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from hebb.errors import UserError

REPO = Path(__file__).resolve().parent.parent
ARCHIVE_ENV = "HEBBIR_CIFAR10_ARCHIVE"
DEFAULT_OUT = Path("index_data/quickstart")
DEFAULT_CHECKPOINTS = Path("checkpoints")
REGIME = 10
METHOD = "softhebb"
READOUT = "probe"
#: Weight of the read-out head's class probabilities in the index vectors (`hebbir index build --head-weight`):
#: measured on SoftHebb block 3 + the plain 10% probe (this read-out), mAP@100 0.258 without them, 0.475 with
#: weight 1 (reports/cifar10/softhebb-s0-rerun-2026-12-07.json; 0.489 on standardised features,
#: `bench/results/head-retrieval-softhebb.json`).
HEAD_WEIGHT = 1.0

#: Settings per device kind. pretrain_images: how many training-split images SoftHebb learns from (None = all).
GPU_CONFIG = {"pretrain_images": None, "pretrain_epochs": 1, "finetune_epochs": 50, "val_images": None,
              "fit_samples": 10_000}
CPU_CONFIG = {"pretrain_images": None, "pretrain_epochs": 1, "finetune_epochs": 50, "val_images": 2000,
              "fit_samples": 4000}


def find_archive() -> Path | None:
    """The local CIFAR-10 archive: `$HEBBIR_CIFAR10_ARCHIVE`, else ../shared/datasets/cifar10-jpg.tar.gz."""
    env = os.environ.get(ARCHIVE_ENV)
    if env:
        if not Path(env).is_file():
            raise UserError(f"${ARCHIVE_ENV} = {env}: no such file")
        return Path(env)
    candidate = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
    return candidate if candidate.is_file() else None


def ensure_cifar10(data_dir=None, say=print) -> None:
    """Import CIFAR-10 into the data directory unless it is there already."""
    from hebb.data import default_data_dir, import_dataset, is_imported

    if is_imported("cifar10", data_dir):
        return
    archive = find_archive()
    say(f"importing CIFAR-10 into {Path(data_dir or default_data_dir())} from "
        f"{archive or 'the internet (torchvision)'}")
    import_dataset("cifar10", archive, data_dir)


def _sample(n_total: int, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, n, replace=False))


def _current(path: Path, config: dict, force: bool) -> bool:
    """Whether checkpoint `path` exists and was made by the quickstart with `config`."""
    if force or not path.is_file():
        return False
    from hebb.checkpoint import read_checkpoint_meta

    try:
        return read_checkpoint_meta(path).get("quickstart") == config
    except UserError:
        return False


def quickstart(out=DEFAULT_OUT, checkpoints=DEFAULT_CHECKPOINTS, data_dir=None, device="auto", seed: int = 0,
               limit: int | None = None, pretrain_images: int | None = None, pretrain_epochs: int | None = None,
               finetune_epochs: int | None = None, force: bool = False, progress: bool = True,
               say=print) -> dict:
    """Run (or reuse) the whole pipeline; return {"index": path, "model": path, "manifest": dict, "times": ...}.

    `limit` caps every stage at that many images (pre-training, labelled set, validation, index): for tests
    and a first look. The other arguments override the device's configuration.
    """
    from hebb.architectures import architecture
    from hebb.checkpoint import file_checksum, load_checkpoint, save_checkpoint
    from hebb.data import load_splits, regime_indices
    from hebb.recipes import arch_for, pretrained_network, read_out
    from hebb.runtime import resolve_device
    from retrieval.index import build_index, is_index_dir, read_manifest
    from retrieval.sources import open_source

    t_start = time.perf_counter()
    device = resolve_device(device)
    cfg = dict(GPU_CONFIG if device.type == "cuda" else CPU_CONFIG)
    for key, value in (("pretrain_images", pretrain_images), ("pretrain_epochs", pretrain_epochs),
                       ("finetune_epochs", finetune_epochs)):
        if value is not None:
            cfg[key] = value
    if limit is not None:
        cfg["pretrain_images"] = min(limit, cfg["pretrain_images"] or limit)
        cfg["val_images"] = min(limit, cfg["val_images"] or limit)
    arch = arch_for(METHOD)
    layer = architecture(arch).depth
    cfg.update(seed=seed, limit=limit, regime=REGIME, layer=layer, method=METHOD, readout=READOUT)
    say(f"quickstart on {device}: pre-training {METHOD} ({arch}) on {cfg['pretrain_images'] or 'all'} training "
        f"images for {cfg['pretrain_epochs']} epoch(s), a {READOUT} read-out at layer {layer} on {REGIME}% labels "
        f"for {cfg['finetune_epochs']} epoch(s)" + (f", at most {limit} images per stage" if limit else ""))
    times = {}

    t0 = time.perf_counter()
    ensure_cifar10(data_dir, say)
    splits = load_splits("cifar10", data_dir)
    train, val = splits["train"], splits["val"]
    times["data_s"] = time.perf_counter() - t0

    checkpoints = Path(checkpoints)
    pre_path = checkpoints / f"quickstart-{METHOD}.pt"
    ft_path = checkpoints / f"quickstart-{METHOD}-{READOUT}{REGIME}.pt"
    pre_cfg = {k: cfg[k] for k in ("method", "pretrain_images", "pretrain_epochs", "seed", "limit")}
    t0 = time.perf_counter()
    if _current(pre_path, pre_cfg, force):
        say(f"reusing {pre_path}")
    else:
        idx = _sample(len(train), cfg["pretrain_images"], seed)
        net, stats = pretrained_network(METHOD, arch, train.images[torch.from_numpy(idx)], len(train.classes),
                                        epochs=cfg["pretrain_epochs"], device=device, seed=seed, progress=progress)
        save_checkpoint(pre_path, net, {"stage": "pretrain", "dataset": "cifar10", "classes": train.classes,
                                        "quickstart": pre_cfg, "training": {"images": len(idx), **stats["settings"]},
                                        "timings": {"time_s": stats.get("time_s")}})
        say(f"pre-trained in {time.perf_counter() - t0:.0f} s -> {pre_path}")
    times["pretrain_s"] = time.perf_counter() - t0

    ft_cfg = dict(pre_cfg, pretrained_checksum=file_checksum(pre_path), finetune_epochs=cfg["finetune_epochs"],
                  val_images=cfg["val_images"], regime=REGIME, layer=layer, readout=READOUT)
    t0 = time.perf_counter()
    if _current(ft_path, ft_cfg, force):
        say(f"reusing {ft_path}")
    else:
        net, _ = load_checkpoint(pre_path, device=device)
        labelled = train.subset(regime_indices(train.labels, REGIME, seed))
        if limit is not None:
            labelled = labelled.subset(_sample(len(labelled), limit, seed))
        val_part = val.subset(_sample(len(val), cfg["val_images"], seed))
        net, stats = read_out(net, READOUT, labelled, val_part, layer, device=device, seed=seed, progress=progress,
                              epochs=cfg["finetune_epochs"])
        save_checkpoint(ft_path, net, {"stage": "finetune", "readout": READOUT, "dataset": "cifar10",
                                       "classes": train.classes, "quickstart": ft_cfg,
                                       "metrics": {"val_acc": stats.get("val_acc")},
                                       "training": {"labelled": len(labelled), "regime": REGIME}})
        acc = stats.get("val_acc")
        say(f"trained the {READOUT} read-out in {time.perf_counter() - t0:.0f} s"
            + (f", validation accuracy {acc:.1%}" if acc is not None else "") + f" -> {ft_path}")
    times["finetune_s"] = time.perf_counter() - t0

    out = Path(out)
    t0 = time.perf_counter()
    model_sum = file_checksum(ft_path)
    manifest = None
    if not force and is_index_dir(out):
        try:
            manifest = read_manifest(out)
        except UserError:
            pass  # a damaged index: build it again
    if (manifest is not None and manifest.model_checksum == model_sum
            and manifest.extra.get("quickstart_limit") == limit
            and manifest.features.get("head_weight", 0.0) == HEAD_WEIGHT):
        say(f"reusing the index at {out} ({manifest.item_count:,} items)")
    else:
        source = open_source("cifar10:train", data_dir)
        if limit is not None:
            source = source.subset(_sample(len(source), limit, seed))
        # quickstart_limit: a rerun reuses the index only when it was built with the same image limit
        manifest = build_index(ft_path, source, out, layer=layer, device=device, progress=progress, force=True,
                               fit_samples=cfg["fit_samples"], extra={"quickstart_limit": limit},
                               head_weight=HEAD_WEIGHT)
        say(f"indexed {manifest.item_count:,} images in {manifest.build_time_s:.0f} s "
            f"({manifest.images_per_s or 0:,.0f} images/s) -> {out}")
    times["index_s"] = time.perf_counter() - t0
    times["total_s"] = time.perf_counter() - t_start
    say(f"quickstart done in {times['total_s']:.0f} s "
        f"(data {times['data_s']:.0f}, pre-training {times['pretrain_s']:.0f}, read-out {times['finetune_s']:.0f}, "
        f"index {times['index_s']:.0f})")
    say(f"next: hebbir app   (or: hebbir search --index {out} --k 10 IMAGE.jpg)")
    return {"index": out, "model": ft_path, "manifest": manifest, "times": times, "config": cfg}
