"""Dropout for the read-out heads, its random mask drawn 64 bits at a time.

torch's CPU dropout draws one random number per element: 19 ms on an idle core (40 ms beside two jobs, 85% of a
probe step) for one batch of 64 SoftHebb block-3 feature rows (64 x 24,576). At p = 1/2 each element's fate is
one fair random bit, so the mask is drawn as 64-bit random words and unpacked: the same distribution in 1.8 ms
(docs/PERFORMANCE.md). Other rates, in-place use and GPUs go to torch's dropout.
"""

from __future__ import annotations

import torch
import torch.nn as nn

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def random_bits(like: torch.Tensor) -> torch.Tensor:
    """A uint8 tensor shaped like `like` of independent fair 0/1 bits, from the global random generator."""
    n = like.numel()
    # every bit pattern of the 64-bit word but one is drawn (randint's bound is exclusive): a bias of 2^-64
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, (-(-n // 64),), dtype=torch.int64, device=like.device)
    bits = (words.view(torch.uint8)[:, None] >> _SHIFTS.to(like.device)) & 1
    return bits.flatten()[:n].view(like.shape)


class Dropout(nn.Dropout):
    """nn.Dropout whose p = 0.5 training mask on the CPU comes from `random_bits`: each element is zeroed or doubled
    with probability 1/2, as torch's (the random stream differs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p != 0.5 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        return x.mul(random_bits(x)).mul_(2.0)
