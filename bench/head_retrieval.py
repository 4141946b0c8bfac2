"""Retrieval through a probe's head: does a head trained on few labels retrieve better than the frozen trunk?

A probe cell's retrieval is the frozen trunk's (layer features, the registry's reduction), so it ignores the
labels the head learned from, while a fine-tuned network's retrieval features have seen them. This measures,
on the sweep's protocol (database = the 40,000 training-split images, queries = the 10,000 test images),
the feature extractor's `head_weight` (`hebbir index build --head-weight W`): the layer's reduced features with
the read-out head's class probabilities appended, weighted by W. W = 0 is the trunk alone (what the sweep
records for a probe cell); "head only" ranks by the probabilities alone, for comparison.

The head is the sweep's probe (dropout 0.5 + linear, best validation epoch; `--standardize` for probe-std),
trained per `--regimes`; for a fine-tuned checkpoint (`hebbir finetune`), `--own-head` uses the model's own
classifier instead (the comparison a fine-tuned SGD net gets), with `--layer` its top layer.

    python bench/head_retrieval.py --model reports/cifar10/work/pretrain-softhebb-s0.pt --layer 3 \
        --regimes 1,10 --standardize --out bench/results/head-retrieval-softhebb.json
    python bench/head_retrieval.py --model sgd-aug-r10.pt --layer 5 --own-head --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hebb.checkpoint import load_checkpoint  # noqa: E402
from hebb.data import load_splits, regime_indices  # noqa: E402
from hebb.finetune import extract_features, fit_linear_head, head_accuracy  # noqa: E402
from hebb.runtime import code_version, device_description, utc_now  # noqa: E402
from retrieval.features import FeatureExtractor  # noqa: E402
from retrieval.evaluation.metrics import rank_database  # noqa: E402

WEIGHTS = (0.0, 0.5, 1.0, 2.0)


def scores(queries, db, q_labels, db_labels) -> dict:
    s = rank_database(queries, db, q_labels, db_labels).summary()
    return {k: round(float(s[k]), 4) for k in ("map@100", "map@R", "map@all")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a pre-training checkpoint (a fine-tuned one with --own-head)")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--regimes", default="10", help="comma-separated label regimes in %%")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--standardize", action="store_true", help="the probe-std head (standardised features)")
    p.add_argument("--own-head", action="store_true",
                   help="a fine-tuned checkpoint: score its own classifier, train no probe (ignores --regimes)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    splits = load_splits("cifar10", args.data_dir)
    train, val, test = splits["train"], splits["val"], splits["test"]
    net, meta = load_checkpoint(args.model)
    net.eval()
    t0 = time.perf_counter()
    parts = (("train", train), ("test", test)) if args.own_head else (("train", train), ("val", val), ("test", test))
    feats = {name: extract_features(net, s.images, args.layer, batch_size=250, progress=True).cpu()
             for name, s in parts}
    features_s = time.perf_counter() - t0
    db_labels, q_labels = train.labels.numpy(), test.labels.numpy()
    report = {"command": " ".join(sys.argv), "date": utc_now(), "device": device_description("cpu"),
              "threads": torch.get_num_threads(), "code": code_version(), "model": str(args.model),
              "method": net.rule, "arch": net.arch, "layer": args.layer, "standardize": args.standardize,
              "database": len(db_labels), "queries": len(q_labels), "features_s": round(features_s, 1),
              "regimes": {}}
    if args.own_head:
        if meta.get("stage") != "finetune":
            raise SystemExit(f"{args.model}: --own-head needs a fine-tuned checkpoint")
        regimes = [float(meta["regime"])]
        report["finetune"] = {k: meta.get(k) for k in ("method", "regime", "readout", "layer", "training", "metrics")}
    else:
        regimes = [float(r) for r in args.regimes.split(",")]
        net.cut(args.layer, classifier="G")
    for regime in regimes:
        if args.own_head:
            head, idx = net.classifier, regime_indices(train.labels, regime, args.seed)
        else:
            idx = torch.from_numpy(regime_indices(train.labels, regime, args.seed))
            head, _ = fit_linear_head(feats["train"][idx], train.labels[idx], feats["val"], val.labels,
                                      len(train.classes), seed=args.seed, standardize=args.standardize,
                                      progress=False)
            net.classifier.load_state_dict(head.state_dict())
        row = {"labelled": len(idx), "test_top1": round(float(head_accuracy(head, feats["test"], test.labels)), 4)}
        trunk = FeatureExtractor(net, args.layer).fit_activations(feats["train"])  # the PCA ignores the head
        report.setdefault("reduction", trunk.config())
        for w in WEIGHTS:
            ext = FeatureExtractor(net, args.layer, head_weight=w)
            ext.state = trunk.state
            row[f"head x{w:g}"] = scores(ext.transform_activations(feats["test"]),
                                         ext.transform_activations(feats["train"]), q_labels, db_labels)
        with torch.no_grad():
            probs = {n: head(feats[n]).softmax(1).numpy() for n in ("train", "test")}
        row["head only"] = scores(probs["test"] / np.linalg.norm(probs["test"], axis=1, keepdims=True),
                                  probs["train"] / np.linalg.norm(probs["train"], axis=1, keepdims=True),
                                  q_labels, db_labels)
        report["regimes"][f"{regime:g}"] = row
        print(f"{regime:g}%", row, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
