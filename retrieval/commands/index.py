"""`hebbir index build|add|sync|info|repair`: build indexes, add images, follow a folder, describe, repair."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hebb.architectures import ARCHITECTURES, layers_help
from retrieval.commands.common import add_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build, extend and describe image indexes",
                       description="Build, extend and describe image indexes (FAISS + item table + manifest).")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    b = isub.add_parser(
        "build", help="index a folder or dataset with a model's features",
        description="Index the images of a folder (CLASS/*.jpg gives labels; flat files get none) or of a "
                    "dataset split in the data directory (cifar10:train, cifar10:test, ...) with the features "
                    "of one layer of a checkpoint. Unreadable files are skipped and listed in the manifest; "
                    "files with the same bytes are indexed once. An interrupted build resumes when rerun.",
        epilog="example: hebbir index build --model checkpoints/hpca-ft10.pt --layer 5 --images cifar10:train "
               "--out index_data/cifar10")
    b.add_argument("--model", required=True, type=Path, help="checkpoint (.pt) from hebbir pretrain/finetune")
    b.add_argument("--images", required=True, help="image folder, or dataset NAME[:train|val|test]")
    b.add_argument("--out", required=True, type=Path, help="index directory to create (e.g. index_data/NAME)")
    b.add_argument("--layer", type=int, default=None,
                   help=f"feature layer, {layers_help()} (default: the top layer of a fine-tuned model, else the "
                        "architecture's default feature layer)")
    add_options(b, "pooling", "projection", "dim")
    b.add_argument("--head-weight", type=float, default=0.0, metavar="W",
                   help="append the read-out head's class probabilities, weighted by W (e.g. 1), to each vector: "
                        "for a fine-tuned or probed model at its top layer, so that the labels it learned from "
                        "shape the ranking too (default 0: the layer's features only)")
    b.add_argument("--factory", default="Flat",
                   help="faiss index_factory string, e.g. IVF1024,Flat or HNSW32 (default: Flat = exact)")
    b.add_argument("--backend", default="faiss", choices=["faiss", "milvus"],
                   help="where the vectors are searched: a FAISS file in the index (default), or a Milvus "
                        "collection (needs pip install 'hebbir[milvus]')")
    b.add_argument("--milvus-uri", default=None, metavar="URI",
                   help="with --backend milvus: a .db file for the embedded Milvus Lite (default milvus.db, a plain "
                        "name is taken inside the index directory) or http(s)://HOST:PORT of a Milvus server "
                        "(token, if any, from $HEBBIR_MILVUS_TOKEN)")
    b.add_argument("--milvus-collection", default=None, metavar="NAME",
                   help="with --backend milvus: the collection's name (default hebbir_ + the index folder name)")
    b.add_argument("--milvus-index", default="auto", choices=["auto", "FLAT", "HNSW", "IVF_FLAT"],
                   help="with --backend milvus: the index type (default auto: exact FLAT below 100,000 vectors, "
                        "HNSW above)")
    add_options(b, "batch_size", batch_size={"help": _batch_help()})
    b.add_argument("--force", action="store_true",
                   help="replace an existing index at --out (a folder that is not an index is never replaced)")
    add_options(b, "exclude", "quiet", "device", "data_dir")
    b.set_defaults(func=_build)

    a = isub.add_parser("add", help="add new images to an index",
                        description="Add the images of a folder or dataset to an index, with the index's own "
                                    "model and projection. Files whose bytes are already indexed are not added "
                                    "again.")
    add_options(a, "index")
    a.add_argument("--images", required=True, help="image folder, or dataset NAME[:train|val|test]")
    add_options(a, "batch_size", "quiet", "exclude", "device", "data_dir")
    a.set_defaults(func=_add)

    y = isub.add_parser(
        "sync", help="bring an index up to date with a folder that changed",
        description="Re-scan an image folder: items of files that are gone or changed leave the index, new and "
                    "changed files are embedded with the index's own model, moved files keep their item. Ids of "
                    "the other items stay the same. Items added from other folders are left alone.")
    add_options(y, "index")
    y.add_argument("--images", required=True, type=Path, help="the image folder to follow")
    y.add_argument("--dry-run", action="store_true", help="only say what would change")
    add_options(y, "batch_size", "quiet", "exclude", "device")
    y.set_defaults(func=_sync)

    i = isub.add_parser("info", help="describe an index",
                        description="Describe an index directory, once each of its files has been checked "
                                    "against the manifest (a damaged one is named, with what to do).")
    add_options(i, "index")
    i.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    i.set_defaults(func=_info)

    r = isub.add_parser("repair", help="rewrite a damaged index.faiss from vectors.npy",
                        description="Rewrite an index's FAISS file (or reload its Milvus collection) from its "
                                    "vectors (vectors.npy), atomically. "
                                    "Damage to any other file needs a rebuild (hebbir index build --force).")
    add_options(r, "index")
    r.set_defaults(func=_repair)


def _batch_help() -> str:
    big = {name: plan.first_activation_mb for name, plan in ARCHITECTURES.items() if plan.first_activation_mb > 4}
    return "images per forward pass (default 256" + "".join(
        f"; use about {max(1, int(256 / mb))} for {name} models, whose layer-1 activations take {mb:.0f} MB "
        "per image"
        for name, mb in big.items()) + ")"


def _interrupted(what: str) -> int:
    print(f"hebbir: interrupted; the previous index (if any) is untouched; rerun the same command to resume "
          f"the {what}", file=sys.stderr)
    return 130


def _print_problems(skipped: list[dict], duplicates: list[dict], limit: int = 5) -> None:
    if skipped:
        print(f"skipped {len(skipped)} file(s):")
        for s in skipped[:limit]:
            print(f"  {s['path']}: {s['reason']}")
        if len(skipped) > limit:
            print("  ... (all listed in manifest.json)")
    if duplicates:
        print(f"{len(duplicates)} duplicate file(s) (same bytes as an indexed one) not indexed again")


def _build(args: argparse.Namespace) -> int:
    from retrieval.index import build_index

    try:
        m = build_index(args.model, args.images, args.out, layer=args.layer, pooling=args.pooling,
                        projection=args.projection, dim=args.dim, factory=args.factory, device=args.device,
                        batch_size=args.batch_size, progress=not args.quiet, data_dir=args.data_dir,
                        force=args.force, exclude=args.exclude, backend=args.backend,
                        milvus_uri=args.milvus_uri, milvus_collection=args.milvus_collection,
                        milvus_index=args.milvus_index, head_weight=args.head_weight)
    except KeyboardInterrupt:
        return _interrupted("build")
    _print_problems(m.skipped, m.duplicates)
    rate = f", {m.images_per_s:,.0f} images/s" if m.images_per_s else ""
    print(f"indexed {m.item_count:,} images into {args.out} ({m.description}, {m.factory}) "
          f"in {m.build_time_s:.1f} s{rate} on {m.device}")
    return 0


def _add(args: argparse.Namespace) -> int:
    from retrieval.index import add_to_index

    try:
        r = add_to_index(args.index, args.images, device=args.device, progress=not args.quiet,
                         data_dir=args.data_dir, batch_size=args.batch_size, exclude=args.exclude)
    except KeyboardInterrupt:
        return _interrupted("addition")
    _print_problems(r["skipped"], r["duplicates"])
    rate = f" ({r['images_per_s']:,.0f} images/s)" if r.get("images_per_s") and r["added"] else ""
    print(f"added {r['added']:,} images to {args.index}{rate}; it now holds {r['manifest'].item_count:,}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from retrieval.index import check_index

    m = check_index(args.index)
    if args.json:
        print(m.to_json())
        return 0
    lines = [
        f"index      {args.index}",
        f"items      {m.item_count:,} from {m.source}",
        f"features   {m.description}",
        _search_line(m),
        f"model      {m.architecture} {m.model_meta.get('stage') or ''} sha256 {m.model_checksum[:12]} "
        f"(copy: {m.model_file}; from {m.model_source})",
        f"built      {m.created} in {m.build_time_s or 0:.1f} s on {m.device}"
        + (f", {m.images_per_s:,.0f} images/s" if m.images_per_s else ""),
    ]
    if m.updated:
        lines.append(f"updated    {m.updated} ({len(m.additions)} addition(s))")
    lines.append(f"skipped    {len(m.skipped)} file(s); duplicates {len(m.duplicates)}")
    print("\n".join(lines))
    for s in m.skipped[:5]:
        print(f"  {s['path']}: {s['reason']}")
    return 0


def _search_line(m) -> str:
    if m.backend == "milvus":
        params = "".join(f" {k}={v}" for k, v in (m.milvus.get("index_params") or {}).items())
        return (f"search     Milvus {m.factory}{params}, IP on L2-normalised vectors (cosine), collection "
                f"{m.milvus['collection']} at {m.milvus['uri']}")
    return (f"search     {m.factory}, {m.metric} on L2-normalised vectors (cosine), faiss "
            f"{m.faiss_version or 'not used'}")


def _sync(args: argparse.Namespace) -> int:
    from retrieval.index import sync_index

    try:
        r = sync_index(args.index, args.images, device=args.device, progress=not args.quiet,
                       batch_size=args.batch_size, exclude=args.exclude, dry_run=args.dry_run)
    except KeyboardInterrupt:
        return _interrupted("sync")
    verb = "would " if args.dry_run else ""
    for what, paths in (("remove", r["removed"]), ("add", r["added"])):
        for path in paths[:10]:
            print(f"{verb}{what} {path}")
        if len(paths) > 10:
            print(f"  ... and {len(paths) - 10} more to {what}")
    if r["skipped"]:
        print(f"skipped {len(r['skipped'])} file(s)" + (" (listed in manifest.json)" if not args.dry_run else ""))
    print(f"{args.index}: {verb}remove {len(r['removed']):,}, {verb}add {len(r['added']):,}, {verb}move "
          f"{len(r['moved']):,}; it {'would hold' if args.dry_run else 'now holds'} "
          f"{r['kept'] + len(r['added']):,} items")
    return 0


def _repair(args: argparse.Namespace) -> int:
    from retrieval.index import repair_index

    m = repair_index(args.index)
    if m.backend == "milvus":
        print(f"reloaded Milvus collection {m.milvus['collection']} ({m.factory}, {m.item_count:,} vectors) "
              f"from vectors.npy")
    else:
        print(f"rewrote {args.index}/index.faiss ({m.factory}, {m.item_count:,} vectors) from vectors.npy")
    return 0
