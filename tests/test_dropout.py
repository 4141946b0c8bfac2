"""The read-out heads' dropout: torch's distribution (each element zeroed or doubled with probability 1/2), from
random bits drawn 64 at a time, reproducible from the seed, with the gradient of the mask it applied."""

import pytest
import torch

from hebb.dropout import Dropout, random_bits


def test_half_the_elements_are_zeroed_and_the_rest_doubled():
    torch.manual_seed(0)
    x = torch.rand(64, 24_576) + 0.5  # no zeros of its own
    out = Dropout(0.5).train()(x)
    kept = out != 0
    assert torch.equal(out[kept], 2 * x[kept])
    n = x.numel()
    assert abs(kept.sum().item() - n / 2) < 4 * (n / 4) ** 0.5  # within 4 standard deviations of a fair coin
    # every bit position of the 64-bit words is used and fair, and neighbours are independent
    bits = random_bits(torch.empty(64 * 20_000)).view(-1, 64).float()
    assert (bits.mean(0) - 0.5).abs().max() < 0.02
    assert abs((bits[:, :-1] * bits[:, 1:]).mean().item() - 0.25) < 0.01


def test_odd_sizes_and_shapes_get_a_mask_of_their_own_shape():
    torch.manual_seed(1)
    for shape in [(1,), (3, 5), (2, 7, 3, 3)]:
        x = torch.ones(shape)
        out = Dropout(0.5).train()(x)
        assert out.shape == x.shape and set(out.unique().tolist()) <= {0.0, 2.0}


def test_the_mask_follows_the_seed_and_eval_mode_is_the_identity():
    x = torch.randn(8, 100)
    torch.manual_seed(3)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(3)
    b = Dropout(0.5).train()(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, Dropout(0.5).train()(x))
    assert torch.equal(Dropout(0.5).eval()(x), x)


def test_the_gradient_is_the_applied_mask_times_two():
    torch.manual_seed(4)
    x = torch.randn(16, 50, requires_grad=True)
    out = Dropout(0.5).train()(x)
    out.sum().backward()
    assert torch.equal(x.grad, torch.where(out != 0, 2.0, 0.0))


@pytest.mark.parametrize("p", [0.2, 0.9])
def test_other_rates_are_torchs_dropout(p):
    x = torch.randn(4, 1000)
    torch.manual_seed(5)
    ours = Dropout(p).train()(x)
    torch.manual_seed(5)
    assert torch.equal(ours, torch.nn.Dropout(p).train()(x))
