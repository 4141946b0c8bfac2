"""Pre-training, fine-tuning, probes, baselines and the `pretrain` / `finetune` commands on small CIFAR slices."""

from __future__ import annotations

import pytest
import torch

from hebb.baselines import VAE, vae_pretrain, vae_progress
from hebb.checkpoint import load_checkpoint
from hebb.data import regime_indices
from hebb.errors import UserError
from hebb.finetune import accuracy, augment_batch, finetune, fit_linear_head, head_accuracy, reference_lr
from hebb.network import build_network
from hebb.pretrain import pretrain
from retrieval.cli import main


@pytest.fixture(scope="module")
def small(cifar_splits):
    """1,000 labelled training images and 500 validation images, stratified (CIFAR splits are class-ordered)."""
    train, val = cifar_splits["train"], cifar_splits["val"]
    return (train.subset(regime_indices(train.labels, 2.5, seed=0)),
            val.subset(regime_indices(val.labels, 5, seed=0)))


def _pretrained(images, seed=0, **kwargs):
    torch.manual_seed(seed)
    net = build_network(rule="hpca", cut_layer=2)
    stats = pretrain(net, images, epochs=1, seed=seed, progress=False, **kwargs)
    return net, stats


def test_pretraining_changes_weights_keeps_them_finite_and_is_reproducible(small):
    images = small[0].images[:256]
    torch.manual_seed(0)
    before = [conv.weight.detach().clone() for _, conv in build_network(rule="hpca", cut_layer=2).hebbian_modules()]
    net, stats = _pretrained(images)
    after = [conv.weight.detach() for _, conv in net.hebbian_modules()]
    for b, a in zip(before, after):
        assert torch.isfinite(a).all()
        assert (a - b).norm() > 1e-3 * b.norm()  # every Hebbian layer learned
    assert stats["epochs"] == 1 and stats["images"] == 256 and stats["images_per_s"] > 0
    # BN running statistics were measured with the final weights (not left at their initial 0 / 1)
    assert not torch.allclose(net.layers[1].bn.running_var, torch.ones(128))
    again, _ = _pretrained(images)
    assert all(torch.equal(a, b) for a, b in zip(after, [c.weight for _, c in again.hebbian_modules()]))
    other, _ = _pretrained(images, seed=1)
    assert not torch.equal(after[0], other.hebbian_modules()[0][1].weight)


def test_divergence_stops_with_layer_and_epoch_and_keeps_finite_weights(small):
    torch.manual_seed(0)
    net = build_network(rule="hpca", cut_layer=1)
    with pytest.raises(UserError, match=r"layer 1 .*epoch 1"):
        pretrain(net, small[0].images[:256], lr=1e12, progress=False)
    assert torch.isfinite(net.layers[0].conv.weight).all()


def test_pretraining_a_net_without_hebbian_layers_is_a_user_error(small):
    with pytest.raises(UserError, match="no Hebbian"):
        pretrain(build_network(rule="sgd"), small[0].images[:8], progress=False)


def test_finetuning_beats_chance_and_keeps_the_best_epoch(small):
    train, val = small[0].subset(range(0, 1000, 2)), small[1]  # 50 per class
    torch.manual_seed(0)
    net = build_network(rule="hpca")
    net.fit_input(train.images)
    net, stats = finetune(net, train, val, layer=1, epochs=3, lr=1e-2, seed=0, progress=False)
    assert net.cut_layer == 1 and net.num_feature_layers == 1
    assert stats["val_acc"] > 0.2  # chance is 0.1
    assert stats["val_acc"] == max(h["val_acc"] for h in stats["history"])
    # the returned weights are the best epoch's: evaluating them again gives the recorded accuracy
    assert accuracy(net, val.images, val.labels, topk=(1,))["top1"] == pytest.approx(stats["val_acc"])
    assert len(stats["epoch_times_s"]) == 3 and stats["time_s"] > 0
    assert [h["lr"] for h in stats["history"]] == [1e-2, 1e-2, 5e-3]


def test_reference_schedule_halves_every_epoch_in_the_second_half():
    lrs = [reference_lr(e, 20, 1e-3) for e in range(20)]
    assert lrs[:10] == [1e-3] * 10
    assert lrs[10] == 5e-4 and lrs[19] == pytest.approx(1e-3 / 1024)


def test_augmentation_flips_and_translates_whole_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    flipped = augment_batch(x, g, pad=0)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and 10 < same.sum() < 54
    shifted = augment_batch(x, g, pad=2)
    assert shifted.shape == x.shape
    # the centre 28x28 of every output is a shifted (maybe mirrored) copy of the input
    found = 0
    for i in range(64):
        for src in (x[i], x[i].flip(2)):
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    if torch.equal(shifted[i, :, 2:30, 2:30], src[:, 2 + dy:30 + dy, 2 + dx:30 + dx]):
                        found += 1
                        break
                else:
                    continue
                break
            else:
                continue
            break
    assert found == 64


def test_vae_pretraining_runs_and_decodes_to_images(small):
    torch.manual_seed(0)
    net = build_network(rule="vae")
    vae = VAE(net)
    assert tuple(vae.decoder(torch.randn(2, 256)).shape) == (2, 3, 32, 32)
    before = net.layers[0].conv.weight.detach().clone()
    stats = vae_pretrain(net, small[0].images[:32], epochs=1, batch_size=16, progress=False)
    assert stats["epochs"] == 1 and stats["history"][0]["loss"] > 0
    assert not torch.equal(before, net.layers[0].conv.weight)
    with pytest.raises(UserError, match="trainable by backprop"):
        VAE(build_network(rule="hpca"))


def _loss_interrupted_at_call(n):
    """VAE.loss that raises KeyboardInterrupt (a kill) on its n-th call, and is the real loss before it."""
    real_loss, calls = VAE.loss, []

    def loss(self, *a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_loss(self, *a, **kw)

    return loss


def test_an_interrupted_vae_pretraining_resumes_to_the_same_network(small, tmp_path):
    images, progress = small[0].images[:48], tmp_path / "vae.progress.pt"

    def fresh():
        torch.manual_seed(0)
        return build_network(rule="vae")

    straight = fresh()
    whole = vae_pretrain(straight, images, epochs=2, batch_size=16, progress=False)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VAE, "loss", _loss_interrupted_at_call(4))   # the first batch of epoch 2 (3 per epoch)
        with pytest.raises(KeyboardInterrupt):
            vae_pretrain(fresh(), images, epochs=2, batch_size=16, progress=False, resume=progress)
    assert vae_progress(progress) == {"epoch": 1, "epochs": 2, "epoch_times_s": [pytest.approx(0, abs=60)]}
    with pytest.raises(UserError, match="other settings.*epochs 2 -> 3"):
        vae_pretrain(fresh(), images, epochs=3, batch_size=16, progress=False, resume=progress)
    with pytest.raises(UserError, match="other settings.*fingerprint"):
        vae_pretrain(fresh(), images.flip(0), epochs=2, batch_size=16, progress=False, resume=progress)

    resumed = fresh()
    stats = vae_pretrain(resumed, images, epochs=2, batch_size=16, progress=False, resume=progress)
    assert stats["resumed_at_epoch"] == 1 and stats["epochs"] == 2 and len(stats["epoch_times_s"]) == 2
    assert stats["history"] == whole["history"]  # epoch 1 from the file, epoch 2 trained again: same losses
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert not progress.exists() and vae_progress(progress) is None  # a finished training leaves no file


def test_cli_vae_pretraining_continues_after_an_interruption(cifar_data_dir, tmp_path, monkeypatch, capsys):
    args = ["pretrain", "--rule", "vae", "--limit", "32", "--epochs", "2", "--batch-size", "16",
            "--data-dir", str(cifar_data_dir), "--device", "cpu", "--seed", "0"]
    assert main([*args, "--out", str(tmp_path / "straight.pt")]) == 0
    out = tmp_path / "resumed.pt"
    real_loss = VAE.loss
    monkeypatch.setattr(VAE, "loss", _loss_interrupted_at_call(3))   # the first batch of epoch 2 (2 per epoch)
    assert main([*args, "--out", str(out)]) != 0
    assert vae_progress(tmp_path / "resumed.pt.progress")["epoch"] == 1
    monkeypatch.setattr(VAE, "loss", real_loss)
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 0
    assert "resuming VAE pre-training after epoch 1/2" in capsys.readouterr().err
    (a, meta), (b, _) = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(out)
    assert meta["epochs_done"] == 2 and not (tmp_path / "resumed.pt.progress").exists()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_cli_pretrain_and_finetune_end_to_end(cifar_data_dir, tmp_path, capsys):
    pre, fine = tmp_path / "pre.pt", tmp_path / "fine.pt"
    common = ["--data-dir", str(cifar_data_dir), "--device", "cpu", "--seed", "0"]
    assert main(["pretrain", "--rule", "hpca", "--spec", "HGGGGG", "--limit", "256", "--epochs", "1",
                 "--out", str(pre), *common]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("pretrained hpca") and "images/s" in line and "\n" not in line
    net, meta = load_checkpoint(pre)
    assert meta["stage"] == "pretrain" and meta["network"]["spec"] == "HGGGGG" and len(meta["classes"]) == 10
    assert main(["finetune", "--init", str(pre), "--regime", "2", "--layer", "1", "--limit", "200",
                 "--epochs", "2", "--lr", "1e-2", "--out", str(fine), *common]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("fine-tuned hpca layer 1") and "best val acc" in line and "test acc" in line
    net, meta = load_checkpoint(fine)
    assert meta["stage"] == "finetune" and meta["layer"] == 1 and net.cut_layer == 1
    assert meta["init"]["sha256"] and 0 <= meta["metrics"]["val_acc"] <= 1


@pytest.mark.parametrize("start, method", [("--from-scratch", "sgd"), ("--from-random", "random")])
def test_cli_finetune_baselines(start, method, cifar_data_dir, tmp_path, capsys):
    out = tmp_path / "b.pt"
    assert main(["finetune", start, "--layer", "1", "--regime", "1", "--limit", "100", "--epochs", "1",
                 "--out", str(out), "--data-dir", str(cifar_data_dir), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"fine-tuned {method} layer 1 on 100 labelled images")
    net, meta = load_checkpoint(out)
    assert meta["method"] == method and net.spec == ("GGGGGG" if method == "sgd" else "RRRRRG")


def _badly_scaled_features(n, seed):
    """Two informative dimensions drowned in 50 dimensions of large, offset, uninformative features."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    signal = (labels.float() * 2 - 1)[:, None] * 0.05 + 0.02 * torch.randn(n, 2, generator=g)
    noise = 300.0 + 100.0 * torch.randn(n, 50, generator=g)
    return torch.cat([signal, noise], 1), labels


def test_standardised_probe_learns_badly_scaled_features_and_folds_into_a_raw_head():
    feats, labels = _badly_scaled_features(2000, seed=0)
    val_feats, val_labels = _badly_scaled_features(500, seed=1)
    common = dict(num_classes=2, epochs=5, progress=False, seed=0)
    raw, raw_stats = fit_linear_head(feats, labels, val_feats, val_labels, **common)
    std, std_stats = fit_linear_head(feats, labels, val_feats, val_labels, standardize=True, **common)
    assert std_stats["val_acc"] > 0.95 > raw_stats["val_acc"] + 0.2
    # the returned head takes raw features: the accuracy it reported is the one it has on them
    assert head_accuracy(std, val_feats, val_labels) == pytest.approx(std_stats["val_acc"])
    assert isinstance(std, torch.nn.Linear) and std.in_features == feats.shape[1]


def test_a_probe_trained_on_flips_classifies_mirrored_images_too():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (2000,), generator=g)
    sign = (labels.float() * 2 - 1)[:, None]
    noise = lambda: 0.3 * torch.randn(2000, 2, generator=g)
    # feature 0 shows an image's class, and the opposite in its mirror image; feature 1 shows the class in
    # the mirror image only
    feats, mirrored = torch.cat([sign, 0 * sign], 1) + noise(), torch.cat([-sign, sign], 1) + noise()
    common = dict(num_classes=2, epochs=5, lr=0.05, progress=False, seed=0)
    plain, _ = fit_linear_head(feats[:1500], labels[:1500], None, None, **common)
    flipped, _ = fit_linear_head(feats[:1500], labels[:1500], None, None, mirrored=mirrored[:1500], **common)
    assert head_accuracy(plain, mirrored[1500:], labels[1500:]) < 0.3      # it never saw a mirror image
    assert head_accuracy(flipped, mirrored[1500:], labels[1500:]) > 0.85   # it learned from the mirrors
    # mirrors that are the images themselves change nothing: the flips draw from their own generator
    same, _ = fit_linear_head(feats[:1500], labels[:1500], None, None, mirrored=feats[:1500], **common)
    assert torch.equal(same.weight, plain.weight)
    with pytest.raises(UserError, match="one row per image"):
        fit_linear_head(feats, labels, None, None, mirrored=mirrored[:10], **common)


def test_cli_probe_std_readout_trains_a_head_on_a_random_trunk(cifar_data_dir, tmp_path, capsys):
    out = tmp_path / "p.pt"
    assert main(["finetune", "--from-random", "--readout", "probe-std", "--layer", "2", "--regime", "1",
                 "--limit", "200", "--epochs", "3", "--out", str(out), "--data-dir", str(cifar_data_dir),
                 "--device", "cpu"]) == 0
    assert "a linear probe (standardised features) on random" in capsys.readouterr().out
    net, meta = load_checkpoint(out)
    assert meta["readout"] == "probe-std" and net.cut_layer == 2
    assert main(["finetune", "--from-random", "--readout", "probe-flip", "--layer", "2", "--regime", "1",
                 "--limit", "200", "--epochs", "3", "--out", str(out), "--data-dir", str(cifar_data_dir),
                 "--device", "cpu"]) == 0
    assert "a linear probe (random horizontal flips) on random" in capsys.readouterr().out
    assert load_checkpoint(out)[1]["readout"] == "probe-flip"


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--rule", "oja"], "unknown rule 'oja'"),
    (["finetune", "--init", "{tmp}/missing.pt"], "no such checkpoint"),
    (["finetune", "--init", "{tmp}/garbage.pt"], "not a readable hebbir checkpoint"),
    (["finetune", "--from-scratch", "--regime", "150"], "regime must be a percentage"),
    (["finetune", "--from-scratch", "--layer", "6"], "layer must be in 1..5"),
    (["pretrain", "--rule", "hpca", "--data-dir", "{tmp}/empty"], "not in"),
])
def test_cli_bad_input_gives_a_one_line_error(argv, message, tmp_path, capsys):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--out", str(tmp_path / "out.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hebbir: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out.pt").exists()
