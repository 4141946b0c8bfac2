"""Which feature reduction per layer retrieves best: mAP@100 / mAP@all for every pooling and projection.

Database = a stratified sample of the training split, queries = a stratified sample of the test split,
network = a checkpoint (e.g. a SoftHebb pre-training). Each layer's activations are computed once; every
(pooling, projection, dim) is then fitted on the database and scored. Also scores classes the network's
read-out never saw (`--transfer-classes`: database and queries of those classes only). Writes JSON to --out.

    python bench/reductions.py --model reports/cifar10/work/pretrain-softhebb-s0.pt --out bench/results/x.json
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
from hebb.finetune import extract_features  # noqa: E402
from hebb.runtime import code_version, device_description, utc_now  # noqa: E402
from retrieval.features import POOLINGS, FeatureExtractor  # noqa: E402
from retrieval.evaluation.metrics import rank_database  # noqa: E402

CHOICES = [(p, proj, dim) for p in POOLINGS for proj, dim in (("none", None), ("pca", 256), ("pcaw", 256))]


def score(net, layer: int, db_acts, q_acts, db_labels, q_labels, pooling, projection, dim) -> dict | None:
    try:
        ext = FeatureExtractor(net, layer, pooling=pooling, projection=projection, dim=dim)
    except Exception as exc:  # e.g. too large to index raw
        return {"skipped": str(exc).splitlines()[0][:120]}
    ext.fit_activations(db_acts)
    ranking = rank_database(ext.transform_activations(q_acts), ext.transform_activations(db_acts), q_labels,
                            db_labels)
    s = ranking.summary()
    return {"dim": ext.dim, "map@100": round(s["map@100"], 4), "map@all": round(s["map@all"], 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, nargs="+", required=True, help="checkpoint(s) to compare")
    p.add_argument("--db-percent", type=float, default=12.5, help="database: %% of each training class (5,000)")
    p.add_argument("--query-percent", type=float, default=10, help="queries: %% of each test class (1,000)")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    p.add_argument("--transfer-classes", default="5,6,7,8,9", help="classes for the unseen-class score")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    splits = load_splits("cifar10", args.data_dir)
    db = splits["train"].subset(regime_indices(splits["train"].labels, args.db_percent, seed=0))
    queries = splits["test"].subset(regime_indices(splits["test"].labels, args.query_percent, seed=0))
    unseen = [int(c) for c in args.transfer_classes.split(",")]
    report = {"command": " ".join(sys.argv), "date": utc_now(),
              "device": device_description("cpu"), "code": code_version(), "database": len(db),
              "queries": len(queries), "transfer_classes": unseen, "models": {}}
    for model in args.model:
        net, meta = load_checkpoint(model)
        layers = [int(v) for v in args.layers.split(",")] if args.layers else range(1, net.num_feature_layers + 1)
        rows = {}
        for layer in layers:
            t0 = time.perf_counter()
            db_acts = extract_features(net, db.images, layer, batch_size=250).cpu()
            q_acts = extract_features(net, queries.images, layer, batch_size=250).cpu()
            for pooling, projection, dim in CHOICES:
                key = f"l{layer} {pooling} {projection}{dim or ''}"
                rows[key] = score(net, layer, db_acts, q_acts, db.labels, queries.labels, pooling, projection, dim)
                print(model.name, key, rows[key], flush=True)
            # unseen classes, at the layer's default reduction
            mask_db = np.isin(db.labels.numpy(), unseen)
            mask_q = np.isin(queries.labels.numpy(), unseen)
            pooling, projection, dim = net_reduction = FeatureExtractor(net, layer).pooling, \
                FeatureExtractor(net, layer).projection, FeatureExtractor(net, layer).requested_dim
            rows[f"l{layer} default unseen-classes"] = dict(
                score(net, layer, db_acts[torch.from_numpy(mask_db)], q_acts[torch.from_numpy(mask_q)],
                      db.labels[torch.from_numpy(mask_db)], queries.labels[torch.from_numpy(mask_q)], pooling,
                      projection, dim) or {}, reduction=list(net_reduction))
            print(model.name, f"l{layer} unseen", rows[f"l{layer} default unseen-classes"],
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        report["models"][str(model)] = {"method": meta.get("network", {}).get("rule"),
                                        "arch": meta.get("network", {}).get("arch"), "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
