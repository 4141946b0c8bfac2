"""SoftHebb batch size and rate: which (batch, rate multiplier) keeps the probe accuracy of the reference batch 10.

One SoftHebb epoch on wide3 over a seeded sample of the training split, for each configuration, then the same
probe (dropout + linear head on the frozen block-3 features, Adam, `--probe-epochs`) on a labelled sample,
scored on a validation sample. Prints one JSON line per configuration and writes them, with the machine,
date and load, to --out.

    python bench/softhebb_batch.py --pretrain 10000 --labelled 10000 --val 2000 --configs 10:1,64:1,64:3,64:8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hebb.data import load_splits  # noqa: E402
from hebb.finetune import probe  # noqa: E402
from hebb.network import build_network  # noqa: E402
from hebb.pretrain import pretrain  # noqa: E402
from hebb.runtime import code_version, device_description, utc_now  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain", type=int, default=10_000, help="unlabelled training images (default 10,000)")
    p.add_argument("--labelled", type=int, default=10_000, help="labelled images of the probe (default 10,000)")
    p.add_argument("--val", type=int, default=2_000, help="validation images (default 2,000)")
    p.add_argument("--configs", default="10:1,64:1,64:3,64:8", help="batch:rate-multiplier list")
    p.add_argument("--probe-epochs", type=int, default=15)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = p.parse_args()
    splits = load_splits("cifar10", args.data_dir)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(splits["train"]), generator=g)
    images = splits["train"].images[perm[:args.pretrain]]
    labelled = splits["train"].subset(perm[:args.labelled].sort().values)
    val = splits["val"].subset(torch.randperm(len(splits["val"]), generator=g)[:args.val].sort().values)
    rows = []
    for config in args.configs.split(","):
        batch, scale = int(config.split(":")[0]), float(config.split(":")[1])
        torch.manual_seed(0)
        net = build_network("wide3", rule="softhebb")
        start = time.perf_counter()
        stats = pretrain(net, images, epochs=1, batch_size=batch, lr=scale, progress=False)
        row = {"batch": batch, "rate_multiplier": scale, "pretrain_s": round(time.perf_counter() - start, 1),
               "images_per_s": stats["images_per_s"], "load": os.getloadavg()[0],
               "kernel_norms": [round(c.weight.flatten(1).norm(dim=1).mean().item(), 3)
                                for _, c in net.hebbian_modules()]}
        net, probe_stats = probe(net, labelled, val, epochs=args.probe_epochs, progress=False)
        row.update(val_acc=probe_stats["val_acc"], best_epoch=probe_stats["best_epoch"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": " ".join(sys.argv), "date": utc_now(),
            "device": device_description("cpu"), "code": code_version(), "pretrain_images": args.pretrain,
            "labelled": args.labelled, "val": args.val, "probe_epochs": args.probe_epochs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
