"""`hebbir duplicates`: groups of identical and of nearly identical images in an index."""

from __future__ import annotations

import argparse
import json
from retrieval.commands.common import add_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "duplicates", help="list identical and nearly identical images of an index",
        description="List the groups of files with the same bytes (indexed once, the others recorded by the "
                    "build) and the groups of indexed images whose features are nearly the same (cosine "
                    "similarity at least --threshold; every pair is compared).",
        epilog="example: hebbir duplicates --index index_data/photos --threshold 0.97")
    add_options(p, "index")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity from which two images count as near duplicates (default 0.95)")
    p.add_argument("--json", action="store_true", help="print JSON {exact: [[paths]], near: [{items, min_score}]}")
    p.set_defaults(func=_duplicates)


def _duplicates(args: argparse.Namespace) -> int:
    from retrieval.index.duplicates import DEFAULT_THRESHOLD, find_duplicates

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    found = find_duplicates(args.index, threshold=threshold)
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    for group in found["exact"]:
        print(f"same bytes: {group[0]}")
        for path in group[1:]:
            print(f"  {path}")
    for group in found["near"]:
        first, *rest = group["items"]
        print(f"near (cosine >= {group['min_score']:.3f}): {first['path']}")
        for item in rest:
            print(f"  {item['path']}")
    print(f"{len(found['exact'])} group(s) of identical files, {len(found['near'])} group(s) of near duplicates "
          f"(threshold {threshold})")
    return 0
