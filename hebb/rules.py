"""Hebbian learning rules (docs/RULES.md): fast matrix forms and their plain per-sample reference twins.

Every rule maps a batch of inputs x (N, D) and weights w (M, D) to an update dw (M, D), without the learning
rate. The fast forms use matrix products only, merge the batch aggregation into them and walk over N in
chunks, so that no N x M x D tensor is ever built and memory stays bounded for N in the hundreds of thousands.

The optional `y` argument is the supervised variant (docs/RULES.md#teacher-signal): the neuron outputs (HPCA) or the
competition coefficients (soft-WTA, WTA) are replaced by a given teacher signal, see `teacher_signal`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hebb.errors import UserError

CHUNK_ELEMENTS = 1 << 24  # largest (rows x max(M, D)) intermediate a fast rule builds: 64 MiB in float32
# Smallest neuron block of the blocked HPCA form: larger blocks cost more arithmetic but fewer kernel launches,
# which is what a GPU is short of (measured on CPU: 64 is best for N=64, M=4096, D=2304).
MIN_BLOCK = {"cpu": 64, "cuda": 256}


# ----------------------------------------------------------------------------- helpers shared with layers.py

def hpca_block_size(n: int, m: int, device_type: str = "cpu") -> int:
    """Neuron block size of the blocked HPCA form for N rows and M neurons."""
    return max(1, min(m, max(MIN_BLOCK.get(device_type, 64), n)))


def hpca_costs(n: int, m: int, d: int, device_type: str = "cpu") -> tuple[int, int]:
    """Multiply-adds of (reference form, blocked form) of HPCA, beyond computing Y itself."""
    b = hpca_block_size(n, m, device_type)
    reference = n * m * d + n * m * m + m * m * d  # YᵀX, YᵀY, tril(YᵀY)·W
    blocked = 2 * n * m * d + n * m * b + m * b * d  # Y_kᵀE and E -= Y_k W_k, in-block YᵀY and tril·W
    return reference, blocked


def hpca_prefers_blocked(n: int, m: int, d: int, device_type: str = "cpu") -> bool:
    """Whether the blocked running-sum form of HPCA is cheaper than tril(YᵀY)·W for these sizes."""
    reference, blocked = hpca_costs(n, m, d, device_type)
    return blocked < reference


def hpca_finish(yx: torch.Tensor, yy: torch.Tensor, w: torch.Tensor, n: int, scale: float = 1.0) -> torch.Tensor:
    """HPCA update from its moments: scale · (YᵀX - tril(YᵀY) W) / N, written into yx (and yy's lower
    triangle into yy): one fused product, no temporaries of W's size."""
    c = scale / max(n, 1)
    return yx.addmm_(yy.tril_(), w, beta=c, alpha=-c)


def weighted_mean_finish(qx: torch.Tensor, q_sum: torch.Tensor, r_sum: torch.Tensor,
                         w: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale · (QᵀX - diag(colsum Q) W) / colsum R per neuron, 0 for neurons whose colsum R is 0 (they got
    nothing), written into qx: two passes over W's size, as per-neuron factors."""
    inv = torch.where(r_sum > 0, scale / torch.where(r_sum > 0, r_sum, torch.ones_like(r_sum)),
                      torch.zeros_like(r_sum))
    return qx.mul_(inv[:, None]).addcmul_(w, (q_sum * inv)[:, None], value=-1)


def soft_competition(dots: torch.Tensor, norms: torch.Tensor, temperature: float, dim: int = 1) -> torch.Tensor:
    """Soft-WTA coefficients R = softmax(((1 + cos) / 2)² / T) across neurons, cos = dots / norms (the
    products with unit-norm weights over the input norms, which broadcast against dots)."""
    # 1 + dots / norms in one pass, then two in place: each pass over a conv layer's outputs costs ms
    scores = torch.addcdiv(dots.new_ones(()), dots, norms).square_().mul_(0.25 / temperature)
    return torch.softmax(scores, dim=dim)


def softhebb_signal(u: torch.Tensor, inv_temperature: float, dim: int = 1) -> torch.Tensor:
    """SoftHebb's post-synaptic signal Ỹ from pre-activations U: softmax(β·U) across neurons (`dim`), kept
    positive for each row's winner (argmax of U) and negated for every other neuron (anti-Hebbian losers)."""
    y = torch.softmax(u * inv_temperature, dim=dim)
    winner = u.argmax(dim=dim, keepdim=True)
    kept = y.gather(dim, winner)
    # negate every value, then put the winners' back: 1.1-2.8x faster than a boolean mask and a where on the CPU
    return y.neg_().scatter_(dim, winner, kept)


def add_winner_moments(x: torch.Tensor, winners: torch.Tensor, qx: torch.Tensor, counts: torch.Tensor) -> None:
    """Add to qx (M, D) the rows of x (N, D) each neuron won and to counts (M,) how many, for winner indices
    (N,): QᵀX and colsum Q of the one-hot Q by N·D additions instead of a dense N·M·D product."""
    qx.index_add_(0, winners, x)
    counts += torch.bincount(winners, minlength=counts.shape[0]).to(counts.dtype)


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row, with 0 replaced by 1 (a zero vector has cosine 0 with everything)."""
    nrm = x.norm(dim=1)
    return torch.where(nrm > 0, nrm, torch.ones_like(nrm))


def _check(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor | None = None) -> None:
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise UserError(f"Hebbian rule expects x (N, D) and w (M, D), got {tuple(x.shape)} and {tuple(w.shape)}")
    if y is not None and tuple(y.shape) != (x.shape[0], w.shape[0]):
        raise UserError(f"teacher signal must be (N, M) = {(x.shape[0], w.shape[0])}, got {tuple(y.shape)}")


def _chunks(n: int, width: int, chunk_elements: int | None):
    rows = max(1, (chunk_elements or CHUNK_ELEMENTS) // max(width, 1))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


# ----------------------------------------------------------------------------- fast rules

def hpca_delta(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor | None = None, *,
               form: str = "auto", block_size: int | None = None,
               chunk_elements: int | None = None, scale: float = 1.0) -> torch.Tensor:
    """Hebbian PCA: dW = (1/N) [YᵀX - tril(YᵀY) W], Y = ReLU(X Wᵀ) (or the teacher signal y, (N, M)).

    form: "auto" picks the cheaper of "reference" (tril(YᵀY)·W, costs M²·D) and "blocked" (running
    reconstruction over neuron blocks, costs ~2·N·M·D; wins when N is small relative to M).
    block_size: neurons per block of the blocked form (default `hpca_block_size(N, M)`).
    scale: the update comes out multiplied by it, at no cost (a layer passes -1 to store a gradient).
    """
    _check(x, w, y)
    n, d = x.shape
    m = w.shape[0]
    if form == "auto":
        form = "blocked" if hpca_prefers_blocked(n, m, d, w.device.type) else "reference"
    if form not in ("reference", "blocked"):
        raise UserError(f"unknown HPCA form {form!r} (expected auto, reference or blocked)")
    if form == "blocked":
        return _hpca_blocked(x, w, y, block_size or hpca_block_size(n, m, w.device.type), chunk_elements, scale)
    yx = torch.zeros_like(w)
    yy = w.new_zeros(m, m)
    for rows in _chunks(n, max(m, d), chunk_elements):
        yc = torch.relu(x[rows] @ w.T) if y is None else y[rows].to(w.dtype)
        yx.addmm_(yc.T, x[rows])
        yy.addmm_(yc.T, yc)
    return hpca_finish(yx, yy, w, n, scale)


def _hpca_blocked(x, w, y, b, chunk_elements, scale=1.0):
    # Neuron i is reconstructed by neurons 1..i. Walk the neurons in blocks of b, keeping the residual
    # E = X - Σ_{earlier blocks} Y_j W_j: block k gets Y_kᵀE - tril(Y_kᵀY_k) W_k, then E -= Y_k W_k.
    n, d = x.shape
    m = w.shape[0]
    starts = range(0, m, b)
    dw = torch.zeros_like(w)
    gram = [w.new_zeros(min(b, m - s), min(b, m - s)) for s in starts]  # in-block YᵀY, summed over chunks
    for rows in _chunks(n, max(m, d), chunk_elements):
        yc = torch.relu(x[rows] @ w.T) if y is None else y[rows].to(w.dtype)
        residual = x[rows].clone()
        for k, s in enumerate(starts):
            yk, wk = yc[:, s:s + b], w[s:s + b]
            dw[s:s + b].addmm_(yk.T, residual)
            gram[k].addmm_(yk.T, yk)
            if s + b < m:
                residual.addmm_(yk, wk, alpha=-1)
    c = scale / max(n, 1)
    for k, s in enumerate(starts):
        dw[s:s + b].addmm_(gram[k].tril_(), w[s:s + b], beta=c, alpha=-c)
    return dw


def swta_delta(x: torch.Tensor, w: torch.Tensor, temperature: float = 0.02, y: torch.Tensor | None = None, *,
               chunk_elements: int | None = None) -> torch.Tensor:
    """Soft-WTA: R = softmax(((1+cos(x,w))/2)² / T); dW = Qᵀ X - diag(colsum Q) W, Q = R² / colsum(R).

    y: optional teacher signal (N, M) that replaces R.
    """
    _check(x, w, y)
    if y is None and not temperature > 0:
        raise UserError(f"soft-WTA temperature must be positive, got {temperature}")
    n, d = x.shape
    m = w.shape[0]
    w_unit = w / row_norms(w)[:, None]
    qx = torch.zeros_like(w)
    q_sum = w.new_zeros(m)
    r_sum = w.new_zeros(m)
    for rows in _chunks(n, max(m, d), chunk_elements):
        xc = x[rows]
        if y is None:
            r = soft_competition(xc @ w_unit.T, row_norms(xc)[:, None], temperature)
        else:
            r = y[rows].to(w.dtype)
        q = r * r
        qx.addmm_(q.T, xc)
        q_sum += q.sum(0)
        r_sum += r.sum(0)
    return weighted_mean_finish(qx, q_sum, r_sum, w)


def wta_delta(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor | None = None, *,
              chunk_elements: int | None = None) -> torch.Tensor:
    """Hard WTA: each row's winner (argmax cosine) moves toward the mean of the rows it won; others get 0.

    y: optional teacher signal (N, M) replacing the 0/1 winner matrix (weighted mean of x_b - w_n).
    """
    _check(x, w, y)
    n, d = x.shape
    m = w.shape[0]
    w_unit = w / row_norms(w)[:, None]
    qx = torch.zeros_like(w)
    counts = w.new_zeros(m)
    for rows in _chunks(n, max(m, d), chunk_elements):
        xc = x[rows]
        if y is None:
            # argmax of cosine = argmax of x·w/‖w‖, since ‖x‖ is the same for every neuron
            add_winner_moments(xc, (xc @ w_unit.T).argmax(dim=1), qx, counts)
        else:
            yc = y[rows].to(w.dtype)
            qx.addmm_(yc.T, xc)
            counts += yc.sum(0)
    return weighted_mean_finish(qx, counts, counts, w)


def softhebb_delta(x: torch.Tensor, w: torch.Tensor, inv_temperature: float = 1.0, y: torch.Tensor | None = None,
                   *, chunk_elements: int | None = None) -> torch.Tensor:
    """SoftHebb: U = X Wᵀ, Ỹ = `softhebb_signal(U, β)`; dW = Ỹᵀ X - diag(Σ_n Ỹ_nk U_nk) W.

    The raw update: no max-normalisation and no per-neuron rate (the layer applies both). y: optional
    teacher signal (N, M) that replaces Ỹ.
    """
    _check(x, w, y)
    n, d = x.shape
    m = w.shape[0]
    yx = torch.zeros_like(w)
    yu = w.new_zeros(m)
    for rows in _chunks(n, max(m, d), chunk_elements):
        xc = x[rows]
        u = xc @ w.T
        yc = softhebb_signal(u, inv_temperature) if y is None else y[rows].to(w.dtype)
        yx.addmm_(yc.T, xc)
        yu += (yc * u).sum(0)
    return yx.addcmul_(w, yu[:, None], value=-1)


def teacher_signal(labels: torch.Tensor, num_neurons: int, num_classes: int,
                   shared: int | None = None) -> torch.Tensor:
    """0/1 teacher signal (N, num_neurons) of docs/RULES.md#teacher-signal for integer class labels (N,).

    The neurons are split into num_classes equal groups (class c owns the c-th group, in order) and a
    shared group (the last neurons, on for every sample). shared=None: no shared group when there is one
    neuron per class (an output layer), otherwise one group's worth plus the leftover neurons.
    """
    if num_classes < 1 or num_neurons < num_classes:
        raise UserError(f"cannot split {num_neurons} neurons into {num_classes} class groups")
    if shared is None:
        shared = 0 if num_neurons == num_classes else num_neurons - num_classes * (num_neurons // (num_classes + 1))
    if not 0 <= shared <= num_neurons - num_classes:
        raise UserError(f"shared group of {shared} leaves too few of {num_neurons} neurons for {num_classes} classes")
    group = (num_neurons - shared) // num_classes
    labels = torch.as_tensor(labels).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"labels must lie in 0..{num_classes - 1}")
    neuron = torch.arange(num_neurons, device=labels.device)
    owner = torch.where(neuron < group * num_classes, neuron // max(group, 1), -1)  # class of each neuron
    signal = (owner[None, :] == labels[:, None]) | (neuron >= num_neurons - shared)[None, :]
    return signal.float()


# ----------------------------------------------------------------------------- reference twins (tests only)

def hpca_delta_reference(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample: Δw_i = y_i (x - Σ_{j≤i} y_j w_j), averaged over the rows. Slow; for tests."""
    _check(x, w, y)
    dw = torch.zeros_like(w)
    for b in range(x.shape[0]):
        yb = torch.relu(w @ x[b]) if y is None else y[b].to(w.dtype)
        reconstruction = torch.cumsum(yb[:, None] * w, dim=0)  # row i: Σ_{j≤i} y_j w_j
        dw += yb[:, None] * (x[b][None, :] - reconstruction)
    return dw / max(x.shape[0], 1)


def swta_delta_reference(x: torch.Tensor, w: torch.Tensor, temperature: float = 0.02,
                         y: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample: Δw_n = Σ_b C_bn R_bn (x_b - w_n), C_bn = R_bn / Σ_b R_bn. Slow; for tests."""
    _check(x, w, y)
    n, m = x.shape[0], w.shape[0]
    r = torch.empty(n, m, dtype=w.dtype, device=w.device)
    for b in range(n):
        if y is None:
            cos = F.cosine_similarity(x[b][None, :], w, dim=1, eps=1e-30)
            r[b] = torch.softmax(((1 + cos) / 2) ** 2 / temperature, dim=0)
        else:
            r[b] = y[b].to(w.dtype)
    c = r / r.sum(0, keepdim=True)
    dw = torch.zeros_like(w)
    for b in range(n):
        dw += (c[b] * r[b])[:, None] * (x[b][None, :] - w)
    return torch.nan_to_num(dw, nan=0.0)


def softhebb_delta_reference(x: torch.Tensor, w: torch.Tensor, inv_temperature: float = 1.0,
                             y: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample: u = W x, y = softmax(β u), ỹ_k = y_k for the winner and -y_k for the others;
    Δw_k = Σ_b ỹ_k (x_b - u_k w_k). Slow; for tests."""
    _check(x, w, y)
    dw = torch.zeros_like(w)
    for b in range(x.shape[0]):
        u = w @ x[b]
        if y is None:
            yb = -torch.softmax(inv_temperature * u, dim=0)
            yb[u.argmax()] *= -1
        else:
            yb = y[b].to(w.dtype)
        dw += yb[:, None] * (x[b][None, :] - u[:, None] * w)
    return dw


def wta_delta_reference(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample: the winner n (max cosine) collects x_b - w_n; each neuron averages what it collected."""
    _check(x, w, y)
    m = w.shape[0]
    total = torch.zeros_like(w)
    weight = w.new_zeros(m)
    for b in range(x.shape[0]):
        if y is None:
            cos = F.cosine_similarity(x[b][None, :], w, dim=1, eps=1e-30)
            yb = F.one_hot(cos.argmax(), m).to(w.dtype)
        else:
            yb = y[b].to(w.dtype)
        total += yb[:, None] * (x[b][None, :] - w)
        weight += yb
    out = total / torch.where(weight > 0, weight, torch.ones_like(weight))[:, None]
    return out
