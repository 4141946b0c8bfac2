"""Feature extractors: poolings, PCA, normalisation, determinism, restoring from an index's config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hebb.errors import UserError
from hebb.network import build_network
from hebb.architectures import ARCHITECTURES
from retrieval.features import FeatureExtractor, append_head, fit_pca


@pytest.fixture(scope="module")
def net_and_images(cifar_splits):
    torch.manual_seed(0)
    net = build_network(arch="conv6", rule="hpca")
    images = cifar_splits["train"].images[::500][:80]  # 80 images across the classes
    net.fit_input(images)
    return net.eval(), images


@pytest.mark.parametrize("pooling, pooled_dim", [("avg", 192), ("max", 192), ("avgmax", 384), ("grid", 768),
                                                 ("flatten", 4800)])
def test_pooling_sizes_and_unit_rows(net_and_images, pooling, pooled_dim):
    net, images = net_and_images
    ext = FeatureExtractor(net, 3, pooling=pooling, projection="none", device="cpu", batch_size=32)
    v = ext.transform(images[:40])
    assert ext.pooled_dim == pooled_dim and v.shape == (40, pooled_dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_pca_projection_is_deterministic_and_batch_independent(net_and_images):
    net, images = net_and_images
    a = FeatureExtractor(net, 4, pooling="flatten", projection="pca", dim=24, batch_size=64).fit(images)
    b = FeatureExtractor(net, 4, pooling="flatten", projection="pca", dim=24, batch_size=7).fit(images)
    va, vb = a.transform(images), b.transform(images)
    assert va.shape == (80, 24) and a.dim == 24
    np.testing.assert_allclose(va, vb, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(va, axis=1), 1.0, atol=1e-5)
    # the PCA keeps the neighbourhoods: the nearest neighbour of most images is unchanged from the raw features
    raw = FeatureExtractor(net, 4, pooling="flatten", projection="none").transform(images)
    nn_raw = np.argsort(-(raw @ raw.T), axis=1)[:, 1]
    nn_pca = np.argsort(-(va @ va.T), axis=1)[:, 1]
    assert (nn_raw == nn_pca).mean() > 0.6


def test_restoring_from_config_gives_the_same_vectors(net_and_images):
    net, images = net_and_images
    ext = FeatureExtractor(net, 2, pooling="grid", projection="pcaw", dim=16).fit(images)
    again = FeatureExtractor.from_config(net, ext.config(), ext.state_arrays())
    np.testing.assert_allclose(ext.transform(images[:10]), again.transform(images[:10]), atol=1e-5)
    assert again.config() == ext.config()


def test_auto_defaults_and_bad_settings(net_and_images):
    net, _ = net_and_images
    for layer, (pooling, projection, dim) in ARCHITECTURES["conv6"].reductions.items():
        ext = FeatureExtractor(net, layer)
        assert (ext.pooling, ext.projection, ext.dim) == (pooling, projection, dim or ext.pooled_dim)
    with pytest.raises(UserError, match="too large to index raw"):
        FeatureExtractor(net, 1, pooling="flatten", projection="none")  # 18,816 floats
    with pytest.raises(UserError, match="layer"):
        FeatureExtractor(net, 6)
    with pytest.raises(UserError, match="pooling"):
        FeatureExtractor(net, 2, pooling="median")


def test_randomised_pca_matches_exact_pca():
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(400, 12, generator=g) @ torch.randn(12, 1500, generator=g)
    x = low_rank * torch.linspace(2, 1, 1500) + 0.01 * torch.randn(400, 1500, generator=g)
    randomised = fit_pca(x, 12)["components"].double()  # D > 1024: randomised subspace iteration
    xc = (x - x.mean(0)).double()
    exact = torch.linalg.svd(xc, full_matrices=False).Vh[:12]
    overlap = (randomised @ exact.T).pow(2).sum() / 12  # 1 when the subspaces coincide
    assert overlap > 0.999


def test_the_read_out_head_shapes_the_ranking(cifar_splits):
    """Appending a probe head's class probabilities (`head_weight`) retrieves more same-class images than the
    frozen layer's features alone, on real images the head never saw; the vectors stay unit rows, the same from
    images as from cached activations, an index's config restores them exactly, and a layer the head does not
    read is refused."""
    from hebb.finetune import extract_features, fit_linear_head
    from retrieval.evaluation.metrics import rank_database

    train, test = cifar_splits["train"], cifar_splits["test"]
    torch.manual_seed(0)
    net = build_network(arch="conv6", rule="random")
    labelled, database = train.subset(np.arange(0, 40000, 20)), train.subset(np.arange(10, 40000, 40))
    queries = test.subset(np.arange(0, 10000, 40))  # the splits are sorted by class: strides take every class
    net.fit_input(labelled.images)
    net.cut(3, classifier="G").eval()
    head, _ = fit_linear_head(extract_features(net, labelled.images, 3), labelled.labels, None, None, 10,
                              epochs=20, progress=False)
    net.classifier.load_state_dict(head.state_dict())
    acts_db, acts_q = (extract_features(net, s.images, 3) for s in (database, queries))

    def map100(weight: float) -> tuple[float, FeatureExtractor]:
        ext = FeatureExtractor(net, 3, head_weight=weight).fit_activations(acts_db)
        ranking = rank_database(ext.transform_activations(acts_q), ext.transform_activations(acts_db),
                                queries.labels.numpy(), database.labels.numpy())
        return ranking.summary()["map@100"], ext

    trunk, plain = map100(0.0)
    with_head, ext = map100(1.0)
    assert with_head > 1.3 * trunk, (trunk, with_head)
    assert ext.dim == plain.dim + 10 and "head_weight" not in plain.config()
    v = ext.transform(queries.images[:20])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ext.transform_activations(acts_q[:20]), v, atol=1e-5)
    again = FeatureExtractor.from_config(net, ext.config(), ext.state_arrays())
    np.testing.assert_allclose(again.transform(queries.images[:20]), v, atol=1e-5)
    vectors, probs = ext.transform_with_probs(queries.images[:20])   # both retrievals from one pass
    np.testing.assert_allclose(vectors, plain.transform(queries.images[:20]), atol=1e-5)
    np.testing.assert_allclose(append_head(vectors, probs, 1.0), v, atol=1e-5)
    with pytest.raises(UserError, match="reads layer 3"):
        FeatureExtractor(net, 2).transform_with_probs(queries.images[:2])
    with pytest.raises(UserError, match="reads layer 3"):
        FeatureExtractor(net, 2, head_weight=1.0)
    with pytest.raises(UserError, match="0 or more"):
        FeatureExtractor(net, 3, head_weight=-1.0)
