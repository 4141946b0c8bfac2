"""SoftHebb probe with and without feature standardisation, on the same frozen wide3 trunk and the same seeds.

One SoftHebb epoch (the architecture's defaults: batch 10, the reference rates) over a seeded sample of the
training split; the block-3 features of a labelled sample and a validation sample are computed once; then the
same dropout + linear head (Adam, the reference milestones, `--probe-epochs`) learns on the raw features and on
features standardised per dimension (training-set mean and std, folded into the head afterwards). Prints one
JSON line per read-out and writes them, with the machine, date and load, to --out.

    python bench/probe_standardize.py --pretrain 10000 --labelled 20000 --val 5000 --probe-epochs 20
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
from hebb.finetune import extract_features, fit_linear_head, head_accuracy  # noqa: E402
from hebb.recipes import pretrained_network  # noqa: E402
from hebb.runtime import code_version, device_description, utc_now  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain", type=int, default=10_000, help="unlabelled training images (default 10,000)")
    p.add_argument("--labelled", type=int, default=20_000, help="labelled images of the probe (default 20,000)")
    p.add_argument("--val", type=int, default=5_000, help="validation images (default 5,000)")
    p.add_argument("--probe-epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, default=1, help="probe seeds per read-out (default 1)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = p.parse_args()
    splits = load_splits("cifar10", args.data_dir)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(splits["train"]), generator=g)
    labelled = splits["train"].subset(perm[:args.labelled].sort().values)
    val = splits["val"].subset(torch.randperm(len(splits["val"]), generator=g)[:args.val].sort().values)
    start = time.perf_counter()
    net, stats = pretrained_network("softhebb", "wide3", splits["train"].images[perm[:args.pretrain]],
                                    len(labelled.classes), seed=0)
    pretrain_s = time.perf_counter() - start
    norms = [round(c.weight.flatten(1).norm(dim=1).mean().item(), 3) for _, c in net.hebbian_modules()]
    net.set_hebbian_learning(False)
    start = time.perf_counter()
    feats = extract_features(net, labelled.images, 3, progress=True)
    val_feats = extract_features(net, val.images, 3)
    features_s = time.perf_counter() - start
    print(json.dumps({"pretrain_s": round(pretrain_s, 1), "images_per_s": stats.get("images_per_s"),
                      "kernel_norms": norms, "features_s": round(features_s, 1),
                      "feature_abs_mean": feats.abs().mean().item(), "feature_std_mean": feats.std(0).mean().item()}),
          flush=True)
    rows = []
    for seed in range(args.seeds):
        for standardize in (False, True):
            start = time.perf_counter()
            head, probe_stats = fit_linear_head(feats, labelled.labels, val_feats, val.labels, len(labelled.classes),
                                                epochs=args.probe_epochs, seed=seed, standardize=standardize,
                                                progress=False)
            last = probe_stats["history"][-1]
            row = {"standardize": standardize, "seed": seed, "val_acc": probe_stats["val_acc"],
                   "best_epoch": probe_stats["best_epoch"], "last_train_loss": last["train_loss"],
                   "last_train_acc": last["train_acc"],
                   "train_acc_eval": head_accuracy(head, feats, labelled.labels),
                   "probe_s": round(time.perf_counter() - start, 1), "load": os.getloadavg()[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": " ".join(sys.argv), "date": utc_now(),
            "device": device_description("cpu"), "code": code_version(), "torch_threads": torch.get_num_threads(),
            "pretrain_images": args.pretrain, "labelled": args.labelled, "val": args.val,
            "probe_epochs": args.probe_epochs, "pretrain_s": round(pretrain_s, 1), "kernel_norms": norms,
            "features_s": round(features_s, 1), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
