"""`hebbir data`: import datasets into the data directory and show what is there."""

from __future__ import annotations

import argparse

from retrieval.commands.common import add_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="import and inspect datasets", description="Import and inspect datasets.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    imp = dsub.add_parser(
        "import", help="lay a dataset into the data directory",
        description="Lay a dataset into the data directory and decode it once into a uint8 cache. SOURCE is "
                    "an archive (.tar.gz/.zip) or a folder holding train/CLASS/* and test/CLASS/* (or just "
                    "CLASS/*). Without SOURCE, cifar10 and cifar100 are downloaded through torchvision.",
        epilog="example: hebbir data import cifar10 ../shared/datasets/cifar10-jpg.tar.gz")
    imp.add_argument("name", help="dataset name: cifar10, cifar100, or any name for your own image folder")
    imp.add_argument("source", nargs="?", default=None, help="archive or folder (omit to download)")
    imp.add_argument("--force", action="store_true", help="import again even if the dataset is already there")
    add_options(imp, "data_dir")
    imp.set_defaults(func=_import)

    info = dsub.add_parser("info", help="count the images of an imported dataset per split and class",
                           description="Count the images of an imported dataset per split and class.")
    info.add_argument("name", help="dataset name")
    add_options(info, "split_seed", "data_dir")
    info.set_defaults(func=_info)


def _import(args: argparse.Namespace) -> int:
    from hebb.data import import_dataset, is_imported

    if is_imported(args.name, args.data_dir) and not args.force:
        print(f"{args.name} is already imported (use --force to import it again)")
        return 0
    root = import_dataset(args.name, args.source, args.data_dir, force=args.force)
    print(f"imported {args.name} into {root}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from hebb.data import load_splits

    splits = load_splits(args.name, args.data_dir, split_seed=args.split_seed)
    classes = splits["train"].classes
    print(f"{'split':<6} {'images':>7}  per class")
    for name, s in splits.items():
        counts = s.class_counts()
        print(f"{name:<6} {len(s):>7}  " + (f"{min(counts)}..{max(counts)}" if counts else "-"))
    print(f"classes ({len(classes)}): {' '.join(classes)}")
    return 0
