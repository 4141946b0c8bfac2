"""Options shared by the sub-commands: data directory, device, seed."""

from __future__ import annotations

import argparse
from pathlib import Path

from hebb.data import DATA_DIR_ENV, default_data_dir
from hebb.runtime import DEVICES


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"data directory (default: ${DATA_DIR_ENV} or ./data; now {default_data_dir()})")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="where to compute: auto picks cuda when a GPU is visible (default: auto)")


def add_seed(p: argparse.ArgumentParser, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default, help=f"random seed (default: {default})")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value
