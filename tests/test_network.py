"""The CIFAR 6-layer net (docs/NETWORKS.md#conv6), its H/G/R specs, cutting, and safe checkpoints."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn as nn

from hebb.checkpoint import file_checksum, load_checkpoint, read_checkpoint_meta, save_checkpoint
from hebb.errors import UserError
from hebb.layers import HebbConv2d
from hebb.network import BatchNormStar, build_network

CONV6_SHAPES = {1: (96, 14, 14), 2: (128, 12, 12), 3: (192, 5, 5), 4: (256, 3, 3), 5: (4096,)}


def test_feature_shapes_match_design():
    net = build_network().eval()
    x = torch.rand(2, 3, 32, 32)
    for layer, shape in CONV6_SHAPES.items():
        assert tuple(net.features(x, layer).shape) == (2, *shape)
        assert net.feature_shape(layer) == shape
    assert tuple(net(x).shape) == (2, 10)
    assert net.num_feature_layers == 5 and net.input_size == 32
    assert tuple(net.first_layer_kernels().shape) == (96, 3, 5, 5)
    # no bias anywhere in the feature layers, no padding (the shapes above), BN* on layers 3..5
    assert all(getattr(layer.conv, "bias", None) is None for layer in net.layers)
    assert [isinstance(layer.bn, BatchNormStar) for layer in net.layers] == [False, False, True, True, True]


def test_wrong_input_size_is_a_user_error():
    with pytest.raises(UserError, match="32x32"):
        build_network().features(torch.rand(1, 3, 64, 64), 1)


def test_specs_build_the_right_layer_kinds_and_train_the_right_parameters():
    torch.manual_seed(0)
    net = build_network(rule="hpca", spec="HRGGGG")
    assert isinstance(net.layers[0].conv, HebbConv2d) and net.layers[0].conv.rule == "hpca"
    assert isinstance(net.layers[1].conv, nn.Conv2d) and isinstance(net.layers[2].conv, nn.Conv2d)
    frozen = [p.detach().clone() for p in net.layers[1].parameters()]
    trained = net.layers[2].conv.weight.detach().clone()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net.train()
    loss = nn.functional.cross_entropy(net(torch.rand(8, 3, 32, 32)), torch.arange(8) % 10)
    loss.backward()
    assert all(p.grad is None for p in net.layers[1].parameters())  # R: frozen
    assert net.layers[2].conv.weight.grad is not None and net.layers[2].conv.weight.grad.abs().sum() > 0
    assert net.layers[0].conv.weight.grad is not None  # H layers are fine-tunable by backprop
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(frozen, net.layers[1].parameters()))
    assert not torch.equal(trained, net.layers[2].conv.weight)

    assert build_network(rule="sgd").spec == "GGGGGG"
    assert build_network(rule="vae").spec == "GGGGGG"
    random = build_network(rule="random")
    assert random.spec == "RRRRRG"
    assert not any(p.requires_grad for layer in random.layers for p in layer.parameters())
    assert all(p.requires_grad for p in random.classifier.parameters())
    swta = build_network(rule="swta")
    assert swta.use_zca and all(isinstance(layer.conv, HebbConv2d) for layer in swta.layers)
    assert not build_network(rule="hpca").use_zca


@pytest.mark.parametrize("kwargs, message", [
    (dict(spec="HHX"), "6 letters"),
    (dict(spec="HHHHHX"), "6 letters from H, G, R"),
    (dict(rule="sgd", spec="HGGGGG"), "not one of"),
    (dict(rule="oja"), "unknown rule"),
    (dict(arch="resnet"), "unknown architecture"),
    (dict(cut_layer=6), "layer must be in 1..5"),
])
def test_bad_network_requests_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        build_network(**kwargs)


def test_bn_star_keeps_each_channels_relative_variance():
    bn = BatchNormStar(2).eval()
    bn.running_var.copy_(torch.tensor([1.0, 4.0]))
    x = torch.randn(20000, 2, 1, 1) * torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    with torch.no_grad():
        out = bn(x)
    # normalised on average, but channel 2 keeps twice the spread of channel 1
    ratio = out[:, 1].std() / out[:, 0].std()
    assert ratio == pytest.approx(2.0, rel=0.03)
    assert out.var(dim=0).mean() == pytest.approx(1.0, rel=0.05)


def test_cut_drops_upper_layers_and_puts_a_fresh_classifier():
    net = build_network(num_classes=10).cut(2, num_classes=7)
    x = torch.rand(3, 3, 32, 32)
    assert net.num_feature_layers == 2 and net.cut_layer == 2
    assert net.classifier.in_features == 128 * 12 * 12
    assert tuple(net.eval()(x).shape) == (3, 7)
    with pytest.raises(UserError, match="1..2"):
        net.features(x, 3)


def _nontrivial_net() -> torch.nn.Module:
    torch.manual_seed(1)
    net = build_network(rule="swta", cut_layer=4)  # with ZCA buffers
    with torch.no_grad():  # arbitrary input statistics (fitting a real ZCA takes long on a CPU)
        net.input_mean.uniform_(0.3, 0.6)
        net.zca_matrix.add_(torch.randn_like(net.zca_matrix) * 1e-3)
        net.zca_mean.normal_()
    net.train()
    with torch.no_grad():
        net(torch.rand(16, 3, 32, 32))  # moves the BN running statistics
    return net.eval()


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    net = _nontrivial_net()
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, net, {"classes": ["a", "b"], "training": {"lr": 1e-3}})
    loaded, meta = load_checkpoint(path)
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(loaded(x), net(x))
    assert torch.equal(loaded.features(x, 2), net.features(x, 2))
    assert not loaded.training
    assert meta["classes"] == ["a", "b"] and meta["training"] == {"lr": 1e-3}
    assert meta["network"] == net.config() and meta["format_version"] == 1
    assert read_checkpoint_meta(path)["network"]["cut_layer"] == 4
    assert file_checksum(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary files left


def test_checkpoint_rejects_garbage_foreign_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 8)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "hebbir-checkpoint", "obj": nn.Linear(2, 2)}, pickled)  # a module: refused unpickled
    for path, message in [(garbage, "not a readable"), (empty, "not a readable"), (foreign, "not a hebbir"),
                          (pickled, "not a readable"), (tmp_path / "missing.pt", "no such")]:
        with pytest.raises(UserError, match=message):
            load_checkpoint(path)


def test_checkpoint_with_mismatched_weights_is_a_user_error(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_network(cut_layer=1), {})
    blob = torch.load(path, weights_only=True)
    meta = json.loads(blob["meta"])
    meta["network"]["cut_layer"] = 2  # claims a layer the weights do not have
    blob["meta"] = json.dumps(meta)
    torch.save(blob, path)
    with pytest.raises(UserError, match="do not match"):
        load_checkpoint(path)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    net = build_network(cut_layer=1)
    save_checkpoint(path, net, {"classes": ["x"]})
    before = path.read_bytes()
    with pytest.raises(UserError, match="JSON"):
        save_checkpoint(path, net, {"bad": object()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
