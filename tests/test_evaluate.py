"""The evaluation sweep: results.json, resume without retraining, report files, confidence intervals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import retrieval.evaluation.sweep as ev
from hebb.errors import UserError
from retrieval.cli import main
from retrieval.evaluation.report import mean_ci, t_quantile, write_report


def test_student_t_interval_matches_known_values():
    # t_{0.975} quantiles from statistical tables
    assert t_quantile(0.975, 1) == pytest.approx(12.7062047, rel=1e-6)
    assert t_quantile(0.975, 2) == pytest.approx(4.3026527, rel=1e-6)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764451, rel=1e-6)
    assert t_quantile(0.025, 9) == pytest.approx(-2.2621572, rel=1e-6)
    # values 1, 2, 3: mean 2, s = 1, half-width = 4.3026527 / sqrt(3)
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.3026527 / math.sqrt(3), rel=1e-6)
    mean, half = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(half)


# Half-widths computed by the hand-written Student-t quantile (incomplete-beta continued fraction +
# bisection) that the report module used before it switched to scipy.stats.t; the values are seeded
# uniform draws in [0.2, 0.9] rounded to 4 digits.
OLD_CI = {
    2: ([0.6731, 0.35], 0.51155, 2.052687375129016),
    3: ([0.4166, 0.7596, 0.8971], 0.6911, 0.6147387639178503),
    5: ([0.2996, 0.2551, 0.3266, 0.4518, 0.3187], 0.33036, 0.09104880044787714),
    10: ([0.6121, 0.6318, 0.2738, 0.596, 0.2032, 0.5256, 0.8829, 0.7596, 0.6178, 0.4277], 0.55305,
         0.14776952163017582),
}


@pytest.mark.parametrize("n", sorted(OLD_CI))
def test_scipy_interval_matches_the_previous_implementation(n):
    values, old_mean, old_half = OLD_CI[n]
    assert len(values) == n
    mean, half = mean_ci(values)
    assert mean == pytest.approx(old_mean, abs=1e-12)
    assert abs(half - old_half) < 1e-6


def test_report_without_scipy_has_no_intervals(monkeypatch):
    import sys

    import retrieval.evaluation.report as report

    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    assert not report.have_scipy()
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isnan(half)


class _Counting:
    """Fake training stages that count their calls: real networks, no training (seconds, not minutes)."""

    def __init__(self, fail_on_finetune: int | None = None):
        self.pretrains = 0
        self.finetunes = 0
        self.fail_on_finetune = fail_on_finetune

    def pretrain(self, method, train, num_classes, config, seed, device, resume=None):
        from hebb.network import build_network

        self.pretrains += 1
        net = build_network(num_classes=num_classes, rule="random" if method == "random" else "sgd")
        net.fit_input(train.images)
        return net, {"epochs": 2, "epoch_time_s": 0.5, "time_s": 1.0}

    def finetune(self, net, labelled, val, layer, config, seed, device, augment=False):
        self.finetunes += 1
        if self.fail_on_finetune == self.finetunes:
            raise KeyboardInterrupt  # the sweep is interrupted in the middle
        net.cut(layer)
        return net.eval(), {"val_acc": 0.1 * layer + 0.01 * seed, "time_s": 0.25, "epochs": 1}


@pytest.fixture
def shared_splits(cifar_splits, monkeypatch):
    """The sweep reads the session's decoded CIFAR-10 instead of loading it again (seconds per load)."""
    monkeypatch.setattr("hebb.data.load_splits", lambda *args, **kwargs: cifar_splits)
    return cifar_splits


def test_sweep_resumes_after_interruption_and_extends(cifar_data_dir, shared_splits, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    fake = _Counting(fail_on_finetune=3)
    monkeypatch.setattr(ev, "pretrain_method", fake.pretrain)
    monkeypatch.setattr(ev, "finetune_run", fake.finetune)
    cheap = {"limit": 120, "data_dir": cifar_data_dir, "command": "test", "pooling": "avg", "projection": "none"}
    config = ev.SweepConfig(out=out, methods=("hpca", "sgd"), regimes=(10, 100), layers=(2,), seeds=(0,), **cheap)
    with pytest.raises(KeyboardInterrupt):
        ev.run_sweep(config, progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert sorted(saved["runs"]) == ["hpca/r10/l2/s0", "hpca/r100/l2/s0"]   # finished runs survived
    assert (out / "work" / "pretrain-hpca-s0.pt").is_file()

    fake.fail_on_finetune = None
    fake.pretrains = fake.finetunes = 0
    results = ev.run_sweep(config, progress=False)
    assert len(results["runs"]) == 4
    assert fake.finetunes == 2                  # only the two sgd runs were left
    assert fake.pretrains == 0                  # both pre-trained nets came from the work-folder cache

    # widening the sweep (one more seed) reuses everything already done
    fake.pretrains = fake.finetunes = 0
    wider = ev.SweepConfig(out=out, methods=("sgd",), regimes=(10, 100), layers=(2,), seeds=(0, 1), **cheap)
    results = ev.run_sweep(wider, progress=False)
    assert len(results["runs"]) == 6 and fake.finetunes == 2 and fake.pretrains == 1

    record = results["runs"]["sgd/r10/l2/s1"]
    assert 10 <= record["labelled"] <= 20       # 10% of 120 training images, at least 1 per class
    assert results["runs"]["sgd/r100/l2/s1"]["labelled"] == 120
    assert 0 <= record["accuracy"]["top1"] <= record["accuracy"]["top5"] <= 1
    r = record["retrieval"]
    assert 0 < r["map@all"] <= 1 and 0 < r["map@100"] <= 1 and 0 < r["map@R"] <= 1
    assert r["database"] == r["queries"] == 120
    assert record["timings"]["pretrain_epochs"] == 2 and record["timings"]["finetune_s"] == 0.25

    # other settings in the same folder are refused instead of being mixed in
    other = ev.SweepConfig(out=out, methods=("sgd",), regimes=(10,), layers=(2,), seeds=(0,),
                           **{**cheap, "limit": 60})
    with pytest.raises(UserError, match="other settings"):
        ev.run_sweep(other, progress=False)

    summary = write_report(out).read_text()
    assert "| HPCA |" in summary and "| SGD (scratch) |" in summary
    assert "*57.35*" in summary and "*39.75*" not in summary   # paper rows only at the regimes we ran
    assert "*84.38*" in summary
    assert "±" in summary                                        # sgd has two seeds -> intervals
    for png in ("accuracy_vs_regime.png", "map_vs_regime.png", "pr_curves.png", "training_times.png"):
        assert (out / png).stat().st_size > 5000


def test_evaluate_command_trains_for_real_then_skips_on_rerun(cifar_data_dir, shared_splits, tmp_path,
                                                               monkeypatch):
    _real_sweep_then_rerun("random,sgd", cifar_data_dir, tmp_path, monkeypatch)


@pytest.mark.slow
def test_evaluate_command_with_hebbian_pretraining(cifar_data_dir, shared_splits, tmp_path, monkeypatch):
    _real_sweep_then_rerun("hpca,swta", cifar_data_dir, tmp_path, monkeypatch)


def _real_sweep_then_rerun(methods, cifar_data_dir, tmp_path, monkeypatch):
    out = tmp_path / "cli"
    first, second = methods.split(",")
    argv = ["evaluate", "--methods", methods, "--regimes", "10,100", "--layers", "2", "--seeds", "1",
            "--pretrain-epochs", "1", "--finetune-epochs", "1", "--limit", "200", "--device", "cpu",
            "--pooling", "avg", "--projection", "none", "--data-dir", str(cifar_data_dir), "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["runs"]) == sorted(f"{m}/r{r}/l2/s0" for m in (first, second) for r in (10, 100))
    for m in (first, second):
        assert (out / "work" / f"pretrain-{m}-s0.pt").is_file()
        if m in ev.PRETRAINED_METHODS:
            stats = results["pretraining"][f"{m}/s0"]
            assert stats["epochs"] == 1 and stats["time_s"] > 0
    full = results["runs"][f"{first}/r100/l2/s0"]
    assert full["labelled"] == 200 and full["timings"]["finetune_epochs"] == 1
    for cell in results["runs"].values():   # the fine-tuned net's classifier reads the cell's layer
        assert cell["retrieval_head"]["head_weight"] == 1.0 and cell["retrieval_head"]["database"] == 200
        assert cell["retrieval_head"]["map@100"] != cell["retrieval"]["map@100"]
    summary = (out / "summary.md").read_text()
    assert "CPU" in summary and f"hebbir evaluate --dataset cifar10 --methods {methods} --readouts finetune --regimes 10,100" in summary
    assert (out / "accuracy_vs_regime.png").is_file()

    # a rerun trains nothing: any call to a training stage fails the test
    def forbidden(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ev, "pretrain_method", forbidden)
    monkeypatch.setattr(ev, "finetune_run", forbidden)
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
    assert main(["evaluate", "--report-only", "--out", str(out)]) == 0


def test_bad_requests_are_one_line_errors(tmp_path, capsys):
    assert main(["evaluate", "--methods", "hpca,magic", "--out", str(tmp_path)]) == 2
    assert "magic" in capsys.readouterr().err
    assert main(["evaluate", "--report-only", "--out", str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err


def _record(method, regime, layer, seed, top1, map100, val):
    return {"method": method, "regime": regime, "layer": layer, "seed": seed, "labelled": 40,
            "accuracy": {"top1": top1, "top5": 0.9}, "val_accuracy": val,
            "retrieval": {"map@100": map100, "map@R": map100 / 2, "map@all": map100 / 3,
                          "pr_curve": {"recall": [0.0, 1.0], "precision": [1.0, 0.1]}},
            "timings": {"finetune_s": 2.0}, "device": "test device", "finished": "2026-01-01T00:00:00+00:00"}


def test_report_tables_hold_mean_and_interval_per_chosen_layer(tmp_path, monkeypatch):
    runs = {}
    for seed, top1 in enumerate((0.5, 0.6, 0.7)):
        runs[f"hpca/r1/l5/s{seed}"] = _record("hpca", 1.0, 5, seed, top1, 0.3, val=0.6)
        # layer 3 validates worse: the tables must show layer 5, the layer table both
        runs[f"hpca/r1/l3/s{seed}"] = _record("hpca", 1.0, 3, seed, 0.2, 0.1, val=0.2)
    ev.write_results(tmp_path, {"format": ev.RESULTS_FORMAT, "version": 1, "settings": {"dataset": "cifar10"},
                                "created": "2026-01-01T00:00:00+00:00", "sessions": [],
                                "pretraining": {"hpca/s0": {"epochs": 3, "epoch_time_s": 20.0, "time_s": 60.0}},
                                "runs": runs})

    def no_matplotlib(*args, **kwargs):
        raise ImportError("matplotlib")

    monkeypatch.setattr("retrieval.evaluation.report.write_plots", no_matplotlib)
    summary = write_report(tmp_path).read_text()
    accuracy = summary.split("## Test accuracy")[1].split("## Retrieval")[0]
    half = 4.3026527 * 10 / math.sqrt(3)        # s = 10 points over 3 seeds
    assert f"| HPCA | 60.00 ± {half:.2f} |" in accuracy
    assert "| *HPCA (paper)* | *39.75* |" in accuracy
    assert "| HPCA | 0.300 ± 0.000 |" in summary                  # mAP@100 at layer 5, not layer 3
    assert "| HPCA | 1% | 20.0 ± 0.0 / 0.100 ± 0.000 | 60.0 ± " in summary   # layer table: 3 then 5
    assert "| HPCA | 20.0 s | 3 | 1m 0s |" in summary               # Table-1 style timings
    assert "matplotlib is not installed" in summary


def test_what_this_shows_is_written_from_the_numbers(tmp_path, monkeypatch):
    """The section sets each Hebbian row against random features of its own net and against SGD, and calls a
    difference only where the 95% intervals part."""
    runs = {}
    for seed in range(3):
        for method, readout, layer, top1, map100 in [("softhebb", "probe", 3, 0.60 + 0.01 * seed, 0.26),
                                                      ("random@wide3", "probe", 3, 0.50 + 0.01 * seed, 0.13),
                                                      ("swta", "probe", 5, 0.40 + 0.01 * seed, 0.05),
                                                      ("random", "probe", 5, 0.45 + 0.01 * seed, 0.12),
                                                      ("sgd", "finetune", 5, 0.35 + 0.10 * seed, 0.14)]:
            rec = _record(method, 1.0, layer, seed, top1, map100 + 0.001 * seed, val=top1)
            rec["readout"] = readout
            runs[f"{method}/{readout}/r1/l{layer}/s{seed}"] = rec
    _folder(tmp_path, runs)
    monkeypatch.setattr("retrieval.evaluation.report.write_plots", lambda *a, **k: [])
    summary = write_report(tmp_path).read_text()
    times = summary.split("## Training time")[1]
    assert [line for line in times.splitlines() if line.startswith("| soft-WTA (probe) |")][0].endswith(
        "| 18.0 s | 1 | 18.0 s |")                                   # the paper's pre-training beside the probe row
    shows = summary.split("## What this shows")[1].split("\n## ")[0]
    assert ("| 1% | SoftHebb (probe): 61.0 / 0.261 | SGD (scratch): 45.0 / 0.141 (Hebbian +16.0 points) | "
            "random frozen, wide3 (probe): 51.0 / 0.131 (Hebbian +10.0 points) |") in shows
    assert "- SoftHebb (probe) vs random frozen, wide3 (probe): above at 1% (+10.0 points)." in shows
    assert "- soft-WTA (probe) vs random frozen (probe): below at 1% (-5.0 points)." in shows
    assert "In test accuracy the best Hebbian row is above the best SGD-from-scratch row at 1 of the 1 regimes" in shows
    assert "In mAP@100 the best Hebbian row is above the best SGD-from-scratch row at 1 of the 1 regimes" in shows
    assert "VAE" in shows and "augmentation" in shows and "SGD from scratch;" not in shows


def test_each_hebbian_row_is_judged_against_its_own_net_and_read_out_without_pre_training():
    from retrieval.evaluation.findings import floor_row

    rows = ["hpca", "hpca probe", "softhebb probe-std", "sgd", "sgd@wide3", "random probe", "random@wide3 probe"]
    assert floor_row(rows, "hpca") == "sgd"                       # fine-tuned: SGD from random weights
    assert floor_row(rows, "hpca probe") == "random probe"
    assert floor_row(rows, "softhebb probe-std") == "random@wide3 probe"   # no random probe-std row: the probe
    assert floor_row(rows, "softhebb") == "sgd@wide3"
    assert floor_row(["swta", "sgd@wide3"], "swta") is None       # another network is no floor


def test_findings_call_a_difference_only_when_the_intervals_part():
    from retrieval.evaluation.findings import compare

    assert compare((0.6, 0.01), (0.5, 0.01)) == "above"
    assert compare((0.6, 0.08), (0.5, 0.05)) == "level"
    assert compare((0.4, 0.01), (0.5, 0.01)) == "below"
    assert compare((0.6, math.nan), (0.5, 0.01)) == "above*"     # one seed: the call says so


def test_findings_name_the_regimes_where_sgd_wins():
    from retrieval.evaluation.findings import _headline

    maps = {"softhebb probe": {1.0: (0.26, math.nan), 10.0: (0.26, math.nan)},
            "sgd finetune-aug": {1.0: (0.14, math.nan), 10.0: (0.30, math.nan)}}
    line = _headline(maps, list(maps), [1.0, 10.0], "mAP@100")
    assert "at 1 of the 2 regimes" in line
    assert "not at 10% (SGD (scratch) (fine-tuned with flips and shifts))" in line
    assert "not settled by the 95% intervals: 1% (+0.120, one seed)" in line   # a win on one run says so

    acc = {"softhebb probe": {1.0: (0.50, 0.01), 5.0: (0.62, 0.01)},
           "sgd@wide3 finetune": {1.0: (0.43, 0.02), 5.0: (0.60, 0.02)}}
    line = _headline(acc, list(acc), [1.0, 5.0], "test accuracy")
    assert "at 2 of the 2 regimes" in line
    assert "not settled by the 95% intervals: 5% (+2.0 points, intervals overlap)." in line   # 1%: settled


def test_augmented_fine_tuning_is_its_own_read_out(cifar_data_dir, shared_splits, tmp_path, monkeypatch):
    """finetune-aug (for sgd: the SGD-with-augmentation baseline) trains on augmented batches, the plain
    read-out does not, and the two land in different cells and report rows."""
    import hebb.recipes

    seen = []

    def fake_read_out(net, readout, labelled, val, layer, **options):
        seen.append((readout, options.get("augment")))
        return net, {"val_acc": 0.1, "epochs": 1, "time_s": 0.5}

    monkeypatch.setattr(hebb.recipes, "read_out", fake_read_out)
    config = ev.SweepConfig(out=tmp_path, methods=("sgd",), readouts=("finetune", "finetune-aug"), regimes=(10,),
                            layers=(2,), seeds=(0,), limit=120, data_dir=cifar_data_dir, command="test",
                            pooling="avg", projection="none")
    results = ev.run_sweep(config, progress=False)
    assert seen == [("finetune", False), ("finetune", True)]
    assert sorted(results["runs"]) == ["sgd/finetune-aug/r10/l2/s0", "sgd/r10/l2/s0"]
    assert results["runs"]["sgd/finetune-aug/r10/l2/s0"]["readout"] == "finetune-aug"
    monkeypatch.setattr("retrieval.evaluation.report.write_plots", lambda *a, **k: [])
    assert "| SGD (scratch) (fine-tuned with flips and shifts) |" in write_report(tmp_path).read_text()


def test_settings_do_not_depend_on_the_grid(tmp_path):
    """Calls that sweep other methods or read-outs into the same folder must find the same settings."""
    probes = ev.SweepConfig(out=tmp_path, methods=("softhebb",), readouts=("probe",), share_pretraining=True)
    finetunes = ev.SweepConfig(out=tmp_path, methods=("sgd",), readouts=("finetune",), regimes=(1, 5),
                               seeds=(0,), share_pretraining=True)
    assert probes.settings() == finetunes.settings()
    assert probes.settings() != ev.SweepConfig(out=tmp_path, methods=("sgd",)).settings()  # sharing is a setting


def test_report_never_averages_retrieval_over_different_reductions(tmp_path, monkeypatch):
    runs = {}
    for seed, (features, map100, finished) in enumerate([("avg", 0.2, "2026-01-01"), ("avg", 0.2, "2026-01-01"),
                                                         ("flatten", 0.26, "2026-01-02")]):
        rec = _record("softhebb", 1.0, 3, seed, 0.5, map100, val=0.5)
        rec.update(readout="probe-std", finished=finished + "T00:00:00+00:00")
        rec["retrieval"]["features"] = {"layer": 3, "pooling": features, "projection": "pca", "dim": 256,
                                        "pooled_dim": 24576 if features == "flatten" else 1536}
        runs[f"softhebb/probe-std/r1/l3/s{seed}"] = rec
    ev.write_results(tmp_path, {"format": ev.RESULTS_FORMAT, "version": 1, "settings": {"dataset": "cifar10"},
                                "created": "2026-01-01T00:00:00+00:00", "sessions": [], "pretraining": {},
                                "runs": runs})
    monkeypatch.setattr("retrieval.evaluation.report.write_plots", lambda *a, **k: [])
    summary = write_report(tmp_path).read_text()
    assert "| SoftHebb (probe, standardised features) | 0.260 |" in summary   # the newest reduction only
    assert ("SoftHebb (probe, standardised features): layer 3, flatten -> pca 256 (24576 -> 256 floats)."
            in summary)                                                       # the row says what it measured
    assert "left out of the mAP figures" in summary and "SoftHebb (probe, standardised features) 1% layer 3" in summary
    accuracy = summary.split("## Test accuracy")[1].split("## Retrieval")[0]
    assert "| SoftHebb (probe, standardised features) | 50.00 ± 0.00 |" in accuracy   # accuracy keeps all seeds


def test_probe_and_standardised_probe_share_one_feature_pass(cifar_data_dir, shared_splits, tmp_path, monkeypatch):
    calls, mirrored = [], []
    real, real_mirrored = ev.layer_features, ev.add_mirrored
    monkeypatch.setattr(ev, "layer_features", lambda key, *a, **k: calls.append(key) or real(key, *a, **k))
    monkeypatch.setattr(ev, "add_mirrored",
                        lambda f, *a, **k: mirrored.append(f.train_mirrored is None) or real_mirrored(f, *a, **k))
    out = tmp_path / "probes"
    assert main(["evaluate", "--methods", "random", "--readouts", "probe,probe-std,probe-flip", "--regimes", "5,10",
                 "--layers", "2", "--seeds", "1", "--probe-epochs", "3", "--limit", "200", "--device", "cpu",
                 "--pooling", "avg", "--projection", "none", "--data-dir", str(cifar_data_dir),
                 "--out", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(runs) == [f"random/{r}/r{p}/l2/s0" for r in ("probe-flip", "probe-std", "probe") for p in (10, 5)]
    assert len(calls) == 1                                   # one feature pass served every read-out
    assert mirrored == [True, False]                         # the mirrored images' features: once, then cached
    assert runs["random/probe-flip/r5/l2/s0"]["timings"]["mirrored_features_s"] > 0
    plain, standardised = runs["random/probe/r10/l2/s0"], runs["random/probe-std/r10/l2/s0"]
    flipped = runs["random/probe-flip/r10/l2/s0"]
    assert standardised["probe"]["standardize"] is True and plain["probe"]["standardize"] is False
    assert flipped["probe"]["mirrored"] is True and plain["probe"]["mirrored"] is False
    assert flipped["accuracy"] != plain["accuracy"]          # the same labels, another head
    assert plain["retrieval"]["map@100"] == standardised["retrieval"]["map@100"] == flipped["retrieval"]["map@100"]
    # each cell also ranks with its own head's class probabilities appended, as `index build --head-weight 1`
    heads = {k: r["retrieval_head"] for k, r in runs.items()}
    assert all(h["head_weight"] == 1.0 and 0 < h["map@100"] <= 1 and h["database"] == 200 for h in heads.values())
    assert heads["random/probe/r10/l2/s0"]["map@100"] != heads["random/probe-flip/r10/l2/s0"]["map@100"]
    assert heads["random/probe/r10/l2/s0"]["map@100"] != plain["retrieval"]["map@100"]   # another ranking
    summary = (out / "summary.md").read_text()
    assert "SoftHebb" not in summary
    assert "mAP@100 with the read-out head" in summary
    assert "random frozen (probe, standardised features)" in summary and "random frozen (probe, random flips)" in summary


def test_a_probe_on_every_label_reads_the_cached_features_without_copying_them(monkeypatch):
    """At 100% the probe gets the cached feature tensors themselves (a copy of wide3's 40,000 x 24,576 features
    and of their mirrors is 7.8 GB); a smaller regime gets its rows."""
    import hebb.finetune

    seen = []

    def fake_fit(feats, labels, val_feats, val_labels, classes, mirrored=None, **kwargs):
        seen.append((feats, mirrored))
        return torch.nn.Linear(feats.shape[1], classes), {"val_acc": 0.5, "epochs": 1}

    monkeypatch.setattr(hebb.finetune, "fit_linear_head", fake_fit)
    monkeypatch.setattr(hebb.finetune, "head_accuracy", lambda *a, **k: {"top1": 0.5, "top5": 0.9})
    feats = ev.LayerFeatures(("m", 0, 1), torch.randn(20, 4), torch.randn(5, 4), torch.randn(5, 4), {}, 0.0,
                             train_mirrored=torch.randn(20, 4))
    split = type("Split", (), {"labels": torch.arange(20) % 2, "classes": ["a", "b"]})
    data = {"train": split, "val": split, "test": split}
    config = ev.SweepConfig(out="unused")
    ev.probe_run(feats, np.arange(20), data, config, 0, torch.device("cpu"), readout="probe-flip")
    ev.probe_run(feats, np.arange(0, 20, 2), data, config, 0, torch.device("cpu"), readout="probe-flip")
    (full, full_mirrored), (part, part_mirrored) = seen
    assert full is feats.train and full_mirrored is feats.train_mirrored
    assert torch.equal(part, feats.train[::2]) and torch.equal(part_mirrored, feats.train_mirrored[::2])


def _folder(path, runs, pretraining=None, settings=None):
    ev.write_results(path, {"format": ev.RESULTS_FORMAT, "version": 1,
                            "settings": settings or {"dataset": "cifar10"}, "created": "2026-01-01T00:00:00+00:00",
                            "sessions": [{"command": f"hebbir evaluate --out {path.name}"}],
                            "pretraining": pretraining or {}, "runs": runs})


def test_merge_joins_a_piece_run_elsewhere_and_refuses_what_cannot_share_a_table(tmp_path, capsys):
    main_dir, piece = tmp_path / "main", tmp_path / "piece"
    _folder(main_dir, {"hpca/r1/l5/s0": _record("hpca", 1.0, 5, 0, 0.5, 0.3, val=0.5)},
            {"hpca/s0": {"time_s": 60.0}})
    _folder(piece, {"hpca/r1/l5/s0": _record("hpca", 1.0, 5, 0, 0.9, 0.9, val=0.9),     # already there: kept
                    "sgd/r1/l5/s0": _record("sgd", 1.0, 5, 0, 0.4, 0.2, val=0.4)}, {"sgd/s0": {"time_s": 0.0}})
    assert main(["evaluate", "--out", str(main_dir), "--merge-from", str(piece)]) == 0
    assert "merged 1 cells" in capsys.readouterr().out
    merged = ev.load_results(main_dir)
    assert sorted(merged["runs"]) == ["hpca/r1/l5/s0", "sgd/r1/l5/s0"]
    assert merged["runs"]["hpca/r1/l5/s0"]["accuracy"]["top1"] == 0.5
    assert "sgd/s0" in merged["pretraining"] and merged["sessions"][-1]["merged_from"] == str(piece)
    assert (main_dir / "summary.md").is_file()

    other = tmp_path / "other"
    _folder(other, {"swta/r1/l5/s0": _record("swta", 1.0, 5, 0, 0.4, 0.2, val=0.4)},
            settings={"dataset": "cifar10", "limit": 600})
    with pytest.raises(UserError, match="other settings"):
        ev.merge_results(main_dir, other)
    clash = tmp_path / "clash"
    _folder(clash, {"hpca/r5/l5/s0": _record("hpca", 5.0, 5, 0, 0.6, 0.3, val=0.6)}, {"hpca/s0": {"time_s": 99.0}})
    with pytest.raises(UserError, match="different pre-trainings under hpca/s0"):
        ev.merge_results(main_dir, clash)
    assert sorted(ev.load_results(main_dir)["runs"]) == ["hpca/r1/l5/s0", "sgd/r1/l5/s0"]   # nothing half-merged


def test_merging_a_piece_started_from_a_copy_lists_each_session_once(tmp_path):
    """A piece seeded with a copy of the report (so that it skips the cells already there) carries the report's
    sessions too: the merge adds only the piece's own."""
    main_dir, piece = tmp_path / "main", tmp_path / "piece"
    _folder(main_dir, {"sgd/r1/l5/s0": _record("sgd", 1.0, 5, 0, 0.4, 0.2, val=0.4)},
            {"sgd/s0": {"epochs": 0, "settings": {"method": "sgd", "arch": "conv6", "seed": 0}}})
    copy = ev.load_results(main_dir)
    copy["runs"]["sgd/r5/l5/s0"] = _record("sgd", 5.0, 5, 0, 0.5, 0.2, val=0.5)
    copy["sessions"].append({"started": "2026-12-07T15:00:00+00:00", "command": "hebbir evaluate --out piece"})
    ev.write_results(piece, copy)
    assert ev.merge_results(main_dir, piece) == (1, 1)
    sessions = ev.load_results(main_dir)["sessions"]
    assert [s["command"] for s in sessions] == ["hebbir evaluate --out main", "hebbir evaluate --out piece"]
    assert sessions[-1]["merged_from"] == str(piece)
    assert ev.merge_results(main_dir, piece) == (0, 2) and len(ev.load_results(main_dir)["sessions"]) == 2


def test_a_merge_that_adds_no_cell_leaves_the_report_as_it_was(tmp_path):
    """A piece still running its first cell is merged periodically: until a cell of it finishes, its session must not
    appear in the report (which would then name a run none of whose cells it holds)."""
    main_dir, piece = tmp_path / "main", tmp_path / "piece"
    _folder(main_dir, {"sgd/r1/l5/s0": _record("sgd", 1.0, 5, 0, 0.4, 0.2, val=0.4)},
            {"sgd/s0": {"epochs": 0, "settings": {"method": "sgd", "arch": "conv6", "seed": 0}}})
    copy = ev.load_results(main_dir)
    copy["sessions"].append({"started": "2026-12-07T15:00:00+00:00", "command": "hebbir evaluate --out piece"})
    ev.write_results(piece, copy)
    before = (main_dir / ev.RESULTS_FILE).read_bytes()
    assert ev.merge_results(main_dir, piece) == (0, 1)
    assert (main_dir / ev.RESULTS_FILE).read_bytes() == before
    # through the command line, the summary (which carries the date it was written) is left alone too
    assert main(["evaluate", "--out", str(main_dir), "--report-only"]) == 0
    with open(main_dir / "summary.md", "a") as f:
        f.write("(a mark that a rewrite would remove)\n")  # the date alone could be the same second's
    summary = (main_dir / "summary.md").read_bytes()
    assert main(["evaluate", "--out", str(main_dir), "--merge-from", str(piece)]) == 0
    assert (main_dir / "summary.md").read_bytes() == summary and (main_dir / ev.RESULTS_FILE).read_bytes() == before
    copy["runs"]["sgd/r5/l5/s0"] = _record("sgd", 5.0, 5, 0, 0.5, 0.2, val=0.5)
    ev.write_results(piece, copy)
    assert ev.merge_results(main_dir, piece) == (1, 1)
    assert [s["command"] for s in ev.load_results(main_dir)["sessions"]][-1] == "hebbir evaluate --out piece"


def test_merge_knows_one_network_by_its_recipe_and_weights_not_its_timings(tmp_path):
    from hebb.checkpoint import save_checkpoint
    from hebb.network import build_network

    recipe = {"method": "sgd", "arch": "conv6", "seed": 0, "spec": "GGGGGG"}
    main_dir, piece = tmp_path / "main", tmp_path / "piece"
    _folder(main_dir, {"sgd/r1/l5/s0": _record("sgd", 1.0, 5, 0, 0.4, 0.2, val=0.4)},   # the arch's older name:
            {"sgd/s0": {"epochs": 0, "settings": dict(recipe, arch="cifar6"), "wall_s": 0.3}})  # the same net
    _folder(piece, {"sgd/r5/l5/s0": _record("sgd", 5.0, 5, 0, 0.5, 0.2, val=0.5)},
            {"sgd/s0": {"epochs": 0, "settings": recipe, "wall_s": 1.0}})
    assert ev.merge_results(main_dir, piece) == (1, 0)        # an untrained net: the recipe is the network

    trained = {"method": "hpca", "arch": "conv6", "seed": 0, "spec": "HHHHHG", "epochs": 1}
    for name, top1 in (("a", 0.5), ("b", 0.6), ("c", 0.7)):
        _folder(tmp_path / name, {f"hpca/r{top1 * 10:g}/l5/s0": _record("hpca", top1 * 10, 5, 0, top1, 0.2, val=top1)},
                {"hpca/s0": {"epochs": 1, "settings": trained, "wall_s": top1}})
    with pytest.raises(UserError, match="different pre-trainings under hpca/s0"):
        ev.merge_results(tmp_path / "a", tmp_path / "b")    # trained, and no weights to show it is one network
    torch.manual_seed(0)
    net = build_network("conv6", rule="hpca")
    for name in ("a", "b", "c"):
        if name == "c":
            with torch.no_grad():
                next(net.parameters()).add_(0.01)           # another network under the same recipe
        save_checkpoint(ev.pretraining_checkpoint(tmp_path / name, "hpca/s0"), net)
    assert ev.merge_results(tmp_path / "a", tmp_path / "b") == (1, 0)   # the same weights: one network
    with pytest.raises(UserError, match="different pre-trainings under hpca/s0"):
        ev.merge_results(tmp_path / "a", tmp_path / "c")


def test_status_prices_what_is_left_from_the_same_network_and_labels(tmp_path):
    def cell(method, regime, readout="finetune", **timings):
        return dict(_record(method, regime, 5, 0, 0.5, 0.2, val=0.5), readout=readout, timings=timings)

    _folder(tmp_path, {"sgd/r1/l5/s0": cell("sgd", 1.0, finetune_s=100.0, features_s=20.0),
                       "sgd/r5/l5/s0": cell("sgd", 5.0, finetune_s=300.0, features_s=20.0),
                       "random/probe/r1/l5/s0": cell("random", 1.0, "probe", probe_s=5.0, features_s=70.0)},
            {"sgd/s0": {"epochs": 0, "wall_s": 0.3}, "random/s0": {"epochs": 0, "wall_s": 10.0},
             "hpca/s0": {"epochs": 1, "wall_s": 150.0}})    # its checkpoint is gone: trained again
    status = ev.sweep_status(ev.SweepConfig(out=tmp_path, methods=("sgd", "hpca", "vae"), regimes=(1, 5, 10),
                                            seeds=(0,), share_pretraining=True))
    assert status["done"] == 2 and len(status["left"]) == 7
    # sgd 10%: the line through 1% and 5% (120 s, 320 s) gives 570 s; hpca and vae fine-tune the same net at the
    # same labels as sgd (120 + 320 + 570 s each); the networks not in the work folder are built again: hpca's
    # pre-training (150 s) and sgd's seeded initialisation (0.3 s)
    assert status["estimate_s"] == pytest.approx(570 + 2 * (120 + 320 + 570) + 150 + 0.3)
    assert status["unknown_cost"] == ["vae pre-training"]    # no VAE pre-training was ever measured
    assert status["resumable"] == {}

    from hebb.baselines import PROGRESS_FORMAT

    partial = ev.pretraining_progress(tmp_path, "vae/s0")
    partial.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": PROGRESS_FORMAT, "epoch": 3, "run": {"epochs": 20},
                "stats": {"epoch_times_s": [700.0, 800.0, 750.0]}}, partial)
    resumed = ev.sweep_status(ev.SweepConfig(out=tmp_path, methods=("sgd", "hpca", "vae"), regimes=(1, 5, 10),
                                             seeds=(0,), share_pretraining=True))
    # an interrupted VAE pre-training is priced by its own epochs: 17 left at their mean, 750 s
    assert resumed["resumable"] == {"vae/s0": "3 of 20 epochs done"} and resumed["unknown_cost"] == []
    assert resumed["estimate_s"] == pytest.approx(status["estimate_s"] + 17 * 750)

    probes = ev.sweep_status(ev.SweepConfig(out=tmp_path, methods=("random", "softhebb"), readouts=("probe",),
                                            regimes=(1,), seeds=(0, 1), share_pretraining=True))
    # random seed 1: 5 s, one feature pass (70 s) and its network built again (10 s); softhebb is another
    # network: nothing prices it
    assert probes["estimate_s"] == pytest.approx(5 + 70 + 10)
    assert probes["unknown_cost"] == ["softhebb layer 3 features", "softhebb pre-training", "softhebb/probe"]


def test_a_sweep_folder_takes_one_writer_at_a_time(tmp_path):
    _folder(tmp_path / "a", {})
    _folder(tmp_path / "b", {})
    with ev.folder_lock(tmp_path / "a"):
        with pytest.raises(UserError, match="is being written by hebbir evaluate"):
            ev.merge_results(tmp_path / "a", tmp_path / "b")
        with pytest.raises(UserError, match="is being written"):
            ev.run_sweep(ev.SweepConfig(out=tmp_path / "a", methods=("sgd",)))
    assert ev.merge_results(tmp_path / "a", tmp_path / "b") == (0, 0)   # free again once the holder is done


def test_test_accuracy_of_a_trainable_net_keeps_no_autograd_graph():
    """A fine-tuned net's test pass must not record a graph: kept for every batch, wide3's would need ~40 GB
    for the 10,000 test images (the sgd@wide3 cells were killed for memory this way)."""
    import torch

    from hebb.data import ArraySet

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3 * 4 * 4, 10)
            self.grad_enabled = []

        def forward(self, x):
            self.grad_enabled.append(torch.is_grad_enabled())
            return self.linear(x.flatten(1))

    images = torch.randint(0, 256, (30, 3, 4, 4), dtype=torch.uint8)
    labels = torch.arange(30) % 10
    net = Recorder()
    test = ArraySet(images, labels, [f"{i}.jpg" for i in range(30)], [str(c) for c in range(10)])
    acc = ev.score_accuracy(net, test, torch.device("cpu"), batch_size=8)
    assert net.grad_enabled == [False] * 4
    assert 0.0 <= acc["top1"] <= acc["top5"] <= 1.0


def test_transfer_protocol_learns_from_half_the_classes_and_retrieves_among_the_others(
        cifar_data_dir, shared_splits, tmp_path, monkeypatch):
    seen_by_training = []
    real_pretrain = ev.pretrain_method

    def pretrain(method, train, *args, **kwargs):
        seen_by_training.append(set(train.classes))
        return real_pretrain(method, train, *args, **kwargs)

    ranked = []
    import retrieval.evaluation.metrics as metrics

    def rank(queries, db, query_labels, db_labels, **kwargs):
        ranked.append((len(queries), len(db), set(np.asarray(query_labels).tolist())))
        return real(queries, db, query_labels, db_labels, **kwargs)

    real = metrics.rank_database
    monkeypatch.setattr(metrics, "rank_database", rank)
    monkeypatch.setattr(ev, "pretrain_method", pretrain)
    out = tmp_path / "transfer"
    assert main(["evaluate", "--methods", "hpca,random", "--readouts", "probe", "--regimes", "10", "--seeds", "1",
                 "--pretrain-epochs", "1", "--probe-epochs", "3", "--limit", "400", "--protocol", "transfer",
                 "--device", "cpu", "--data-dir", str(cifar_data_dir), "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["protocol"] == "transfer"
    classes = shared_splits["train"].classes
    seen, unseen = set(classes[:5]), set(classes[5:])
    assert seen_by_training == [seen, seen]                 # hpca and random: built from seen-class images only
    limited = ev.load_data(ev.SweepConfig(out=tmp_path / "seed", methods=("random",), limit=400,
                                          data_dir=cifar_data_dir))        # the same 400-image samples, all classes
    n_queries, n_db = (int((limited[s].labels >= 5).sum()) for s in ("test", "train"))
    assert ranked == [(n_queries, n_db, set(range(5)))] * 2  # unseen-class test images against their training images
    for record in data["runs"].values():
        assert set(record["classes"]["seen"]) == seen and set(record["classes"]["unseen"]) == unseen
        assert record["labelled"] < 0.1 * 400                # 10% of the seen classes' images only
    summary = (out / "summary.md").read_text()
    assert "Retrieval among unseen classes" in summary and "vs random" in summary
    assert "(paper)" not in summary
    assert (out / "transfer_map.png").is_file()
    # a seed-protocol sweep cannot write into this folder: the tables would mix protocols
    assert main(["evaluate", "--methods", "random", "--readouts", "probe", "--regimes", "10", "--seeds", "1",
                 "--pretrain-epochs", "1", "--probe-epochs", "3", "--limit", "400", "--device", "cpu",
                 "--data-dir", str(cifar_data_dir), "--out", str(out)]) != 0


def test_transfer_splits_relabel_each_half_from_zero(shared_splits):
    sets = ev.transfer_splits(shared_splits)
    classes = shared_splits["train"].classes
    for name in ("train", "val", "test"):
        assert sets[name].classes == classes[:5] and set(sets[name].labels.tolist()) == set(range(5))
    for name, source in (("db", "train"), ("queries", "test")):
        assert sets[name].classes == classes[5:] and set(sets[name].labels.tolist()) == set(range(5))
        # relabelled, not reordered: image i of the subset keeps its own class name
        original = shared_splits[source]
        keep = np.flatnonzero(original.labels.numpy() >= 5)
        assert torch.equal(sets[name].images, original.images[torch.from_numpy(keep)])
        assert [sets[name].classes[c] for c in sets[name].labels[:20]] == \
            [classes[c] for c in original.labels[torch.from_numpy(keep[:20])]]


def test_pretraining_curves_probe_the_validation_split_after_every_epoch(cifar_data_dir, shared_splits, tmp_path,
                                                                         monkeypatch, capsys):
    import hebb.finetune as finetune
    from retrieval.evaluation.curves import load_curves, needed_epochs

    probed = []
    real = finetune.fit_linear_head
    monkeypatch.setattr(finetune, "fit_linear_head",
                        lambda feats, labels, val_feats, *a, **k: probed.append((len(feats), len(val_feats)))
                        or real(feats, labels, val_feats, *a, **k))
    out = tmp_path / "curves"
    args = ["evaluate", "--curves", "--methods", "hpca", "--pretrain-epochs", "2", "--regimes", "10",
            "--probe-epochs", "2", "--limit", "300", "--device", "cpu", "--data-dir", str(cifar_data_dir),
            "--out", str(out)]
    assert main(args) == 0
    curve = load_curves(out)["curves"]["hpca"]
    assert [p["epoch"] for p in curve["points"]] == [1, 2]
    assert all(0.0 <= p["val_accuracy"] <= 1.0 and p["epoch_s"] > 0 for p in curve["points"])
    assert probed == [(curve["labelled"], 300)] * 2        # the 10% labels, scored on the validation split
    assert needed_epochs(curve["points"]) in (1, 2)
    assert (out / "pretraining_curves.png").is_file()

    def no_training(*a, **k):
        raise AssertionError("a finished curve was measured again")

    monkeypatch.setattr("hebb.recipes.pretrained_network", no_training)
    assert main(args) == 0                                  # finished: skipped
    with pytest.raises(AssertionError, match="measured again"):
        main(args[:5] + ["3"] + args[6:])                   # a longer curve is measured again, from epoch 1
    capsys.readouterr()
    assert main(args[:7] + ["5"] + args[8:]) == 2           # another regime cannot join these curves
    assert "other settings" in capsys.readouterr().err


def test_an_interrupted_vae_curve_continues_after_its_last_point(cifar_data_dir, tmp_path, monkeypatch):
    import hebb.finetune as finetune
    from hebb.baselines import VAE
    from retrieval.evaluation.curves import curve_progress, load_curves

    probed = []
    real_head, real_loss = finetune.fit_linear_head, VAE.loss
    monkeypatch.setattr(finetune, "fit_linear_head", lambda *a, **k: probed.append(1) or real_head(*a, **k))

    def killed_in_epoch_2(self, *a, **k):
        probed.append("batch")
        if probed.count("batch") == 2:            # 64 images, batch 64: the first batch of epoch 2
            raise KeyboardInterrupt
        return real_loss(self, *a, **k)

    monkeypatch.setattr(VAE, "loss", killed_in_epoch_2)
    out = tmp_path / "curves"
    args = ["evaluate", "--curves", "--methods", "vae", "--pretrain-epochs", "2", "--regimes", "10",
            "--probe-epochs", "2", "--batch-size", "64", "--limit", "64", "--device", "cpu",
            "--data-dir", str(cifar_data_dir), "--out", str(out)]
    assert main(args) == 130
    assert [p["epoch"] for p in load_curves(out)["curves"]["vae"]["points"]] == [1]
    assert curve_progress(out, "vae", 0).is_file()
    monkeypatch.setattr(VAE, "loss", real_loss)
    probed.clear()
    assert main(args) == 0
    assert probed == [1]                         # epoch 1's point is kept, only epoch 2 is probed
    assert [p["epoch"] for p in load_curves(out)["curves"]["vae"]["points"]] == [1, 2]
    assert not curve_progress(out, "vae", 0).exists()


def test_needed_epochs_is_the_first_within_half_a_point_of_the_best():
    from retrieval.evaluation.curves import needed_epochs

    points = [{"epoch": e, "val_accuracy": a} for e, a in ((1, 0.50), (2, 0.597), (3, 0.60), (4, 0.59))]
    assert needed_epochs(points) == 2
    assert needed_epochs([]) is None


_CURVE_SETTINGS = {"dataset": "cifar10", "regime": 10, "seed": 0, "limit": None, "probe_epochs": None,
                   "batch_size": None, "readout": "probe on the top layer, best validation accuracy"}


def _curves_folder(path, curves, settings=None, sessions=()):
    from hebb.runtime import write_json_atomic
    from retrieval.evaluation.curves import CURVES_FILE, CURVES_FORMAT

    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path / CURVES_FILE, {"format": CURVES_FORMAT, "settings": dict(_CURVE_SETTINGS, **(settings or {})),
                                           "created": "2026-01-01T00:00:00+00:00", "sessions": list(sessions),
                                           "curves": curves})


def _curve(accs, epochs=None):
    return {"layer": 5, "epochs": epochs or len(accs), "points": [{"epoch": e + 1, "val_accuracy": a} for e, a in enumerate(accs)]}


def test_merge_carries_finished_pretraining_curves_and_refuses_other_settings(tmp_path, capsys):
    from retrieval.evaluation.curves import load_curves

    main_dir, piece = tmp_path / "main", tmp_path / "piece"
    _folder(main_dir, {"sgd/r1/l5/s0": _record("sgd", 1.0, 5, 0, 0.4, 0.2, val=0.4)},
            {"sgd/s0": {"epochs": 0}, "hpca/s0": {"epochs": 1}})
    _curves_folder(main_dir, {"hpca": _curve([0.46, 0.48, 0.49]), "swta": _curve([0.43, 0.45])},
                   sessions=[{"started": "a", "command": "curves hpca,swta", "methods": ["hpca", "swta"]}])
    _curves_folder(piece, {"hpca": _curve([0.46, 0.48, 0.49, 0.50, 0.50]),   # longer: replaces the 3-epoch curve
                           "swta": _curve([0.40]),                           # shorter: the report's is kept
                           "vae": _curve([0.30], epochs=3)},                 # unfinished: not copied
                   sessions=[{"started": "b", "command": "curves hpca", "methods": ["hpca"]},
                             {"started": "c", "command": "curves vae", "methods": ["vae"]}])
    assert main(["evaluate", "--out", str(main_dir), "--merge-from", str(piece)]) == 0   # curves only, no cells
    assert "curves of hpca" in capsys.readouterr().out
    merged = load_curves(main_dir)
    assert [p["val_accuracy"] for p in merged["curves"]["hpca"]["points"]] == [0.46, 0.48, 0.49, 0.50, 0.50]
    assert len(merged["curves"]["swta"]["points"]) == 2 and "vae" not in merged["curves"]
    assert [s["command"] for s in merged["sessions"]] == ["curves hpca,swta", "curves hpca"]
    assert (main_dir / "pretraining_curves.png").is_file()
    summary = (main_dir / "summary.md").read_text()
    assert "| HPCA | 5 | 46.00 | 48.00 | 49.00 | 50.00 | 50.00 | 4 of 5 | 1 |" in summary
    assert "fewer epochs than their method's curve needs: HPCA (1 of the 4 epochs its curve needs, 4.0 " in summary

    other = tmp_path / "other"
    _folder(other, {"sgd/r5/l5/s0": _record("sgd", 5.0, 5, 0, 0.5, 0.2, val=0.5)}, {"sgd/s0": {"epochs": 0}})
    _curves_folder(other, {"wta": _curve([0.3])}, settings={"regime": 5})
    capsys.readouterr()
    assert main(["evaluate", "--out", str(main_dir), "--merge-from", str(other)]) == 2
    assert "other settings" in capsys.readouterr().err
    assert sorted(ev.load_results(main_dir)["runs"]) == ["sgd/r1/l5/s0"]      # refused before any cell joined
    assert main(["evaluate", "--out", str(main_dir), "--merge-from", str(tmp_path / "empty")]) == 2


def test_seeds_take_a_count_a_range_or_a_list(tmp_path, capsys):
    out = tmp_path / "piece"
    assert main(["evaluate", "--methods", "sgd", "--regimes", "10", "--seeds", "1-2", "--out", str(out),
                 "--status"]) == 0
    left = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if "left:" in line]
    assert left == ["sgd/r10/l5/s1", "sgd/r10/l5/s2"]        # seed 0 is another piece's
    assert main(["evaluate", "--methods", "sgd", "--regimes", "10", "--seeds", "4,2", "--out", str(out),
                 "--status"]) == 0
    assert [line.split()[-1] for line in capsys.readouterr().out.splitlines() if "left:" in line] == [
        "sgd/r10/l5/s4", "sgd/r10/l5/s2"]
    from retrieval.commands.evaluate import _seeds, _seeds_text
    assert [_seeds_text(_seeds(t)) for t in ("3", "2-4", "5,1", "0-1")] == ["3", "2-4", "5,1", "2"]
    for bad in ("0", "3-1", "1,1", "-2", "x", "1-"):
        with pytest.raises(SystemExit):
            main(["evaluate", "--methods", "sgd", "--seeds", bad, "--out", str(out), "--status"])
        assert "--seeds" in capsys.readouterr().err
