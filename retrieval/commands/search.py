"""`hebbir search`: the nearest indexed images of query images."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from retrieval.commands.common import add_options, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="find the indexed images nearest to query images",
        description="Find the k indexed images nearest to each query image (cosine similarity of the index's "
                    "features). Prints a table per query, or with --json a JSON list with one entry per query, in "
                    "argument order: the list of its hits {rank, id, path, label, score}. A query image that "
                    "cannot be read gets one line on stderr (hebbir: error: IMAGE: REASON) and, with --json, "
                    "null in the list; the other queries are still answered, and the exit status is then 2.",
        epilog="example: hebbir search --index index_data/quickstart --k 5 my_cat.jpg")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="query image file(s)")
    add_options(p, "index")
    p.add_argument("--k", type=positive_int, default=10, help="results per query (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--nprobe", type=positive_int, default=None, help="IVF lists to visit (IVF indexes only, faiss or Milvus)")
    p.add_argument("--ef-search", type=positive_int, default=None, help="HNSW search breadth (HNSW only, faiss or Milvus)")
    p.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch", "milvus"],
                   help="search engine: faiss, exact torch, or the Milvus collection of an index built with "
                        "--backend milvus (default: what the index was built with; faiss when installed)")
    add_options(p, "device")
    p.set_defaults(func=_search)


def _read_queries(paths: list[Path]) -> tuple[list, list[str | None]]:
    """(decoded images of the readable queries, per query: None or the one-line error), in argument order."""
    from retrieval.appkit import ImageLoadError, load_image

    images, errors = [], []
    for path in paths:
        try:
            images.append(load_image(path))
            errors.append(None)
        except ImageLoadError as exc:
            errors.append(str(exc))
    return images, errors


def _search(args: argparse.Namespace) -> int:
    from retrieval.search import open_index

    handle = open_index(args.index, device=args.device, backend=args.backend)
    with handle:
        handle.set_search_params(nprobe=args.nprobe, ef_search=args.ef_search)
        t0 = time.perf_counter()
        images, errors = _read_queries(args.images)
        found = iter(handle.search_images(images, k=args.k) if images else [])
        seconds = time.perf_counter() - t0
    results = [None if error else next(found) for error in errors]
    for error in errors:
        if error:
            print(f"hebbir: error: {error}", file=sys.stderr)
    answered = len(images)
    rate = answered / seconds if seconds > 0 else float("inf")
    status = 2 if answered < len(errors) else 0
    if args.json:
        print(json.dumps([None if hits is None else [h.to_dict() for h in hits] for hits in results], indent=1))
        if answered:
            print(f"{answered} queries in {seconds:.3f} s ({rate:,.1f} queries/s, {handle.backend.name})",
                  file=sys.stderr)
        return status
    for query, hits in zip(args.images, results):
        if hits is None:
            continue
        print(f"{query}")
        for h in hits:
            print(f"  {h.rank:>3}  {h.score:6.3f}  {h.label or '-':<12} {h.path}")
    if answered:
        print(f"{answered} queries in {seconds:.3f} s ({rate:,.1f} queries/s, {handle.backend.name}, "
              f"{len(handle):,} items)")
    return status
