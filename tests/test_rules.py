"""The fast Hebbian rules equal their per-sample reference twins, stay memory-bounded, and learn what they should."""

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from hebb import rules
from hebb.errors import UserError

FAST = {"hpca": rules.hpca_delta, "swta": rules.swta_delta, "wta": rules.wta_delta}
REFERENCE = {"hpca": rules.hpca_delta_reference, "swta": rules.swta_delta_reference,
             "wta": rules.wta_delta_reference}
SHAPES = [(300, 16, 27), (32, 200, 50), (500, 96, 75), (7, 130, 40), (1, 5, 3)]  # (N, M, D)


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def random_case(n, m, d, nonnegative=False):
    x = torch.randn(n, d)
    if nonnegative:  # patches after a ReLU, some all zero
        x = x.relu()
        x[::5] = 0
    return x, torch.randn(m, d) / d ** 0.5


@pytest.mark.parametrize("rule", FAST)
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_rule_equals_reference(rule, shape):
    x, w = random_case(*shape)
    ref = REFERENCE[rule](x, w)
    dw = FAST[rule](x, w)
    assert dw.shape == w.shape and dw.dtype == w.dtype
    assert rel_err(dw, ref) < 1e-4


@pytest.mark.parametrize("rule", FAST)
def test_fast_rule_handles_zero_patches(rule):
    x, w = random_case(200, 24, 18, nonnegative=True)
    dw = FAST[rule](x, w)
    assert torch.isfinite(dw).all()
    assert rel_err(dw, REFERENCE[rule](x, w)) < 1e-4


@pytest.mark.parametrize("shape", [(32, 200, 50), (500, 96, 75), (3, 300, 20)])
@pytest.mark.parametrize("form, block_size", [("reference", None), ("blocked", None), ("blocked", 7)])
def test_both_hpca_forms_equal_reference(shape, form, block_size):
    x, w = random_case(*shape)
    dw = rules.hpca_delta(x, w, form=form, block_size=block_size)
    assert rel_err(dw, rules.hpca_delta_reference(x, w)) < 1e-4


def test_hpca_picks_the_cheaper_form():
    assert rules.hpca_prefers_blocked(64, 4096, 2304)  # the 4096-unit FC layer: N·M·D << M²·D
    assert not rules.hpca_prefers_blocked(64 * 28 * 28, 96, 75)  # layer 1: many patches, few kernels
    reference, blocked = rules.hpca_costs(64, 4096, 2304)
    assert blocked * 10 < reference


@pytest.mark.parametrize("rule", FAST)
def test_chunking_over_rows_changes_nothing(rule):
    x, w = random_case(1000, 40, 30)
    whole = FAST[rule](x, w)
    chunked = FAST[rule](x, w, chunk_elements=40 * 37)  # 37 rows per chunk, last chunk ragged
    assert rel_err(chunked, whole) < 1e-5
    if rule == "hpca":
        chunked = rules.hpca_delta(x, w, form="blocked", block_size=16, chunk_elements=40 * 37)
        assert rel_err(chunked, whole) < 1e-5


@pytest.mark.parametrize("rule", FAST)
def test_teacher_variant_equals_reference(rule):
    x, w = random_case(120, 33, 20)
    y = rules.teacher_signal(torch.randint(0, 10, (120,)), 33, 10)
    ref = REFERENCE[rule](x, w, y=y)
    assert rel_err(FAST[rule](x, w, y=y), ref) < 1e-4


@pytest.mark.parametrize("rule", ["swta", "wta"])
def test_teacher_moves_class_neurons_to_their_class_mean(rule):
    # With a 0/1 teacher, each class neuron steps to the mean of its class; the shared ones to the global mean.
    x, w = random_case(60, 4, 6)
    labels = torch.arange(60) % 3
    y = rules.teacher_signal(labels, 4, 3, shared=1)
    new_w = w + FAST[rule](x, w, y=y)
    for c in range(3):
        assert torch.allclose(new_w[c], x[labels == c].mean(0), atol=1e-5)
    assert torch.allclose(new_w[3], x.mean(0), atol=1e-5)


def test_teacher_signal_groups():
    y = rules.teacher_signal(torch.tensor([0, 2, 1]), 20, 3)  # groups of 20 // 4 = 5, shared = the last 5
    assert y.shape == (3, 20)
    assert y[0, :5].eq(1).all() and y[0, 5:15].eq(0).all() and y[0, 15:].eq(1).all()
    assert y[1, 10:15].eq(1).all() and y[1, :10].eq(0).all()
    assert y.sum(1).eq(10).all()
    assert torch.equal(rules.teacher_signal(torch.tensor([2, 0]), 3, 3), F.one_hot(torch.tensor([2, 0]), 3).float())
    with pytest.raises(UserError):
        rules.teacher_signal(torch.tensor([3]), 20, 3)
    with pytest.raises(UserError):
        rules.teacher_signal(torch.tensor([0]), 2, 3)


def test_wta_update_is_the_mean_step_of_winners_and_zero_for_losers():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    x = torch.tensor([[2.0, 0.1], [3.0, -0.1], [0.1, 5.0]])  # neuron 0 wins twice, 1 once, 2 never
    dw = rules.wta_delta(x, w)
    assert torch.allclose(dw[0], x[:2].mean(0) - w[0])
    assert torch.allclose(dw[1], x[2] - w[1])
    assert dw[2].eq(0).all()


def test_bad_shapes_are_user_errors():
    with pytest.raises(UserError):
        rules.hpca_delta(torch.randn(4, 5), torch.randn(3, 6))
    with pytest.raises(UserError):
        rules.swta_delta(torch.randn(4, 5), torch.randn(3, 5), y=torch.ones(4, 2))
    with pytest.raises(UserError):
        rules.hpca_delta(torch.randn(4, 5), torch.randn(3, 5), form="fastest")


def test_rules_keep_memory_bounded_for_300k_rows():
    # N·M·D = 300,000 x 96 x 75 floats would take 8.6 GB; the fast forms must stay far below that.
    script = textwrap.dedent("""
        import resource, torch
        from hebb import rules
        torch.manual_seed(0)
        torch.set_num_threads(1)
        x = torch.randn(300_000, 75).relu_()
        w = torch.randn(96, 75) / 75 ** 0.5
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for rule in (rules.hpca_delta, rules.swta_delta, rules.wta_delta):
            dw = rule(x, w)
            assert dw.shape == (96, 75) and torch.isfinite(dw).all()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    extra_mib = int(out.stdout.split()[-1])
    assert extra_mib < 1024, f"peak memory grew by {extra_mib} MiB"


def principal_data(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    scales = torch.tensor([3.0, 2.0, 1.0] + [0.3] * (d - 3))
    return (torch.randn(n, d, generator=g) * scales) @ basis.T, basis


def test_hpca_steps_find_the_principal_directions():
    # With ReLU outputs each direction is covered by a pair of neurons, +v and -v (the nonlinear PCA of
    # docs/RULES.md#hpca): 4 neurons learn ±pc1, ±pc2 in order, and reconstruct x from the top-2 subspace.
    x, basis = principal_data(4000)
    w = torch.randn(4, 8) * 0.1

    def reconstruction_error():
        return ((x - torch.relu(x @ w.T) @ w) ** 2).sum(1).mean()

    before = reconstruction_error()
    for step in range(300):
        w += 0.01 * rules.hpca_delta(x[(step * 64) % 4000:][:64], w)
    alignment = F.normalize(w, dim=1) @ basis[:, :2]
    assert alignment[:2, 0].abs().min() > 0.97 and alignment[2:, 1].abs().min() > 0.95, alignment
    assert alignment[0, 0] * alignment[1, 0] < 0  # opposite signs
    residual_variance = 1.0 + 5 * 0.3 ** 2  # what the top-2 subspace leaves out
    assert before > 10 and reconstruction_error() < 1.2 * residual_variance
    assert torch.allclose(w.norm(dim=1), torch.ones(4), atol=0.05)  # Sanger/Oja normalisation


def test_swta_steps_move_weights_onto_the_input_clusters():
    g = torch.Generator().manual_seed(1)
    centres = F.normalize(torch.randn(4, 10, generator=g), dim=1) * 2
    x = centres[torch.randint(0, 4, (2000,), generator=g)] + 0.1 * torch.randn(2000, 10, generator=g)
    w = torch.randn(8, 10, generator=g) * 0.5

    def distance_to_nearest_weight():
        return torch.cdist(x, w).min(dim=1).values.mean()

    before = distance_to_nearest_weight()
    for step in range(60):
        w += 0.5 * rules.swta_delta(x[(step * 100) % 2000:][:100], w)
    assert distance_to_nearest_weight() < 0.3 * before
    assert (torch.cdist(centres, w).min(dim=1).values < 0.2).all()  # every cluster captured by some neuron
