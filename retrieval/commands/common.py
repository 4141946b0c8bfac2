"""The options several sub-commands share, each defined once: `add_options(parser, "device", "seed", ...)`."""

from __future__ import annotations

import argparse
from pathlib import Path

from hebb.data import DATA_DIR_ENV, default_data_dir
from hebb.runtime import DEVICES
from retrieval.features import POOLINGS, PROJECTIONS


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _shared() -> dict[str, tuple[str, dict]]:
    """name -> (flag, argparse settings) of every shared option (built when asked: the data directory's
    default comes from the environment)."""
    return {
        "dataset": ("--dataset", dict(default="cifar10", help="dataset in the data directory (default: cifar10)")),
        "data_dir": ("--data-dir", dict(type=Path, default=None, help=f"data directory (default: ${DATA_DIR_ENV} "
                                                                       f"or ./data; now {default_data_dir()})")),
        "device": ("--device", dict(default="auto", choices=DEVICES,
                                    help="where to compute: auto picks cuda when a GPU is visible (default: auto)")),
        "seed": ("--seed", dict(type=int, default=0, help="random seed (default: %(default)s)")),
        "split_seed": ("--split-seed", dict(type=int, default=0,
                                            help="seed of the training/validation split (default: 0)")),
        "batch_size": ("--batch-size", dict(type=positive_int, default=256,
                                            help="images per forward pass (default: %(default)s)")),
        "limit": ("--limit", dict(type=positive_int, default=None,
                                  help="use at most N images (a seeded random sample), for quick runs")),
        "index": ("--index", dict(type=Path, required=True, help="index directory")),
        "quiet": ("--quiet", dict(action="store_true", help="no progress bars")),
        "exclude": ("--exclude", dict(action="append", default=[], metavar="PATTERN",
                                      help="leave out folder entries matching this glob, by name or by path inside "
                                           "--images (repeatable; hidden files and @eaDir are always left out), "
                                           "e.g. --exclude 'raw/*'")),
        "pooling": ("--pooling", dict(default="auto", choices=("auto", *POOLINGS),
                                      help="spatial pooling of the layer's activation (default: auto = the "
                                           "architecture's measured choice for the layer)")),
        "projection": ("--projection", dict(default="auto", choices=("auto", *PROJECTIONS),
                                            help="pca, pca + whitening (pcaw) or none, fitted on the indexed images "
                                                 "(default: auto = per layer)")),
        "dim": ("--dim", dict(type=positive_int, default=None, help="PCA output size (default: per layer, 256)")),
    }


def add_options(p: argparse.ArgumentParser, *names: str, **changes: dict) -> None:
    """Add the shared options `names` to `p`, in that order. `changes` update an option's settings for this
    command, e.g. add_options(p, "batch_size", batch_size={"default": 64, "help": "images per step"})."""
    shared = _shared()
    unknown = [n for n in (*names, *changes) if n not in shared] + [n for n in changes if n not in names]
    if unknown:
        raise ValueError(f"not shared options of this call: {', '.join(unknown)}")
    for name in names:
        flag, settings = shared[name]
        p.add_argument(flag, **{**settings, **changes.get(name, {})})
