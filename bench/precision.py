"""bfloat16 Hebbian pre-training (`hebbir pretrain --precision bf16`) against float32: speed and accuracy.

--steps: for each rule on its network (hpca / swta / wta on conv6 at batch 64, softhebb on wide3 at batch 10),
    the same training batches through all Hebbian layers in float32 and in bf16, interleaved, best of
    `--repeats`; and how far the bf16 update (summed over the batches) is from the float32 one, per layer.
--accuracy METHODS: the sweep's recipe for each method (one epoch over the 40,000 training images, seed 0) in
    bf16, then the probe at `--regime` % labels on the top layer, with the float32 cell of the same recipe,
    seed and labels read from `--fp32-from` (a report's results.json) beside it.

Writes one JSON file (--out) with the machine, date, load and code version.

    OMP_NUM_THREADS=1 python bench/precision.py --steps --threads 1 --data-dir .test-data --out bench/results/x.json
    OMP_NUM_THREADS=1 python bench/precision.py --accuracy hpca,softhebb --fp32-from reports/cifar10/results.json ...
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

from hebb.architectures import architecture  # noqa: E402
from hebb.data import load_splits, to_float  # noqa: E402
from hebb.network import build_network  # noqa: E402
from hebb.recipes import arch_for  # noqa: E402
from hebb.runtime import code_version, device_description, utc_now  # noqa: E402

RULES = ("hpca", "swta", "wta", "softhebb")


def _accumulate(net, batches, bf16: bool) -> list[torch.Tensor]:
    """The summed -update of every Hebbian layer over `batches` (weights unchanged), in one precision."""
    for _, conv in net.hebbian_modules():
        conv.moment_dtype = torch.bfloat16 if bf16 else None
        conv.weight.grad = None
    top = net.hebbian_modules()[-1][0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for x in batches:
            net.features(x, top)
    return [conv.weight.grad.clone() for _, conv in net.hebbian_modules()]


def step_times(rule: str, images: torch.Tensor, n_batches: int, repeats: int) -> dict:
    """Seconds per training batch in float32 and bf16 (interleaved, best of `repeats`), and the bf16 update's
    relative distance from the float32 one per layer."""
    arch = arch_for(rule)
    batch = architecture(arch).batch_size
    torch.manual_seed(0)
    net = build_network(arch, rule=rule)
    net.fit_input(images, seed=0)
    net.train()
    net.set_hebbian_learning(True)
    batches = [to_float(images[i * batch:(i + 1) * batch], "cpu") for i in range(n_batches)]
    exact, low = _accumulate(net, batches, False), _accumulate(net, batches, True)
    times = {False: [], True: []}
    for _ in range(repeats):
        for bf16 in (False, True):
            start = time.perf_counter()
            _accumulate(net, batches, bf16)
            times[bf16].append((time.perf_counter() - start) / n_batches)
    fp32, bf16 = min(times[False]), min(times[True])
    return {"rule": rule, "arch": arch, "batch": batch, "fp32_s_per_batch": round(fp32, 4),
            "bf16_s_per_batch": round(bf16, 4), "speedup": round(fp32 / bf16, 3),
            "update_rel_diff": {str(layer): float(f"{((a - b).norm() / a.norm()).item():.3g}")
                                for (layer, _), a, b in zip(net.hebbian_modules(), exact, low)},
            "load": os.getloadavg()[0]}


def accuracy(method: str, regime: float, data_dir, fp32_results: dict | None) -> dict:
    """The sweep's cell of `method` (seed 0, top layer, probe at `regime` %) after a bf16 pre-training."""
    import retrieval.evaluation.sweep as ev
    from hebb.recipes import pretrained_network

    layer = architecture(arch_for(method)).depth
    config = ev.SweepConfig(out=Path("unused"), dataset="cifar10", methods=(method,), readouts=("probe",),
                            regimes=(regime,), seeds=(0,), share_pretraining=True, pooling="auto",
                            projection="auto", device="cpu", data_dir=data_dir)
    data = ev.load_data(config)
    net, stats = pretrained_network(method, None, data["train"].images, len(data["train"].classes), seed=0,
                                    progress=False, precision="bf16")
    device = torch.device("cpu")
    features = ev.layer_features((method, 0, layer), net, layer, data, config, device)
    cell = ev.probe_cell(features, method, regime, layer, 0, data, config, device, {}, "probe")
    row = {"method": method, "regime": regime, "layer": layer, "bf16": {
        "top1": cell["accuracy"]["top1"], "map@100": cell["retrieval"]["map@100"], "val": cell["val_accuracy"],
        "pretrain_epoch_s": stats["epoch_times_s"], "load": os.getloadavg()[0]}}
    recorded = (fp32_results or {}).get("runs", {}).get(ev.run_key(method, regime, layer, 0, "probe"))
    if recorded:
        row["fp32"] = {"top1": recorded["accuracy"]["top1"], "map@100": recorded["retrieval"]["map@100"],
                       "val": recorded.get("val_accuracy"), "code": recorded.get("code"),
                       "pretrain_epoch_s": recorded.get("timings", {}).get("pretrain_epoch_s")}
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", action="store_true", help="time the training step of every rule in both precisions")
    p.add_argument("--rules", default=",".join(RULES), help="rules for --steps (default: all)")
    p.add_argument("--batches", type=int, default=5, help="training batches per timing (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats, best kept (default 3)")
    p.add_argument("--accuracy", default="", help="comma-separated methods: bf16 pre-training + probe")
    p.add_argument("--regime", type=float, default=10.0, help="label %% of the probe (default 10)")
    p.add_argument("--fp32-from", type=Path, default=None, help="results.json holding the float32 cells")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"command": " ".join(sys.argv), "started": utc_now(), "device": device_description(torch.device("cpu")),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "code": code_version(),
           "load_start": list(os.getloadavg()), "steps": [], "accuracy": []}
    train = load_splits("cifar10", args.data_dir)["train"]
    if args.steps:
        for rule in args.rules.split(","):
            row = step_times(rule, train.images[:64 * args.batches], args.batches, args.repeats)
            print(json.dumps(row), flush=True)
            out["steps"].append(row)
    fp32 = json.loads(args.fp32_from.read_text()) if args.fp32_from else None
    for method in filter(None, args.accuracy.split(",")):
        row = accuracy(method, args.regime, args.data_dir, fp32)
        print(json.dumps(row), flush=True)
        out["accuracy"].append(row)
    out.update(finished=utc_now(), load_end=list(os.getloadavg()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
