"""HebbConv2d: its update is the rule applied to the unfolded patches, it learns only when asked, and its
forward pass is the documented, differentiable convolution."""

import math

import pytest
import torch
import torch.nn.functional as F

from hebb import rules
from hebb.errors import UserError
from hebb.layers import HebbConv2d

FAST = {"hpca": rules.hpca_delta, "swta": rules.swta_delta, "wta": rules.wta_delta}
# (batch, in_channels, map size, kernel, out_channels, stride); the last two: kernel covers the map (FC)
# the second to last: many kernels on a small map (the moments come from the patch-matrix product)
CASES = [(4, 3, 12, 5, 16, 1), (3, 8, 9, 3, 12, 2), (2, 6, 7, 4, 10, 1), (2, 6, 8, 3, 1024, 2),
         (6, 16, 3, 3, 40, 1), (5, 8, 3, 3, 300, 1)]


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def unfolded_patches(x, k, stride):
    cols = F.unfold(x, k, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@pytest.mark.parametrize("rule", FAST)
@pytest.mark.parametrize("case", CASES)
def test_layer_delta_is_the_rule_on_unfolded_patches(rule, case):
    b, c, size, k, m, stride = case
    layer = HebbConv2d(c, m, k, rule=rule, stride=stride)
    x = torch.randn(b, c, size, size).relu()
    dw = layer.hebbian_delta(x)
    assert dw.shape == layer.weight.shape
    ref = rules.__dict__[f"{rule}_delta_reference"](unfolded_patches(x, k, stride), layer.weight.detach().flatten(1))
    assert rel_err(dw, ref.reshape_as(dw)) < 1e-4


@pytest.mark.parametrize("rule", FAST)
@pytest.mark.parametrize("case", [CASES[0], CASES[-1]])
def test_layer_teacher_signal_is_the_rule_with_per_image_teacher(rule, case):
    b, c, size, k, m, stride = case
    layer = HebbConv2d(c, m, k, rule=rule, stride=stride)
    x = torch.randn(b, c, size, size)
    teacher = rules.teacher_signal(torch.arange(b) % 3, m, 3)
    patches = unfolded_patches(x, k, stride)
    per_patch = teacher.repeat_interleave(patches.shape[0] // b, dim=0)  # every patch of an image: its teacher
    ref = FAST[rule](patches, layer.weight.detach().flatten(1), y=per_patch)
    assert rel_err(layer.hebbian_delta(x, teacher=teacher), ref.reshape(layer.weight.shape)) < 1e-4


def test_wide_fully_connected_hpca_uses_the_blocked_form_and_matches():
    # Like layer 5 (256x3x3 -> 4096) but smaller: few rows, many neurons.
    layer = HebbConv2d(64, 1024, 3, rule="hpca")
    x = torch.randn(16, 64, 3, 3).relu()
    assert rules.hpca_prefers_blocked(16, 1024, 64 * 9)
    ref = rules.hpca_delta(x.flatten(1), layer.weight.detach().flatten(1), form="reference")
    assert rel_err(layer.hebbian_delta(x), ref.reshape(layer.weight.shape)) < 1e-4


@pytest.mark.parametrize("rule", FAST)
def test_forward_is_the_documented_differentiable_convolution(rule):
    layer = HebbConv2d(3, 8, 5, rule=rule)
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    w = layer.weight.detach()
    if rule != "hpca":
        w = w / w.flatten(1).norm(dim=1)[:, None, None, None]
    y = layer(x)
    assert torch.allclose(y, F.relu(F.conv2d(x, w)), atol=1e-6)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("rule", FAST)
def test_training_forward_puts_minus_delta_in_grad(rule):
    layer = HebbConv2d(3, 8, 3, rule=rule)
    x = torch.randn(4, 3, 8, 8)
    expected = layer.hebbian_delta(x)
    layer.hebbian_learning = True
    layer.train()
    with torch.no_grad():
        layer(x)
    assert torch.allclose(layer.weight.grad, -expected)
    layer(x)  # a second batch accumulates, like autograd does
    assert torch.allclose(layer.weight.grad, -2 * expected, atol=1e-6)

    before = layer.weight.detach().clone()
    layer.weight.grad = None
    layer(x)
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    assert torch.allclose(layer.weight, before + 0.1 * expected, atol=1e-6)


def test_no_learning_in_eval_mode_or_with_the_flag_off():
    layer = HebbConv2d(3, 8, 3)
    x = torch.randn(2, 3, 8, 8)
    layer.train()
    layer(x)
    assert layer.weight.grad is None  # flag off by default
    layer.hebbian_learning = True
    layer.eval()
    layer(x)
    assert layer.weight.grad is None


def test_training_update_uses_the_teacher_when_set():
    layer = HebbConv2d(3, 12, 3, rule="wta")
    x = torch.randn(4, 3, 6, 6)
    teacher = rules.teacher_signal(torch.tensor([0, 1, 2, 0]), 12, 3)
    layer.hebbian_learning, layer.teacher = True, teacher
    layer.train()
    layer(x)
    assert torch.allclose(layer.weight.grad, -layer.hebbian_delta(x, teacher=teacher))


def test_hebbian_learning_reduces_reconstruction_error_of_patches():
    torch.manual_seed(0)
    layer = HebbConv2d(3, 6, 3, rule="hpca")
    smooth = F.avg_pool2d(torch.randn(64, 3, 18, 18), 3, stride=1)  # correlated pixels: a few strong directions
    smooth = smooth / smooth.std()
    patches = unfolded_patches(smooth, 3, 1)

    def reconstruction_error():
        w = layer.weight.detach().flatten(1)
        return ((patches - torch.relu(patches @ w.T) @ w) ** 2).sum(1).mean()

    before = reconstruction_error()
    layer.hebbian_learning = True
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
    for i in range(30):
        optimizer.zero_grad()
        layer(smooth[i % 8 * 8:][:8])
        optimizer.step()
    assert reconstruction_error() < 0.75 * before


def test_initialisation_and_bad_arguments():
    layer = HebbConv2d(256, 4096, 3)
    assert layer.weight.shape == (4096, 256, 3, 3) and layer.hebbian_learning is False
    xavier_std = math.sqrt(2 / (256 * 9 + 4096 * 9))
    assert abs(layer.weight.std().item() / xavier_std - 1) < 0.02
    with pytest.raises(UserError):
        HebbConv2d(3, 8, 3, rule="backprop")
    with pytest.raises(UserError):
        HebbConv2d(3, 8, 3).hebbian_delta(torch.randn(2, 4, 8, 8))
    with pytest.raises(UserError):
        HebbConv2d(3, 8, 3).hebbian_delta(torch.randn(2, 3, 8, 8), teacher=torch.ones(2, 5))


@pytest.mark.parametrize("rule", FAST)
def test_fully_connected_forward_is_the_convolution_with_its_gradients(rule):
    # a kernel covering the map runs as one matrix product (faster on the CPU); same values and gradients
    layer = HebbConv2d(16, 40, 3, rule=rule)
    x = torch.randn(5, 16, 3, 3, requires_grad=True)
    w = layer.effective_weight()
    expected = F.relu(F.conv2d(x, w))
    gx, gw = torch.autograd.grad(expected.square().sum(), [x, layer.weight])
    y = layer(x)
    assert y.shape == (5, 40, 1, 1) and torch.allclose(y, expected, atol=1e-5)
    hx, hw = torch.autograd.grad(y.square().sum(), [x, layer.weight])
    assert torch.allclose(hx, gx, atol=1e-5) and torch.allclose(hw, gw, atol=1e-5)


@pytest.mark.parametrize("rule", FAST)
def test_fully_connected_forward_keeps_the_autocast_dtype(rule):
    # under autocast the matrix product runs in bfloat16; dividing by the kernel norms must not promote it
    layer = HebbConv2d(16, 40, 3, rule=rule)
    x = torch.randn(5, 16, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        conv = F.relu(F.conv2d(x, layer.effective_weight()))
    assert y.dtype == conv.dtype == torch.bfloat16
    assert torch.allclose(y.float(), conv.float(), rtol=2e-2, atol=2e-2)
