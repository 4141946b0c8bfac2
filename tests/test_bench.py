"""The benchmark: work counts against hand-computed values, and the JSON that bench/run.py writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from bench import flops

REPO = Path(__file__).resolve().parent.parent
REQUIRED_FIELDS = ("device", "date", "command", "git_commit", "load", "metrics")
REQUIRED_METRICS = ("hpca_epoch_s", "swta_epoch_s", "finetune_run_s", "extract_img_per_s", "search_qps")


def test_layer_shapes_follow_the_design_table():
    shapes = flops.layer_shapes()
    assert [(s.in_channels, s.in_side, s.kernel, s.neurons, s.out_side) for s in shapes] == [
        (3, 32, 5, 96, 14), (96, 14, 3, 128, 12), (128, 12, 3, 192, 5), (192, 5, 3, 256, 3), (256, 3, 3, 4096, 1)]


def test_layer_two_counts_by_hand():
    # layer 2, batch 64: 12x12 outputs -> N = 64*144 = 9216 rows, D = 96*9 = 864, M = 128
    w = flops.layer_work(flops.layer_shapes()[1], batch=64)
    n, d, m = 9216, 864, 128
    assert (w["N"], w["D"], w["M"]) == (n, d, m)
    assert w["forward_macs"] == 1_019_215_872 == n * m * d
    assert w["hpca_reference_macs"] == n * m * d + n * m * m + m * m * d == 1_184_366_592
    assert w["swta_macs"] == n * m * d + n * d
    assert w["unfold_bytes"] == 4 * 2 * n * d
    assert w["min_bytes"] == 4 * (64 * 96 * 14 * 14 + 64 * 128 * 12 * 12 + 2 * m * d)


def test_fully_connected_layer_hpca_reference_is_the_39_gmac_of_the_design():
    w = flops.layer_work(flops.layer_shapes()[4], batch=64)
    assert w["N"] == 64 and w["unfold_bytes"] == 0
    # tril(YᵀY)·W alone: "about 39 GMAC" in docs/PERFORMANCE.md#8-reference-points
    assert 4096 * 4096 * 2304 == 38_654_705_664
    assert w["hpca_reference_macs"] == 64 * 4096 * 2304 + 64 * 4096 ** 2 + 4096 ** 2 * 2304
    assert w["hpca_fast_macs"] < w["hpca_reference_macs"] / 10  # the blocked form on this shape
    assert w["wta_macs"] == 64 * 2304  # WTA sums the rows each neuron won: N·D additions
    total = flops.network_work()["totals"]["hpca_reference_step_tflop_per_epoch"]
    assert 55 < total < 65  # docs/PERFORMANCE.md#8-reference-points: about 60 TFLOP per epoch


def _run_bench(*extra: str) -> dict:
    # a plain temporary directory: pytest's tmp_path would make this test pay for pruning old pytest dirs
    with tempfile.TemporaryDirectory(prefix="hebbir-bench-test-") as out:
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--device", "cpu",
                               "--out-dir", out, *extra], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = list(Path(out).glob("*.json"))
        assert len(files) == 1
        result = json.loads(files[0].read_text())
    for field in REQUIRED_FIELDS:
        assert field in result
    for key in REQUIRED_METRICS:
        assert key in result["metrics"]
    assert "search_qps" in proc.stdout
    return result


def test_quick_run_writes_the_json():
    # the cheap sections only (the Hebbian ones cost seconds per step on a 2-core CPU: see the slow test)
    result = _run_bench("--sections", "limits,search,decode")
    m = result["metrics"]
    assert m["matmul_gflops"] > 0 and m["copy_gbs"] > 0
    assert m["search_qps"] > 0 and m["decode_img_per_s"] > 0
    assert m["hpca_epoch_s"] is None  # not run, but present


@pytest.mark.slow
def test_full_quick_run():
    result = _run_bench()
    m = result["metrics"]
    for key in REQUIRED_METRICS:
        assert m[key] is not None and m[key] > 0
    assert m["rules_fast_equal_reference"] is True


def test_reference_section_is_skipped_cleanly_without_the_reference_code(monkeypatch):
    monkeypatch.delenv("HEBBIR_FASTHEBB_REF", raising=False)
    result = _run_bench("--sections", "limits,reference,search")
    assert "skipped" in result["details"]["reference"]
    assert "errors" not in result["details"]


def test_wide3_work_counts_the_padded_convolutions():
    shapes = flops.layer_shapes("wide3")
    # reflect padding keeps the 32x32 map through the 5x5 conv; overlapping 4x4 pools of stride 2 halve it
    assert [(s.in_channels, s.in_side, s.conv_side, s.out_side) for s in shapes] == [
        (3, 36, 32, 16), (96, 18, 16, 8), (384, 10, 8, 4)]
    w = flops.layer_work(shapes[2], batch=10)
    assert w["softhebb_macs"] == 10 * 64 * 1536 * 3456 + 10 * 64 * 1536


def test_an_exported_copy_of_the_reference_is_refused_with_a_sentence(tmp_path):
    from bench import reference

    (tmp_path / "hebb").mkdir()
    (tmp_path / "hebb" / "__init__.py").write_text("")
    with pytest.raises(RuntimeError, match="git clone"):
        reference.extract(tmp_path, tmp_path / "out")


def test_the_input_whitening_is_counted_for_the_networks_that_run_it():
    from bench.run import pretrain_flops
    from hebb.network import build_network

    for rule in ("hpca", "swta", "wta", "softhebb"):
        arch = "wide3" if rule == "softhebb" else "cifar6"
        net = build_network(arch=arch, rule=rule)
        d = net.zca_matrix.shape[0] if net.use_zca else 0
        assert flops.zca_macs(rule, 64, arch) == 64 * d * d
        layers = pretrain_flops([64, 64, 32], rule, "cpu", arch)
        whitened = pretrain_flops([64, 64, 32], rule, "cpu", arch, whitening=True)
        assert whitened == pytest.approx(layers + 2 * 160 * d * d, rel=1e-12)
    assert flops.zca_macs("swta") == 64 * 3072 ** 2


@pytest.mark.skipif(not os.environ.get("HEBBIR_FASTHEBB_REF"),
                    reason="the FastHebb reference code is not here (set HEBBIR_FASTHEBB_REF to a clone)")
def test_reference_code_computes_the_same_updates_as_hebbir():
    import torch

    from bench import reference

    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    for rule in reference.RULES:
        r = reference.compare(rule, images, reference.locate(), batches=1)
        assert max(r["first_update_rel_diff_per_layer"]) < 1e-4, rule
        assert r["hebbir_s_per_batch"] > 0 and r["reference_s_per_batch"] > 0


def test_scaling_width_curve_counts_work_that_grows_with_the_neurons(one_thread):
    from bench import scaling

    points = scaling.width_curve("swta", 5, (256, 512), repeats=1)
    assert [p["neurons"] for p in points] == [256, 512]
    assert 1.99 < points[1]["macs"] / points[0]["macs"] < 2.0  # fully connected: ~linear in M (+ N·D patch norms)
    assert all(p["step_s"] > 0 and p["gflops"] > 0 for p in points)


def test_scaling_batch_curve_counts_the_whitening_the_soft_wta_step_runs(one_thread):
    from bench import scaling

    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for rule, whitens in (("swta", True), ("hpca", False)):
        (point,) = scaling.batch_curve(rule, images, (16,), repeats=1)
        key = {"hpca": "hpca_fast"}.get(rule, rule)
        layers = 2e9 * flops.network_work(batch=16)["totals"][f"{key}_step_gmac_per_batch"]
        counted = point["gflops"] * 1e9 * point["step_s"]
        assert counted == pytest.approx(layers + 2 * flops.zca_macs(rule, batch=16), rel=1e-9)
        assert (counted > layers * 1.01) == whitens
