"""The second architecture, "conv10" (docs/NETWORKS.md#conv10): the reference's 10-layer net on 210x210 images.

Everything here runs on random or tiny data on the CPU: it checks shapes, plumbing and that learning moves the
weights, not what the network learns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hebb.baselines import VAE
from hebb.checkpoint import load_checkpoint, save_checkpoint
from hebb.errors import UserError
from hebb.network import BatchNormStar, build_network
from hebb.pretrain import pretrain
from retrieval.cli import main
from retrieval.features import FeatureExtractor

# The table of docs/NETWORKS.md#conv10 / the reference code: output of each feature layer for a 210x210 input.
SHAPES = {1: (96, 68, 68), 2: (128, 66, 66), 3: (192, 32, 32), 4: (192, 30, 30), 5: (256, 14, 14),
          6: (256, 12, 12), 7: (384, 5, 5), 8: (512, 3, 3), 9: (4096,)}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 210, 210), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_layer_shapes_match_the_reference_table(images, one_thread):
    net = build_network("conv10").eval()
    assert net.num_feature_layers == 9 and net.input_size == 210 and net.spec == "HHHHHHHHHG"
    outputs = {}
    for i, layer in enumerate(net.layers, start=1):
        layer.register_forward_hook(lambda module, inputs, out, i=i: outputs.__setitem__(i, out))
    x = images[:2].float() / 255
    with torch.no_grad():
        logits = net(x)
    assert tuple(logits.shape) == (2, 10)
    for layer, shape in SHAPES.items():
        assert net.feature_shape(layer) == shape
        assert tuple(outputs[layer].flatten(1).shape if layer == 9 else outputs[layer].shape) == (2, *shape)
    assert net.classifier.in_features == 4096
    assert tuple(net.first_layer_kernels().shape) == (96, 3, 7, 7)
    assert [isinstance(layer.bn, BatchNormStar) for layer in net.layers] == [False] * 6 + [True] * 3
    assert [layer.pool.kernel_size if layer.pool else 0 for layer in net.layers] == [3, 0, 2, 0, 2, 0, 2, 0, 0]
    assert all(getattr(layer.conv, "bias", None) is None for layer in net.layers)
    with pytest.raises(UserError, match="210x210"):
        net.features(torch.rand(1, 3, 32, 32))
    with pytest.raises(UserError, match=r"layer must be in 1\.\.9"):
        net.features(x, 10)


@pytest.mark.parametrize("kwargs, message", [
    (dict(spec="HHHHHG"), "10 letters"),
    (dict(spec="HHHHHHHHHX"), "10 letters from H, G, R"),
    (dict(cut_layer=10), r"layer must be in 1\.\.9"),
    (dict(rule="swta", zca=True), "cannot whiten its input with ZCA"),
])
def test_bad_requests_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        build_network("conv10", **kwargs)


def test_specs_and_zca_defaults():
    assert build_network("conv10", rule="sgd", cut_layer=1).spec == "G" * 10
    assert build_network("conv10", rule="random", cut_layer=1).spec == "R" * 9 + "G"
    assert build_network("conv10", spec="HGGGGGGGGH", cut_layer=1).classifier_kind == "H"
    for rule in ("swta", "wta"):  # whole-image ZCA (a 132,300² matrix) is off, unlike conv6
        net = build_network("conv10", rule=rule, cut_layer=1)
        assert not net.use_zca and net.zca_matrix.numel() == 0 and not net.config()["zca"]
    assert build_network("conv6", rule="swta").use_zca


def test_cut_keeps_the_lower_layers(images, one_thread):
    x = images[:2].float() / 255
    net = build_network("conv10", num_classes=5)
    assert net.cut(9) is net and net.num_feature_layers == 9
    net.eval()
    with torch.no_grad():
        assert tuple(net(x).shape) == (2, 5)
    net.cut(3, num_classes=7, classifier="H")
    assert net.num_feature_layers == 3 and net.cut_layer == 3 and net.spec[-1] == "H"
    assert net.classifier.in_features == 192 * 32 * 32
    with torch.no_grad():
        assert tuple(net.features(x).shape) == (2, 192, 32, 32)
        assert tuple(net(x).shape) == (2, 7)
    with pytest.raises(UserError, match=r"layer must be in 1\.\.3"):
        net.cut(4)


def test_hebbian_pretraining_step_moves_the_bottom_and_top_layers(images, one_thread):
    torch.manual_seed(0)
    net = build_network("conv10", rule="hpca")
    before = {i: net.layers[i - 1].conv.weight.detach().clone() for i in (1, 9)}
    stats = pretrain(net, images, epochs=1, batch_size=4, lr=1e-4, progress=False)
    assert stats["epochs"] == 1 and stats["images"] == 4
    for i, w in before.items():
        after = net.layers[i - 1].conv.weight.detach()
        assert torch.isfinite(after).all() and not torch.equal(w, after), f"layer {i}"


def test_checkpoint_round_trip_gives_identical_outputs(images, tmp_path, one_thread):
    torch.manual_seed(0)
    net = build_network("conv10", rule="swta", num_classes=3)
    net.fit_input(images)
    net.eval()
    x = images[:2].float() / 255
    save_checkpoint(tmp_path / "conv10.pt", net, {"stage": "pretrain"})
    again, meta = load_checkpoint(tmp_path / "conv10.pt")
    assert meta["network"]["arch"] == "conv10" and meta["input_size"] == 210 and not meta["network"]["zca"]
    with torch.no_grad():
        assert torch.equal(net(x), again(x))


def test_feature_extractor_follows_the_network(images, one_thread):
    net = build_network("conv10", cut_layer=3).eval()
    ext = FeatureExtractor(net, 3, batch_size=2)  # auto: 2x2 grid + PCA (flatten would be 196,608 floats)
    assert (ext.side, ext.pooling, ext.projection, ext.pooled_dim) == (210, "grid", "pca", 768)
    small = torch.nn.functional.interpolate(images.float(), size=64).to(torch.uint8)
    v = ext.fit(small).transform(small)  # 64x64 images, resized to 210x210 by the extractor
    assert v.shape == (4, 4) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


def test_vae_is_refused_with_a_clear_error():
    with pytest.raises(UserError, match="not built for .conv10."):
        VAE(build_network("conv10", rule="vae"))


def _tiny_folder(root, classes=("ants", "bees"), per_class=6):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")


def test_cli_pretrain_and_finetune_conv10(tmp_path, capsys, one_thread):
    _tiny_folder(tmp_path / "tiny")
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["data", "import", "tiny", str(tmp_path / "tiny"), *data]) == 0
    pre, fine = tmp_path / "pre.pt", tmp_path / "fine.pt"
    common = [*data, "--dataset", "tiny", "--device", "cpu"]
    assert main(["pretrain", "--arch", "conv10", "--rule", "hpca", "--limit", "4", "--epochs", "1",
                 "--batch-size", "4", "--out", str(pre), *common]) == 0
    assert "pretrained hpca (conv10 HHHHHHHHHG) on 4 images" in capsys.readouterr().out
    net, meta = load_checkpoint(pre)
    assert net.arch == "conv10" and meta["training"]["lr"] == 1e-4 and meta["classes"] == ["ants", "bees"]
    assert main(["finetune", "--init", str(pre), "--layer", "9", "--epochs", "1", "--regime", "100",
                 "--limit", "4", "--out", str(fine), *common]) == 0
    assert "fine-tuned hpca layer 9 on 4 labelled images" in capsys.readouterr().out
    net, meta = load_checkpoint(fine)
    assert net.arch == "conv10" and net.cut_layer == 9 and meta["training"]["weight_decay"] == 1e-3


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--from-scratch", "--arch", "conv10", "--layer", "10"], r"--layer must be in 1..9"),
    (["finetune", "--init", "{tmp}/x.pt", "--arch", "conv10"], "carries its own architecture"),
    (["pretrain", "--rule", "vae", "--arch", "conv10"], "is not built for 'conv10'"),
    (["pretrain", "--rule", "hpca", "--arch", "conv10", "--spec", "HHHHHG"], "10 letters"),
])
def test_cli_arch_errors_come_before_any_data(argv, message, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--data-dir", str(tmp_path / "none"), "--out",
                                                     str(tmp_path / "out.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hebbir: error:") and message in err and "\n" not in err
