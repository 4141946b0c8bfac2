"""Rule micro-benchmarks: one Hebbian update of a representative layer, four ways, checked against each other.

    fast       HebbConv2d.hebbian_delta(x): what pre-training runs (conv2d_weight, blocked HPCA on layer 5)
    rules      hebb.rules.*_delta on the unfolded patches (fast rule, patches materialised)
    unfused    unfold + the plain matrix form (HPCA: tril(YᵀY)·W, as the FastHebb code)
    reference  hebb.rules.*_delta_reference: the per-sample loop written from the formula
    candidate_prefix  (HPCA, fully connected layer only) bench.candidates.hpca_prefix, a proposed faster form

All four include computing the neuron outputs from x, so they do the same job. Every variant's result is
compared with the reference (float32) and `fast` also with the fast path run in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench import candidates, flops
from bench.timing import time_fn, time_interleaved
from hebb import rules
from hebb.layers import HebbConv2d

#: (layer index, batch timed, batch of the reference check) per device. The reference loop runs once per patch
#: row, so on the CPU it is timed (with `fast` beside it) on fewer images than the representative batch.
CASES = {
    "cpu": [(2, 32, 2), (5, 64, 8)],
    "cuda": [(2, 64, 64), (5, 64, 64)],
    "quick": [(2, 1, 1), (5, 2, 2)],
}


def unfold_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """All k x k patches of x as rows (B·H'·W', C·k·k)."""
    if x.shape[-1] == k and x.shape[-2] == k:
        return x.reshape(x.shape[0], -1)
    cols = F.unfold(x, k)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def hpca_unfused(x_rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    y = torch.relu(x_rows @ w.T)
    return (y.T @ x_rows - torch.tril(y.T @ y) @ w) / x_rows.shape[0]


def swta_unfused(x_rows: torch.Tensor, w: torch.Tensor, temperature: float = 0.02) -> torch.Tensor:
    cos = F.normalize(x_rows, dim=1) @ F.normalize(w, dim=1).T
    r = torch.softmax(((1 + cos) / 2) ** 2 / temperature, dim=1)
    r_sum = r.sum(0)
    q = r * r / r_sum
    return q.T @ x_rows - q.sum(0)[:, None] * w


def wta_unfused(x_rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    cos = F.normalize(x_rows, dim=1) @ F.normalize(w, dim=1).T
    r = F.one_hot(cos.argmax(1), w.shape[0]).to(w.dtype)
    count = r.sum(0)
    dw = (r.T @ x_rows - count[:, None] * w) / count.clamp_min(1)[:, None]
    return dw


def softhebb_unfused(x_rows: torch.Tensor, w: torch.Tensor, inv_temperature: float = 1.0) -> torch.Tensor:
    u = x_rows @ w.T
    y = torch.softmax(u * inv_temperature, dim=1)
    y = torch.where(F.one_hot(u.argmax(1), w.shape[0]).bool(), y, -y)
    return y.T @ x_rows - (y * u).sum(0)[:, None] * w


UNFUSED = {"hpca": hpca_unfused, "swta": swta_unfused, "wta": wta_unfused, "softhebb": softhebb_unfused}
RULES_FAST = {"hpca": rules.hpca_delta, "swta": rules.swta_delta, "wta": rules.wta_delta}
REFERENCE = {"hpca": rules.hpca_delta_reference, "swta": rules.swta_delta_reference,
             "wta": rules.wta_delta_reference}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _inputs(shape, batch: int, device: torch.device, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(batch, shape.in_channels, shape.in_side, shape.in_side, generator=gen).to(device)


def _variants(rule: str, layer: HebbConv2d, x: torch.Tensor, names) -> dict:
    w2 = layer.weight.detach().reshape(layer.out_channels, -1)
    k = layer.kernel_size
    all_ = {
        "fast": lambda: layer.hebbian_delta(x).reshape(layer.out_channels, -1),
        "rules": lambda: RULES_FAST[rule](unfold_rows(x, k), w2),
        "unfused": lambda: UNFUSED[rule](unfold_rows(x, k), w2),
        "reference": lambda: REFERENCE[rule](unfold_rows(x, k), w2),
        "candidate_prefix": lambda: candidates.hpca_prefix(unfold_rows(x, k), w2),
    }
    return {name: all_[name] for name in names}


def _time_all(variants: dict, device: torch.device, repeats: int) -> tuple[dict, dict]:
    """Median seconds of every variant (interleaved rounds; the slow reference alone, twice) and results."""
    results = {name: fn() for name, fn in variants.items()}  # also the warm-up calls
    quick = {name: fn for name, fn in variants.items() if name != "reference"}
    times = time_interleaved(quick, device, repeats, warmup=False)
    if "reference" in variants:
        times["reference"] = time_fn(variants["reference"], device, warmup=0, repeats=2)["median_s"]
    return times, results


@torch.no_grad()
def bench_case(rule: str, layer_index: int, batch: int, device: torch.device, repeats: int,
               ref_batch: int | None = None) -> dict:
    """Time the variants of `rule` on layer `layer_index` for a batch of random BN-like inputs.

    fast, rules and unfused are timed on `batch` images; fast and reference again on `ref_batch` images
    (default: the same batch), where every variant is also checked against the reference.
    """
    ref_batch = ref_batch or batch
    shape = flops.layer_shapes()[layer_index - 1]
    torch.manual_seed(layer_index)
    layer = HebbConv2d(shape.in_channels, shape.neurons, shape.kernel, rule=rule).to(device)
    x = _inputs(shape, batch, device, 1000 + layer_index)
    candidate = ["candidate_prefix"] if rule == "hpca" and shape.conv_side == 1 else []
    names = ["fast", "rules", "unfused"] + candidate + (["reference"] if ref_batch == batch else [])
    times, results = _time_all(_variants(rule, layer, x, names), device, repeats)
    work = flops.layer_work(shape, batch, device.type)
    update = {"hpca": work["hpca_fast_macs"], "swta": work["swta_macs"], "wta": work["wta_macs"]}[rule]
    out = {"rule": rule, "layer": layer_index, "batch": batch, "N": work["N"], "D": work["D"], "M": work["M"],
           "fast_macs": work["forward_macs"] + update,
           "unfused_macs": work["forward_macs"] + (work["hpca_reference_macs"] if rule == "hpca" else update),
           "hpca_fast_form": work["hpca_fast_form"] if rule == "hpca" else None,
           "times_s": times, "rel_err_fast_vs_unfused": rel_err(results["fast"], results["unfused"])}
    # the same fast path in float64: the rounding yardstick for float32
    layer64 = HebbConv2d(shape.in_channels, shape.neurons, shape.kernel, rule=rule).to(device).double()
    layer64.weight.data.copy_(layer.weight.data.double())
    out["rel_err_fast_vs_float64"] = rel_err(results["fast"],
                                             layer64.hebbian_delta(x.double()).reshape(shape.neurons, -1))
    if ref_batch != batch:
        xr = _inputs(shape, ref_batch, device, 2000 + layer_index)
        ref_times, ref_results = _time_all(_variants(rule, layer, xr, ["fast", "rules", "unfused"] + candidate
                                                     + ["reference"]), device, repeats)
        out["ref_check"] = {"batch": ref_batch, "times_s": ref_times}
    else:
        ref_times, ref_results = times, results
    out["rel_err_vs_reference"] = {name: rel_err(ref_results[name], ref_results["reference"])
                                   for name in ref_results if name != "reference"}
    out["fast_equals_reference"] = out["rel_err_vs_reference"]["fast"] < 1e-4
    out["speedup_vs_reference"] = ref_times["reference"] / ref_times["fast"]
    out["reference_batch"] = ref_batch
    out["speedup_vs_unfused"] = times["unfused"] / times["fast"]
    out["fast_gflops"] = 2 * out["fast_macs"] / times["fast"] / 1e9
    out["unfused_gflops"] = 2 * out["unfused_macs"] / times["unfused"] / 1e9
    return out


def run(device: torch.device, repeats: int = 5, quick: bool = False, rule_names=("hpca", "swta", "wta")) -> list:
    cases = CASES["quick" if quick else device.type]
    return [bench_case(rule, layer, batch, device, repeats, ref_batch)
            for rule in rule_names for layer, batch, ref_batch in cases]
