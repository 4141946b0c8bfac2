"""How the cost of a Hebbian training step grows with the batch size and with the width of a layer.

    python bench/scaling.py [--out bench/results/scaling.json] [--plot docs/perf-batch-width.png] [--quick]

batch: one pre-training step of the CIFAR 6-layer net (all five Hebbian layers learning, as in
`hebb.pretrain`) per rule, for several batch sizes, in ms per image. width: one learning step (forward and
update) of a single layer for several neuron counts M, layer 3 (conv 3x3, 128 channels in, 12x12 maps) and
layer 5 (fully connected 2304 -> M), batch 64, beside the same work at the matmul rate measured in the run.
Every point is the median of `repeats` steps after one untimed step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == REPO / "bench":
    sys.path[0] = str(REPO)

import torch  # noqa: E402

from bench import flops, timing  # noqa: E402
from hebb.data import to_float  # noqa: E402
from hebb.layers import HebbConv2d  # noqa: E402
from hebb.network import build_network  # noqa: E402

RULES = ("hpca", "swta", "wta")
BATCHES = (16, 32, 64, 128, 256)
WIDTHS = {3: (48, 96, 192, 384, 768), 5: (1024, 2048, 4096, 8192)}


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def batch_curve(rule: str, images: torch.Tensor, batches, repeats: int) -> list[dict]:
    """ms per image of one pre-training step of cifar6 at each batch size."""
    torch.manual_seed(0)
    net = build_network(rule=rule)
    net.fit_input(images[:1024])
    net.train()
    net.set_hebbian_learning(True)
    opt = torch.optim.SGD([b.conv.weight for b in net.layers], lr=1e-3)
    out = []
    for b in batches:
        x = to_float(images[:b], torch.device("cpu"))

        def step():
            opt.zero_grad(set_to_none=True)
            net.features(x)
            opt.step()

        t = _median_time(step, repeats)
        key = {"hpca": "hpca_fast"}.get(rule, rule)
        # the step whitens its input first where the rule's network does (soft-WTA, WTA): counted with the layers
        work = 2 * (1e9 * flops.network_work(batch=b)["totals"][f"{key}_step_gmac_per_batch"]
                    + flops.zca_macs(rule, batch=b))
        out.append({"batch": b, "step_s": t, "ms_per_image": 1e3 * t / b, "gflops": work / t / 1e9})
    net.set_hebbian_learning(False)
    return out


@torch.no_grad()
def width_curve(rule: str, layer_index: int, widths, repeats: int, batch: int = 64) -> list[dict]:
    """Seconds of one learning step of layer `layer_index` with M neurons, for each M in `widths`."""
    shape = flops.layer_shapes()[layer_index - 1]
    gen = torch.Generator().manual_seed(layer_index)
    x = torch.randn(batch, shape.in_channels, shape.in_side, shape.in_side, generator=gen)
    out = []
    for m in widths:
        torch.manual_seed(0)
        layer = HebbConv2d(shape.in_channels, m, shape.kernel, rule=rule)
        layer.train()
        layer.hebbian_learning = True

        def step():
            layer.weight.grad = None
            layer(x)

        t = _median_time(step, repeats)
        work = flops.layer_work(flops.LayerShape(layer_index, shape.in_channels, shape.in_side, shape.kernel, m,
                                                 shape.conv_side, shape.out_side), batch)
        update = {"hpca": work["hpca_fast_macs"], "swta": work["swta_macs"], "wta": work["wta_macs"]}[rule]
        macs = work["forward_macs"] + update
        out.append({"neurons": m, "step_s": t, "gflops": 2 * macs / t / 1e9, "macs": macs})
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = result["matmul_gflops"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for rule, points in result["batch"].items():
        ax1.plot([p["batch"] for p in points], [p["ms_per_image"] for p in points], "o-", label=rule)
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("ms per image (one pre-training step, cifar6)")
    ax1.set_ylim(bottom=0)
    ax1.legend()
    ax1.set_title("cost per image vs batch size")
    for key, points in result["width"].items():
        ax2.plot([p["neurons"] for p in points], [p["gflops"] / rate for p in points], "o-", label=key)
    ax2.axhline(1.0, color="grey", ls="--", lw=1)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("neurons M of the layer")
    ax2.set_ylabel(f"fraction of the matmul rate ({rate:.0f} GFLOP/s)")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8)
    ax2.set_title("one layer's learning step vs width (batch 64)")
    fig.suptitle(f"{result['device']}, {result['date'][:10]}, load {result['load']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO / ".test-data",
                   help="data directory with CIFAR-10 imported (default .test-data); else random images")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scaling.json")
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "perf-batch-width.png")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="two sizes per curve, one repeat")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from hebb.data import is_imported, load_splits

    if is_imported("cifar10", args.data):
        images, data = load_splits("cifar10", args.data)["train"].images[:1024], f"CIFAR-10 from {args.data}"
    else:
        images = torch.randint(0, 256, (1024, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        data = "random uint8 images"
    batches = BATCHES[:2] if args.quick else BATCHES
    widths = {k: v[:2] for k, v in WIDTHS.items()} if args.quick else WIDTHS
    repeats = 1 if args.quick else args.repeats
    device = torch.device("cpu")
    result = {"device": timing.device_name(device), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", "bench/scaling.py"] + (sys.argv[1:] if argv is None else list(argv))),
              "git_commit": timing.git_commit(str(REPO)), "load": timing.load_average(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "data": data,
              "matmul_gflops": timing.matmul_rate(device)["gflops"],
              "batch_work_counted": "layers + the ZCA whitening of the input where the network has it",
              "batch": {}, "width": {}}
    for rule in RULES:
        result["batch"][rule] = batch_curve(rule, images, batches, repeats)
        print(rule, "batch", [(q["batch"], round(q["ms_per_image"], 2)) for q in result["batch"][rule]], flush=True)
    for layer, ms in widths.items():
        for rule in RULES:
            result["width"][f"{rule} L{layer}"] = width_curve(rule, layer, ms, repeats)
            print(rule, f"L{layer}", [(q["neurons"], round(q["gflops"], 1)) for q in result["width"][f"{rule} L{layer}"]],
                  flush=True)
    result["load_after"] = timing.load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
