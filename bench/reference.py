"""The original FastHebb layer code timed beside hebbir: one pre-training step of layers 1-5 of the CIFAR
6-layer net, the same 64-image batches, interleaved.

The reference is never part of this repository. Point HEBBIR_FASTHEBB_REF (or `bench/run.py --reference
PATH`) at a clone, or a bare git directory, of https://github.com/GabrieleLagani/HebbianLearning: the files
its layers need (hebb/__init__.py, hebb/functional.py, hebb/hebb.py, params.py) are read from tag
`fasthebb` into a temporary directory and imported from there as the package `fasthebb_ref`. Without it
the section is skipped. Patches for current torch: none is needed (torch 2.x runs the tag as it is).

The reference net is built as its models/hebb/model_6l.py builds it, with the settings of its configs:
HPCA (`hpca`: ReLU, Hebbian gating, linear-combination reconstruction, plain average) and soft-WTA
(`eswta`, k = 0.02: squared raised cosine, exponential soft-WTA, sign-quantised reconstruction, weighted
average), batch norm after every layer (the modified one from layer 3 on), plain SGD at lr 1e-3 applied
after `local_update()`. Both nets start from hebbir's weights and get the same preprocessed batch
(hebbir's input normalisation, and ZCA for soft-WTA), so each step does the same job; the updates of the
first step are compared layer by layer.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ENV = "HEBBIR_FASTHEBB_REF"
TAG = "fasthebb"
FILES = ("hebb/__init__.py", "hebb/functional.py", "hebb/hebb.py", "params.py")
PACKAGE = "fasthebb_ref"
RULES = ("hpca", "swta")


def locate(path: str | os.PathLike | None = None) -> Path | None:
    """The reference repository given (argument, else HEBBIR_FASTHEBB_REF), or None when it is not there."""
    path = path or os.environ.get(ENV)
    if not path:
        return None
    path = Path(path)
    return path if path.exists() else None


def extract(repo: Path, dest: Path) -> None:
    """Write FILES of tag `fasthebb` from `repo` (a clone or a bare git directory) under `dest`."""
    for name in FILES:
        done = subprocess.run(["git", "-C", str(repo), "show", f"{TAG}:{name}"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{repo} gives no {name} at tag {TAG} ({done.stderr.strip() or 'git failed'}): "
                               f"point at a git clone (or bare git directory) of the reference repository, "
                               f"not an exported copy of its files")
        text = done.stdout
        out = dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def load(repo: Path):
    """Import the reference layer code from `repo` as `fasthebb_ref` (its params.py bound as it expects)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    dest = Path(tempfile.mkdtemp(prefix="hebbir-fasthebb-"))
    extract(repo, dest)
    params_spec = importlib.util.spec_from_file_location("params", dest / "params.py")
    params = importlib.util.module_from_spec(params_spec)
    params_spec.loader.exec_module(params)
    previous = sys.modules.get("params")
    sys.modules["params"] = params  # hebb.py runs `import params as P`
    try:
        spec = importlib.util.spec_from_file_location(PACKAGE, dest / "hebb" / "__init__.py",
                                                      submodule_search_locations=[str(dest / "hebb")])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            sys.modules.pop("params", None)
        else:
            sys.modules["params"] = previous
    return module


class ReferenceNet(nn.Module):
    """Layers 1-5 of the reference's model_6l with the settings of `rule`, weights copied from a HebbNet."""

    def __init__(self, ref, net, rule: str):
        super().__init__()
        H, HF = ref, ref.functional
        if rule == "hpca":
            opts = dict(lrn_sim=HF.get_affine_sim(HF.kernel_mult2d), lrn_act=HF.get_affine_act(F.relu),
                        out_sim=HF.get_affine_sim(HF.kernel_mult2d), out_act=HF.get_affine_act(F.relu),
                        gating=H.HebbianConv2d.GATE_HEBB, reconstruction=H.HebbianConv2d.REC_LIN_CMB,
                        reduction=H.HebbianConv2d.RED_AVG)
            competitive_act, k = None, 0
        elif rule == "swta":
            opts = dict(lrn_sim=HF.get_affine_sim(HF.raised_cos_sim2d, p=2.0),
                        lrn_act=HF.get_affine_act(HF.identity),
                        out_sim=HF.get_affine_sim(HF.vector_proj2d), out_act=HF.get_affine_act(F.relu),
                        gating=H.HebbianConv2d.GATE_BASE, reconstruction=H.HebbianConv2d.REC_QNT_SGN,
                        reduction=H.HebbianConv2d.RED_W_AVG)
            competitive_act, k = HF.esoftwta, net.layers[0].conv.temperature
        else:
            raise ValueError(f"no reference settings for rule {rule!r} (expected one of {RULES})")
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        self.pools, self.modified = [], []
        for i, block in enumerate(net.layers):
            conv = block.conv
            layer = H.HebbianConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, lrn_cmp=True,
                                    lrn_t=True, upd_rule=H.HebbianConv2d.UPD_RECONSTR,
                                    competitive=H.Competitive(competitive_act=competitive_act, k=k), **opts)
            layer.weight = nn.Parameter(conv.weight.detach().clone())
            self.convs.append(layer)
            self.bns.append(nn.BatchNorm2d(conv.out_channels))
            self.pools.append(block.pool.kernel_size if block.pool is not None else 0)
            self.modified.append(i >= 2)  # model_6l: HF.modified_bn after layers 3, 4 and 5
        self.modified_bn = HF.modified_bn

    def forward(self, x: torch.Tensor, keep_inputs: list | None = None) -> torch.Tensor:
        for conv, bn, pool, modified in zip(self.convs, self.bns, self.pools, self.modified):
            if keep_inputs is not None:
                keep_inputs.append(x)
            x = conv(x)
            if pool:
                x = F.max_pool2d(x, pool)
            x = self.modified_bn(bn, x) if modified else bn(x)
        return x


def _hebbir_step(net, optimizer, x):
    optimizer.zero_grad(set_to_none=True)
    for block in net.layers:
        x = block(x)
    optimizer.step()


def _reference_step(ref_net, optimizer, x):
    optimizer.zero_grad(set_to_none=True)
    ref_net(x)
    for conv in ref_net.convs:
        conv.local_update()
    optimizer.step()


@torch.no_grad()
def update_errors(ref_net, net, x) -> list[float]:
    """Per layer: relative difference of the reference's first update and hebbir's on the same layer input."""
    inputs: list = []
    ref_net.train()
    ref_net(x, keep_inputs=inputs)
    errors = []
    for conv, block, xin in zip(ref_net.convs, net.layers, inputs):
        ours = block.conv.hebbian_delta(xin)
        theirs = conv.delta_w.detach()
        conv.delta_w = None
        errors.append(float((ours - theirs).double().norm() / theirs.double().norm().clamp_min(1e-30)))
    return errors


def compare(rule: str, images: torch.Tensor, repo: Path, batches: int = 5, batch_size: int = 64,
            lr: float = 1e-3) -> dict:
    """Seconds per batch of hebbir and of the reference code, interleaved on the same batches (CPU)."""
    from hebb.data import to_float
    from hebb.network import build_network

    ref = load(repo)
    device = torch.device("cpu")
    torch.manual_seed(0)
    net = build_network(rule=rule)
    net.fit_input(images[:min(len(images), 1024)])
    xs = [net.preprocess(to_float(images[i * batch_size:(i + 1) * batch_size], device))
          for i in range(batches + 1)]
    ref_net = ReferenceNet(ref, net, rule)
    errors = update_errors(copy.deepcopy(ref_net), net, xs[0])
    net.train()
    net.set_hebbian_learning(True)
    ref_net.train()
    opt_h = torch.optim.SGD([b.conv.weight for b in net.layers], lr=lr)
    opt_r = torch.optim.SGD([c.weight for c in ref_net.convs], lr=lr)
    times = {"hebbir": [], "reference": []}
    steps = {"hebbir": lambda x: _hebbir_step(net, opt_h, x), "reference": lambda x: _reference_step(ref_net, opt_r, x)}
    with torch.no_grad():
        for i, x in enumerate(xs):  # batch 0 warms both up and is not timed
            for name, step in steps.items():
                t0 = time.perf_counter()
                step(x)
                if i:
                    times[name].append(time.perf_counter() - t0)
    net.set_hebbian_learning(False)
    h, r = statistics.median(times["hebbir"]), statistics.median(times["reference"])
    return {"rule": rule, "batch": batch_size, "batches": batches, "hebbir_s_per_batch": h,
            "reference_s_per_batch": r, "speedup": r / h, "times_s": times,
            "first_update_rel_diff_per_layer": errors, "threads": torch.get_num_threads()}


def run(images: torch.Tensor, repo: Path | None = None, batches: int = 5) -> list[dict] | None:
    """`compare` for every rule of RULES, or None when the reference code is not there."""
    repo = locate(repo)
    if repo is None:
        return None
    return [compare(rule, images, repo, batches=batches) for rule in RULES]
