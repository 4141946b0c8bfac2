"""HebbConv2d: a convolution (or a fully connected layer, as a conv whose kernel covers the map) that learns
with a Hebbian rule of `hebb.rules` (docs/RULES.md).

The update of a convolution is the rule applied to every patch of every image (each patch one row of
F.unfold). It is computed without unfolding: Σ_patches yᵀx is the weight gradient of the convolution
(conv2d_weight with y as grad_output), patch norms come from convolving x² with a ones kernel, and YᵀY is a
plain (M x M) product of the outputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight

from hebb import rules
from hebb.errors import UserError

RULES = ("hpca", "swta", "wta", "softhebb")
#: SoftHebb's initial weight scale: kernels start as N(0, (INIT_NORM / √D)²), so their norms are near INIT_NORM.
SOFTHEBB_INIT_NORM = 25.0
#: `patch_product_wins` thresholds: at least this many kernels, at most this many output positions per image.
PATCH_PRODUCT_MIN_KERNELS, PATCH_PRODUCT_MAX_MAP = 1024, 64


def patch_product_wins(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether Σ qᵀx over patches is faster as one product with the patch matrix than as conv2d_weight: on the
    CPU for many kernels over a small output map (SoftHebb's wide block 3, 1536 kernels on 8x8 maps: oneDNN's
    weight-gradient kernel took 1.4-1.7x the product's time, docs/PERFORMANCE.md), where the patch matrix is small
    (N·H'·W' rows); slower for every other layer of the nets measured."""
    return x.device.type == "cpu" and out.shape[1] >= PATCH_PRODUCT_MIN_KERNELS and \
        out.shape[2] * out.shape[3] <= PATCH_PRODUCT_MAX_MAP


class Triangle(nn.Module):
    """SoftHebb's activation: ReLU(u - mean over channels of u) ** power."""

    def __init__(self, power: float = 1.0):
        super().__init__()
        self.power = float(power)

    def extra_repr(self) -> str:
        return f"power={self.power}"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        out = torch.relu(u - u.mean(dim=1, keepdim=True))
        return out if self.power == 1.0 else out.pow(self.power)


class HebbConv2d(nn.Module):
    """Conv layer without bias that learns with rule "hpca", "swta" (soft-WTA), "wta" (hard WTA) or "softhebb".

    forward(x) is differentiable: act(conv(x, W)) for HPCA and SoftHebb, act(conv(x, W/‖W‖)) for the WTA
    rules, act = ReLU unless `activation` is given (SoftHebb's net uses `Triangle`). When `hebbian_learning`
    is True and the module is training, forward also adds the step to weight.grad (reusing its own
    pre-activation), so that a torch optimizer step with lr applies W += lr·step: step = dW for the classic
    rules; for SoftHebb step_k = eta · (|‖W_k‖ - 1| + 1e-10)^0.5 · dW_k / max|dW| (`softhebb_step`).
    `teacher`, when set to a (B, M) or (B, M, H', W') tensor, replaces the neuron outputs in those updates
    (supervised Hebbian learning).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, rule: str = "hpca",
                 temperature: float = 0.02, stride: int = 1, inv_temperature: float = 1.0, eta: float = 1.0,
                 activation: nn.Module | None = None):
        super().__init__()
        if rule not in RULES:
            raise UserError(f"unknown Hebbian rule {rule!r} (expected one of {', '.join(RULES)})")
        if rule == "swta" and not temperature > 0:
            raise UserError(f"soft-WTA temperature must be positive, got {temperature}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.rule, self.temperature = rule, temperature
        self.inv_temperature, self.eta = float(inv_temperature), float(eta)
        self.activation = activation if activation is not None else nn.ReLU()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        if rule == "softhebb":
            nn.init.normal_(self.weight, std=SOFTHEBB_INIT_NORM / (in_channels * kernel_size ** 2) ** 0.5)
        else:
            nn.init.xavier_normal_(self.weight)  # as the reference FastHebb code
        self.hebbian_learning = False
        self.teacher: torch.Tensor | None = None
        #: Sums a list of batch moments in place over data-parallel processes (`hebb.distributed`), or None.
        self.reduce_sums = None

    def extra_repr(self) -> str:
        extra = {"swta": f", temperature={self.temperature}",
                 "softhebb": f", inv_temperature={self.inv_temperature}, eta={self.eta}"}.get(self.rule, "")
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"rule={self.rule!r}{extra}")

    def effective_weight(self) -> torch.Tensor:
        """The kernels the forward pass uses: W for HPCA and SoftHebb, unit-norm kernels for the WTA rules."""
        w = self.weight
        if self.rule in ("hpca", "softhebb"):
            return w
        norms = w.flatten(1).norm(dim=1)
        return w / torch.where(norms > 0, norms, torch.ones_like(norms))[:, None, None, None]

    def _covers_map(self, x: torch.Tensor) -> bool:
        """Whether the kernel covers the whole input map (a fully connected layer, e.g. layer 5 of the 6-layer net)."""
        return x.shape[-2] == self.kernel_size and x.shape[-1] == self.kernel_size

    def _preactivation(self, x: torch.Tensor) -> torch.Tensor:
        # A fully connected layer is one matrix product: F.linear is ~5x faster than conv2d on the CPU
        # for (64, 256, 3, 3) x (4096, 256, 3, 3) (bench/, docs/PERFORMANCE.md), and the same numbers.
        if self._covers_map(x):
            if self.rule in ("hpca", "softhebb"):
                return F.linear(x.flatten(1), self.weight.flatten(1))[:, :, None, None]
            # x·(w/‖w‖) = (x·w)/‖w‖: dividing the (B, M) outputs costs far less than the (M, D) kernels
            w = self.weight.flatten(1)
            norms = w.norm(dim=1)
            out = F.linear(x.flatten(1), w)
            norms = torch.where(norms > 0, norms, torch.ones_like(norms)).to(out.dtype)  # autocast: out's dtype
            return (out / norms)[:, :, None, None]
        return F.conv2d(x, self.effective_weight(), stride=self.stride)

    def _moments(self, x: torch.Tensor, q: torch.Tensor, shape) -> torch.Tensor:
        """Σ over patches of qᵀx, (M, D): a plain product for a fully connected layer, the outputs' rows times the
        patch matrix where `patch_product_wins`, else conv2d_weight."""
        if self._covers_map(x):
            return q.flatten(1).T @ x.flatten(1)
        if patch_product_wins(x, q):
            return self._patch_rows(q).T @ self._patches(x)
        return conv2d_weight(x, shape, q, stride=self.stride).reshape(shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self._preactivation(x)
        if self.training and self.hebbian_learning:
            # the optimizer applies W -= lr·grad: the update is computed already negated (free, in its last
            # product, or in SoftHebb's per-kernel factors), so no extra pass over W's size is made
            if self.rule == "softhebb":
                grad = self._delta(x.detach(), pre.detach(), self.teacher)
                grad.mul_(self._softhebb_factors(grad).neg_())
            else:
                grad = self._delta(x.detach(), pre.detach(), self.teacher, scale=-1.0)
            if self.weight.grad is None:
                self.weight.grad = grad
            else:
                self.weight.grad.add_(grad)
        return self.activation(pre)

    @torch.no_grad()
    def softhebb_step(self, dw: torch.Tensor) -> torch.Tensor:
        """SoftHebb's step from its raw update: dW / max|dW|, times eta and each kernel's norm-adaptive rate
        (|‖W_k‖ - 1| + 1e-10)^0.5, which shrinks to 0 as the kernel's norm reaches 1."""
        return dw * self._softhebb_factors(dw)

    def _softhebb_factors(self, dw: torch.Tensor) -> torch.Tensor:
        """Per-kernel factors of `softhebb_step`, shaped to broadcast over dw."""
        norms = self.weight.detach().flatten(1).norm(dim=1)
        rate = self.eta * ((norms - 1).abs() + 1e-10).sqrt()
        low, high = torch.aminmax(dw)  # max |dW| without a tensor of |dW|
        return (rate / (torch.maximum(high, -low) + 1e-30)).view(-1, *([1] * (dw.dim() - 1)))

    @torch.no_grad()
    def hebbian_delta(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        """The rule's update dW (shape of .weight, no learning rate) for the input batch x (B, C, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise UserError(f"expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        pre = self._preactivation(x)
        return self._delta(x, pre, teacher)

    @torch.no_grad()
    def _delta(self, x: torch.Tensor, pre: torch.Tensor, teacher: torch.Tensor | None,
               scale: float = 1.0) -> torch.Tensor:
        """scale · dW for input x and its pre-activation (scale applies to the classic rules' finishes)."""
        # The update is accumulated in the weight's dtype (float32), also under autocast.
        with torch.autocast(x.device.type, enabled=False):
            w = self.weight.detach()
            x, pre = x.to(w.dtype), pre.to(w.dtype)
            signal = None if teacher is None else self._expand_teacher(teacher, pre)
            if self.rule == "hpca":
                dw = self._hpca(x, pre, signal, w, scale)
            elif self.rule == "softhebb":
                dw = self._softhebb(x, pre, signal, w)
            else:
                dw = self._competitive(x, pre, signal, w, self.rule == "swta", scale)
        return dw.reshape_as(w)

    def _expand_teacher(self, teacher: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        teacher = teacher.to(device=pre.device, dtype=pre.dtype)
        if teacher.dim() == 2:
            teacher = teacher[:, :, None, None]
        if teacher.shape[:2] != pre.shape[:2]:
            raise UserError(f"teacher signal must be (B, M) = {tuple(pre.shape[:2])}, got {tuple(teacher.shape)}")
        return teacher.expand_as(pre).contiguous()

    def _patch_rows(self, t: torch.Tensor) -> torch.Tensor:
        """(B, M, H', W') -> (B·H'·W', M), rows in F.unfold's patch order."""
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """All patches as rows (B·H'·W', C·k·k); a reshape when the kernel covers the map."""
        k = self.kernel_size
        if x.shape[2] == k and x.shape[3] == k:
            return x.reshape(x.shape[0], -1)
        cols = F.unfold(x, k, stride=self.stride)  # (B, D, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def _hpca(self, x, pre, signal, w, scale):
        y = torch.relu(pre) if signal is None else signal
        m = w.shape[0]
        n = y.numel() // m
        w2 = w.reshape(m, -1)
        if rules.hpca_prefers_blocked(n, m, w2.shape[1], w.device.type):
            dw = rules.hpca_delta(self._patches(x), w2, y=self._patch_rows(y), form="blocked", scale=scale)
        else:
            yx = self._moments(x, y, w.shape)
            rows = self._patch_rows(y)
            dw = rules.hpca_finish(yx, rows.T @ rows, w2, n, scale)
        if self.reduce_sums is None:
            return dw
        # The update is a sum over patches divided by their count: pool both, then divide.
        total, count = dw * n, dw.new_tensor([float(n)])
        self.reduce_sums([total, count])
        return total / count.clamp_min(1)

    def _softhebb(self, x, pre, signal, w):
        y = rules.softhebb_signal(pre, self.inv_temperature) if signal is None else signal
        yx = self._moments(x, y, w.shape)
        yu = (y * pre).sum(dim=(0, 2, 3))
        dw = yx.addcmul_(w.reshape(w.shape[0], -1), yu[:, None], value=-1)
        if self.reduce_sums is not None:
            self.reduce_sums([dw])  # the raw update, before the layer's max-normalisation and rate
        return dw

    def _competitive(self, x, pre, signal, w, soft, scale):
        m = w.shape[0]
        if signal is None and not soft and self._covers_map(x):
            # fully connected WTA: sum the rows each neuron won rather than a dense one-hot product
            w2 = w.reshape(m, -1)
            qx, counts = torch.zeros_like(w2), w2.new_zeros(m)
            rules.add_winner_moments(x.flatten(1), pre.flatten(1).argmax(dim=1), qx, counts)
            if self.reduce_sums is not None:
                self.reduce_sums([qx, counts])
            return rules.weighted_mean_finish(qx, counts, counts, w2, scale)
        if signal is not None:
            r = signal
        elif soft:
            # pre = x·w/‖w‖, so cos = pre / ‖patch‖; patch norms from box sums of x²
            if self._covers_map(x):
                patch_norm = x.flatten(1).norm(dim=1)[:, None, None, None]
            else:
                # Σ over channels first, then a one-channel k x k box sum: 5-20x cheaper than convolving
                # x² with a (1, C, k, k) ones kernel
                ones = torch.ones(1, 1, *w.shape[2:], dtype=x.dtype, device=x.device)
                patch_norm = F.conv2d((x * x).sum(dim=1, keepdim=True), ones, stride=self.stride).sqrt()
            patch_norm = torch.where(patch_norm > 0, patch_norm, torch.ones_like(patch_norm))
            r = rules.soft_competition(pre, patch_norm, self.temperature)
        else:
            # argmax of cosine = argmax of pre, the patch norm being common to all neurons; the argmax runs
            # across channels 2x faster on the CPU in channels-last layout
            winners = pre.contiguous(memory_format=torch.channels_last).argmax(dim=1, keepdim=True)
            r = torch.zeros_like(pre).scatter_(1, winners, 1.0)
        q = r * r if soft else r
        r_sum = r.sum(dim=(0, 2, 3))
        sums = [self._moments(x, q, w.shape), q.sum(dim=(0, 2, 3)) if soft else r_sum, r_sum]
        if self.reduce_sums is not None:
            if sums[1] is sums[2]:
                sums[1] = sums[1].clone()  # reduced in place: one tensor must not be summed twice
            self.reduce_sums(sums)
        return rules.weighted_mean_finish(*sums, w.reshape(m, -1), scale)
