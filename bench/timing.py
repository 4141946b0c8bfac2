"""Timing and machine limits: device events on CUDA, perf_counter on the CPU, warm-up, median of repeats.

`machine_limits` measures the two ceilings every timing is compared with: the rate of a large float32
matrix product (GFLOP/s) and the bandwidth of a large copy (bytes read + bytes written, GB/s).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from typing import Callable

import torch

from hebb.errors import UserError
from hebb.runtime import cpu_model, resolve_device


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu (`hebb.runtime.resolve_device`); a missing GPU ends the bench."""
    try:
        return resolve_device(name)
    except UserError as exc:
        raise SystemExit(f"bench: {exc}") from None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 5) -> dict:
    """Median, min and all times (s) of `fn()` after `warmup` untimed calls.

    On CUDA each call is bracketed by events and the device is synchronised before reading them; on the
    CPU a perf_counter pair brackets each call.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": [round(t, 6) for t in times]}


def time_interleaved(fns: dict, device: torch.device, repeats: int = 5, warmup: bool = True) -> dict:
    """{name: median seconds}: one warm-up call each, then `repeats` rounds that time every fn once in turn.

    Interleaving spreads slow phases of a shared machine over all variants instead of the one that ran then.
    """
    for fn in fns.values() if warmup else ():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_fn(fn, device, warmup=0, repeats=1)["median_s"])
    return {name: statistics.median(t) for name, t in times.items()}


def wall_time(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one call, the device synchronised before and after (for long host-driven runs)."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def matmul_rate(device: torch.device, n: int | None = None, repeats: int = 5) -> dict:
    """GFLOP/s of an n x n float32 torch.mm (2·n³ FLOPs) with torch's default precision settings."""
    n = n or (8192 if device.type == "cuda" else 2048)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g)
    b = torch.randn(n, n, device=device, generator=g)
    out = torch.empty(n, n, device=device)
    t = time_fn(lambda: torch.mm(a, b, out=out), device, warmup=2, repeats=repeats)
    return {"n": n, "gflops": 2 * n ** 3 / t["median_s"] / 1e9, "median_s": t["median_s"],
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def copy_bandwidth(device: torch.device, mib: int | None = None, repeats: int = 5) -> dict:
    """GB/s of a large device-to-device copy, counting the bytes read plus the bytes written."""
    mib = mib or (2048 if device.type == "cuda" else 256)
    n = mib * (1 << 20) // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=2, repeats=repeats)
    return {"mib": mib, "gbs": 2 * n * 4 / t["median_s"] / 1e9, "median_s": t["median_s"]}


def machine_limits(device: torch.device, quick: bool = False) -> dict:
    """The measured matmul rate and copy bandwidth of `device`."""
    if quick:
        return {"matmul": matmul_rate(device, 512, repeats=3), "copy": copy_bandwidth(device, 16, repeats=3)}
    return {"matmul": matmul_rate(device), "copy": copy_bandwidth(device)}


def device_name(device: torch.device) -> str:
    """GPU name, or CPU model with the core count and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads)"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_commit(repo: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
