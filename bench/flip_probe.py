"""Mirror images in the probe: trained on them, and averaged with them at test time.

On one frozen checkpoint (the sweep's cached pre-training), the sweep's probe head (dropout 0.5 + linear, best
validation epoch) on one layer's features, four ways per label regime: plain; "flip": trained on the labelled
images and their mirror images (both rows, twice the rows per epoch); each scored on the test images as they
are ("test") and by the mean of the logits of each test image and its mirror ("test_tta"). The sweep's read-out
`probe-flip` is a variant of "flip" (one of the two rows at random per epoch, same epoch length), with plain
test images; test-time averaging is not a read-out of the sweep.

    OMP_NUM_THREADS=1 python bench/flip_probe.py --model reports/cifar10/work/pretrain-softhebb-s0.pt \
        --layer 3 --regimes 1,10 --out bench/results/flip-probe-softhebb.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hebb.checkpoint import load_checkpoint  # noqa: E402
from hebb.data import load_splits, regime_indices  # noqa: E402
from hebb.finetune import extract_features, fit_linear_head, head_accuracy  # noqa: E402
from hebb.runtime import code_version, device_description, utc_now  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a pre-training checkpoint")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--regimes", default="1,10", help="comma-separated label regimes in %%")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    net, _ = load_checkpoint(args.model)
    net.eval()
    splits = load_splits("cifar10", args.data_dir)
    train, val, test = splits["train"], splits["val"], splits["test"]

    def features(images):
        return extract_features(net, images, args.layer, batch_size=250)

    started = time.perf_counter()
    val_f, test_f, test_mirror = features(val.images), features(test.images), features(test.images.flip(-1))
    report = {"command": " ".join(sys.argv), "date": utc_now(), "device": device_description("cpu"),
              "threads": torch.get_num_threads(), "code": code_version(), "model": str(args.model),
              "layer": args.layer, "seed": args.seed, "regimes": {}}
    for regime in (float(r) for r in args.regimes.split(",")):
        idx = torch.from_numpy(regime_indices(train.labels, regime, args.seed))
        f, f_mirror, y = features(train.images[idx]), features(train.images[idx].flip(-1)), train.labels[idx]
        row = {"labelled": len(idx)}
        for name, (x, labels) in {"plain": (f, y), "flip": (torch.cat([f, f_mirror]), torch.cat([y, y]))}.items():
            head, stats = fit_linear_head(x, labels, val_f, val.labels, len(train.classes), seed=args.seed,
                                          progress=False)
            with torch.no_grad():
                tta = ((head(test_f) + head(test_mirror)).argmax(1) == test.labels).float().mean().item()
            row[name] = {"val": stats["val_acc"], "test": round(head_accuracy(head, test_f, test.labels), 4),
                         "test_tta": round(tta, 4)}
        report["regimes"][f"{regime:g}"] = row
        print(f"{regime:g}%", json.dumps(row), flush=True)
    report["time_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
