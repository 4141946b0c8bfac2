"""The Hebbian (teacher-signal) classifier: its rule, its place in the network, and learning on CIFAR-10."""

from __future__ import annotations

import pytest
import torch

from hebb import rules
from hebb.checkpoint import load_checkpoint, save_checkpoint
from hebb.data import regime_indices
from hebb.finetune import accuracy, finetune, train_hebbian_classifier
from hebb.network import HebbianClassifier, build_network
from hebb.pretrain import recalibrate_batchnorm
from retrieval.cli import main


@pytest.mark.parametrize("rule, reference", [("hpca", rules.hpca_delta_reference),
                                             ("swta", rules.swta_delta_reference),
                                             ("wta", rules.wta_delta_reference)])
def test_update_is_the_rule_with_the_one_hot_teacher(rule, reference, one_thread):
    torch.manual_seed(0)
    head = HebbianClassifier(40, 5, rule=rule)
    x, labels = torch.randn(33, 40), torch.randint(0, 5, (33,))
    dw = head.hebbian_delta(x, labels)
    expected = reference(x, head.weight.detach(), y=torch.nn.functional.one_hot(labels, 5).float())
    assert dw.shape == (5, 40)
    assert ((dw - expected).norm() / expected.norm()).item() < 1e-4


@pytest.mark.parametrize("rule", ["swta", "wta"])
def test_one_full_step_puts_every_class_vector_on_its_class_mean(rule, one_thread):
    torch.manual_seed(1)
    head = HebbianClassifier(8, 3, rule=rule)
    x, labels = torch.randn(30, 8), torch.arange(30) % 3
    head.weight.add_(head.hebbian_delta(x, labels))  # lr 1
    means = torch.stack([x[labels == c].mean(0) for c in range(3)])
    torch.testing.assert_close(head.weight.detach(), means, rtol=1e-5, atol=1e-6)
    # logits are scalar products with the unit class vectors: the nearest mean by angle wins
    logits = head(x)
    torch.testing.assert_close(logits, x @ (means / means.norm(dim=1, keepdim=True)).T, rtol=1e-5, atol=1e-5)


def test_a_class_absent_from_the_batch_keeps_its_vector_under_the_wta_rules(one_thread):
    head = HebbianClassifier(6, 4, rule="swta")
    before = head.weight.detach().clone()
    dw = head.hebbian_delta(torch.randn(10, 6), torch.zeros(10, dtype=torch.long))
    assert torch.equal(dw[1:], torch.zeros_like(dw[1:])) and not torch.equal(dw[0], torch.zeros(6))
    assert torch.equal(head.weight.detach(), before)  # hebbian_delta only computes


def test_spec_h_classifier_builds_has_no_gradient_and_survives_a_checkpoint(tmp_path):
    net = build_network(rule="hpca", spec="HHHHHH").eval()
    assert isinstance(net.classifier, HebbianClassifier) and net.classifier.rule == "hpca"
    assert net.classifier_kind == "H" and not net.classifier.weight.requires_grad
    assert isinstance(build_network(rule="sgd", spec="GGGGGH").classifier, HebbianClassifier)  # 2019 Table 2
    assert build_network(rule="sgd", spec="GGGGGH").classifier.rule == "swta"
    x = torch.rand(3, 3, 32, 32)
    save_checkpoint(tmp_path / "h.pt", net, {"stage": "test"})
    loaded, _ = load_checkpoint(tmp_path / "h.pt")
    assert loaded.spec == "HHHHHH" and isinstance(loaded.classifier, HebbianClassifier)
    torch.testing.assert_close(loaded.eval()(x), net(x))
    # a cut can switch the read-out either way
    net.cut(3, classifier="G")
    assert net.spec == "HHHHHG" and isinstance(net.classifier, torch.nn.Linear) and net.cut_layer == 3
    net.cut(3, classifier="H")
    assert net.spec == "HHHHHH" and net.classifier.in_features == 192 * 5 * 5


@pytest.fixture(scope="module")
def labelled(cifar_splits):
    """2,000 labelled training images (5%) and 500 validation images, stratified."""
    train, val = cifar_splits["train"], cifar_splits["val"]
    return (train.subset(regime_indices(train.labels, 5, seed=0)),
            val.subset(regime_indices(val.labels, 5, seed=0)))


def _random_trunk(train_images, layer):
    torch.manual_seed(0)
    net = build_network(rule="random", cut_layer=layer)
    net.fit_input(train_images)
    recalibrate_batchnorm(net, train_images)
    return net


def test_hebbian_classifier_learns_cifar_in_one_epoch_and_leaves_the_trunk_alone(labelled, one_thread):
    train, val = labelled
    net = _random_trunk(train.images, layer=3)
    trunk = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("classifier")}
    net, stats = train_hebbian_classifier(net, train, val, layer=3, epochs=2, progress=False)
    assert net.classifier_kind == "H" and stats["classifier"] == "hebbian" and len(stats["history"]) == 2
    # 10 classes: chance is 10%; nearest class mean on random conv features of 2,000 images gets well above it
    assert stats["val_acc"] > 0.2
    assert accuracy(net, val.images, val.labels)["top1"] == pytest.approx(stats["val_acc"])
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in trunk.items())
    # the best epoch's classifier is kept, and a second run with the same seed gives the same weights
    net2, _ = train_hebbian_classifier(_random_trunk(train.images, 3), train, val, layer=3, epochs=2,
                                       progress=False)
    assert torch.equal(net2.classifier.weight, net.classifier.weight)


def test_backprop_finetuning_swaps_a_hebbian_head_for_a_linear_one(labelled, one_thread):
    train, val = labelled
    net = build_network(rule="hpca", spec="HHHHHH", cut_layer=1)
    net, stats = finetune(net, train.subset(torch.arange(200)), None, layer=1, epochs=1, progress=False)
    assert net.classifier_kind == "G" and isinstance(net.classifier, torch.nn.Linear)


def test_cli_hebbian_classifier_and_its_one_line_errors(cifar_data_dir, tmp_path, capsys):
    out = tmp_path / "h.pt"
    common = ["--data-dir", str(cifar_data_dir), "--device", "cpu", "--layer", "2", "--regime", "2",
              "--limit", "300"]
    assert main(["finetune", "--from-random", "--classifier", "hebbian", "--out", str(out), *common]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("fine-tuned a Hebbian classifier on random layer 2") and "2 epochs" in line
    net, meta = load_checkpoint(out)
    assert meta["classifier"] == "hebbian" and meta["training"]["lr"] == 0.1 and net.spec == "RRRRRH"
    for extra, message in [(["--from-scratch"], "cannot train one from scratch"),
                           (["--from-random", "--augment"], "takes neither")]:
        assert main(["finetune", *extra, "--classifier", "hebbian", "--out", str(tmp_path / "x.pt"),
                     *common]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("hebbir: error:") and message in err and "\n" not in err
