"""torch.profiler over a few pre-training steps: which operators the time goes to."""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from bench import flops
from hebb.data import to_float
from hebb.network import build_network


def pretrain_step_profile(rule: str, device: torch.device, steps: int = 3, top: int = 12, arch: str | None = None,
                          batch: int = flops.BATCH) -> dict:
    """Top operators by self time over `steps` Hebbian pre-training steps of `batch` images (after one warm-up)
    of the network `arch` (default: the rule's own)."""
    torch.manual_seed(0)
    net = (build_network(rule=rule) if arch is None else build_network(arch=arch, rule=rule)).to(device).train()
    net.set_hebbian_learning(True)
    opt = torch.optim.SGD([conv.weight for _, conv in net.hebbian_modules()], lr=1e-3)
    images = torch.randint(0, 256, (batch * (steps + 1), 3, 32, 32), dtype=torch.uint8, device=device)

    def step(i):
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            net.features(to_float(images[i * batch:(i + 1) * batch], device))
        opt.step()

    step(0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(1, steps + 1):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    key = "self_cpu_time_total"
    if device.type == "cuda":  # the attribute's name changed across torch versions
        key = next((k for k in ("self_device_time_total", "self_cuda_time_total")
                    if events and hasattr(events[0], k)), key)
    total = sum(getattr(e, key, 0) for e in events) or 1
    rows = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)[:top]
    return {"rule": rule, "arch": arch, "batch": batch, "steps": steps, "sort_key": key, "total_ms_per_step": total / 1e3 / steps,
            "top_ops": [{"op": e.key, "calls_per_step": e.count / steps,
                         "ms_per_step": getattr(e, key, 0) / 1e3 / steps,
                         "share": getattr(e, key, 0) / total} for e in rows]}


def format_profile(p: dict) -> str:
    where = f" on {p['arch']}" if p.get("arch") else ""
    lines = [f"profile {p['rule']}{where}, batch {p.get('batch', flops.BATCH)}: {p['total_ms_per_step']:.1f} ms/step "
             f"({p['sort_key']})"]
    for r in p["top_ops"]:
        lines.append(f"  {r['share']:6.1%} {r['ms_per_step']:9.2f} ms {r['calls_per_step']:7.1f} calls  {r['op']}")
    return "\n".join(lines)
