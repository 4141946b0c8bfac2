"""Candidate faster forms, timed beside the project's own in the same run (not used by the project).

`hpca_prefix` is the blocked running-sum HPCA of hebb.rules with its Python loop over neuron blocks replaced
by batched products: all block products Y_k W_k at once (one bmm), an exclusive prefix sum over blocks gives
every block's residual E_k = X - Σ_{j<k} Y_j W_j, then one bmm for Y_kᵀ E_k and one for tril(Y_kᵀ Y_k) W_k.
Same arithmetic as the blocked form (2·N·M·D + ...), a handful of kernels instead of ~3 per block, at the
price of a (M/b, N, D) buffer (19 MB for layer 5 at N = 64, b = 128).
"""

from __future__ import annotations

import torch


def hpca_prefix(x: torch.Tensor, w: torch.Tensor, block: int = 128) -> torch.Tensor:
    """HPCA update (1/N)[YᵀX - tril(YᵀY)W], Y = ReLU(X Wᵀ), via batched block products and a prefix sum."""
    n, d = x.shape
    m = w.shape[0]
    while m % block:
        block //= 2
    nb = m // block
    y = torch.relu(x @ w.T)
    yb = y.reshape(n, nb, block).transpose(0, 1)  # (nb, N, b)
    wb = w.reshape(nb, block, d)  # (nb, b, D)
    z = torch.bmm(yb, wb)  # (nb, N, D): Y_k W_k
    residual = x.unsqueeze(0) - (z.cumsum(0) - z)  # X - Σ_{j<k} Y_j W_j
    yt = yb.transpose(1, 2)
    dw = torch.bmm(yt, residual)
    dw -= torch.bmm(torch.tril(torch.bmm(yt, yb)), wb)
    return dw.reshape(m, d) / max(n, 1)
