"""`hebbir quickstart`: data -> SoftHebb model -> 10% probe -> index of CIFAR-10, ready for `hebbir app`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retrieval.commands.common import add_options, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from hebb.recipes import arch_for
    from retrieval.quickstart import CPU_CONFIG, DEFAULT_CHECKPOINTS, DEFAULT_OUT, GPU_CONFIG, METHOD

    p = sub.add_parser(
        "quickstart", help="CIFAR-10 -> SoftHebb model -> 10%% probe -> index, ready for the app",
        description=(
            "The embedded default: import CIFAR-10 (from $HEBBIR_CIFAR10_ARCHIVE, ../shared/datasets/"
            f"cifar10-jpg.tar.gz, or the internet), pre-train the {arch_for(METHOD)} network with SoftHebb (one "
            "epoch, no labels), train a linear probe on its block-3 features with 10% of the labels, and index the "
            "40,000-image training split with the frozen features. "
            f"On a GPU: pre-training on all images, {GPU_CONFIG['finetune_epochs']} probe epochs. On a CPU "
            f"(sized for 15 minutes on 2 idle cores; 10 to 15 minutes measured, by the host: see the "
            f"README): pre-training on "
            f"{'all' if CPU_CONFIG['pretrain_images'] is None else format(CPU_CONFIG['pretrain_images'], ',')} "
            f"images, {CPU_CONFIG['finetune_epochs']} probe epochs, validation on {CPU_CONFIG['val_images']:,} "
            "images. Rerunning reuses what exists."),
        epilog="then: hebbir app")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"index directory (default {DEFAULT_OUT})")
    p.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS,
                   help=f"folder for the two model checkpoints (default {DEFAULT_CHECKPOINTS})")
    add_options(p, "limit", limit={"help": "at most this many images per stage (a quick look, or tests)"})
    p.add_argument("--pretrain-images", type=positive_int, default=None,
                   help="override: training images SoftHebb learns from")
    p.add_argument("--pretrain-epochs", type=positive_int, default=None, help="override: pre-training epochs")
    p.add_argument("--readout-epochs", "--finetune-epochs", dest="finetune_epochs", type=positive_int, default=None,
                   help="override: read-out (probe) epochs")
    p.add_argument("--force", action="store_true", help="redo every step even if its result exists")
    add_options(p, "quiet", "device", "seed", "data_dir")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from retrieval.quickstart import quickstart

    try:
        quickstart(out=args.out, checkpoints=args.checkpoints, data_dir=args.data_dir, device=args.device,
                   seed=args.seed, limit=args.limit, pretrain_images=args.pretrain_images,
                   pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs, force=args.force,
                   progress=not args.quiet)
    except KeyboardInterrupt:
        print("hebbir: interrupted; rerun hebbir quickstart to continue (finished steps are reused)",
              file=sys.stderr)
        return 130
    return 0
