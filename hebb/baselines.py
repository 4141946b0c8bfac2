"""The VAE baseline on the 6-layer net (docs/NETWORKS.md#baselines).

- `vae_pretrain`: the trunk (layers 1..5) is the encoder of a β-VAE: a linear map from layer 5's 4096 units
  to 256 Gaussian latents (mean, log-variance), a mirror decoder back to the (normalised) image; loss
  MSE + 0.5·KL; SGD with Nesterov momentum 0.9, lr 1e-3 then halved every epoch in the second half, no L2.
  The reconstruction term is the per-pixel mean and the KL is divided by the pixel count too, i.e. the
  summed β-VAE loss scaled by 1/3072, which keeps plain SGD at lr 1e-3 stable.
  Then fine-tune the trunk like a Hebbian one. The decoder mirrors the 6-layer net's trunk only: architectures whose registry
  entry lists no "vae" rule are refused (`check_vae_arch`).

SGD from scratch and random frozen features are methods of the one training recipe (`hebb.recipes`).
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from hebb.data import to_float
from hebb.errors import UserError
from hebb.finetune import reference_lr
from hebb.network import ARCHITECTURES, HebbNet, canonical_arch

LATENTS = 256
#: Architectures the VAE baseline has a mirror decoder for (the registry's entries with rule "vae").
VAE_ARCHS = tuple(name for name, plan in ARCHITECTURES.items() if "vae" in plan.rules)


def check_vae_arch(arch: str) -> None:
    """A `UserError` unless the VAE baseline supports `arch` (its decoder mirrors the 6-layer trunk only)."""
    if canonical_arch(arch) not in VAE_ARCHS:  # an unknown name says so first
        raise UserError(f"VAE pre-training has a decoder for {', '.join(VAE_ARCHS)} only, not '{arch}'")


def _up(in_ch: int, out_ch: int, kernel: int, upsample: bool = False) -> list[nn.Module]:
    mods: list[nn.Module] = [nn.Upsample(scale_factor=2)] if upsample else []
    return mods + [nn.ConvTranspose2d(in_ch, out_ch, kernel, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]


class CifarDecoder(nn.Module):
    """Mirror of the 6-layer net's trunk: 256 latents -> 4096 -> 256x3x3 -> 192x5x5 -> 128x12x12 -> 96x14x14 -> 3x32x32."""

    def __init__(self, latents: int = LATENTS):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(latents, 4096, bias=False), nn.BatchNorm1d(4096), nn.ReLU())
        self.body = nn.Sequential(
            *_up(4096, 256, 3),                # 1 -> 3
            *_up(256, 192, 3),                 # 3 -> 5
            *_up(192, 128, 3, upsample=True),  # 5 -> 10 -> 12
            *_up(128, 96, 3),                  # 12 -> 14
            nn.Upsample(scale_factor=2),       # 14 -> 28
            nn.ConvTranspose2d(96, 3, 5),      # 28 -> 32, linear output in normalised pixel units
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(z).view(len(z), -1, 1, 1))


class VAE(nn.Module):
    """β-VAE around a HebbNet trunk: encoder = layers 1..5, 256 Gaussian latents, mirror decoder."""

    def __init__(self, net: HebbNet, latents: int = LATENTS):
        super().__init__()
        check_vae_arch(net.arch)
        depth = len(ARCHITECTURES[net.arch].layers)
        if net.num_feature_layers != depth or set(net.spec[:depth]) != {"G"}:
            raise UserError(f"VAE pre-training needs the whole trunk trainable by backprop (spec GGGGG.., "
                            f"{depth} layers), got spec '{net.spec}' cut after layer {net.num_feature_layers}")
        self.net = net
        self.to_latent = nn.Linear(4096, 2 * latents)
        self.decoder = CifarDecoder(latents)

    def loss(self, x: torch.Tensor, beta: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, reconstruction MSE, KL) for float images x in [0, 1]; see the module docstring."""
        target = self.net.preprocess(x)
        mu, logvar = self.to_latent(self.net.features(x)).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = self.decoder(z)
        mse = F.mse_loss(recon, target)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1).mean() / target[0].numel()
        return mse + beta * kl, mse, kl


def vae_pretrain(net: HebbNet, images: torch.Tensor, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 momentum: float = 0.9, beta: float = 0.5, device: torch.device | str = "cpu", seed: int = 0,
                 progress: bool = True, on_epoch_end: Callable[[int, HebbNet, dict], None] | None = None,
                 fit_input: bool = True) -> dict:
    """Pre-train the trunk of an all-G `net` (e.g. `build_network(rule="vae")`) as a β-VAE encoder.

    Returns: epochs, images, time_s, epoch_times_s, images_per_s, history (loss, mse, kl per epoch).
    Non-finite losses stop training with a `UserError`.
    """
    device = torch.device(device)
    if epochs < 1 or batch_size < 2 or not lr > 0:
        raise UserError(f"need epochs >= 1, batch size >= 2 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if len(images) < 2:
        raise UserError(f"VAE pre-training needs at least 2 images, got {len(images)}")
    torch.manual_seed(seed)
    vae = VAE(net).to(device)
    images = images.to(device)
    if fit_input:
        net.fit_input(images, seed=seed)
    optimizer = torch.optim.SGD([p for p in vae.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                                nesterov=momentum > 0)
    generator = torch.Generator(device=device).manual_seed(seed)
    stats = {"epochs": 0, "images": len(images), "batch_size": batch_size, "lr": lr, "beta": beta,
             "epoch_times_s": [], "history": []}
    started = time.perf_counter()
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = reference_lr(epoch, epochs, lr)
        vae.train()
        t0 = time.perf_counter()
        sums = torch.zeros(3, device=device)
        seen = 0
        order = torch.randperm(len(images), generator=generator, device=device)
        bar = tqdm(total=len(images), desc=f"pretrain vae epoch {epoch + 1}/{epochs}", unit="img",
                   disable=not progress, leave=False)
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            total, mse, kl = vae.loss(to_float(images[idx], device), beta)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            sums += torch.stack([total.detach(), mse.detach(), kl.detach()]) * len(idx)
            seen += len(idx)
            bar.update(len(idx))
        bar.close()
        loss, mse, kl = (sums / max(seen, 1)).tolist()  # one host sync per epoch
        if not all(map(lambda v: v == v and abs(v) != float("inf"), (loss, mse, kl))):
            raise UserError(f"VAE pre-training diverged in epoch {epoch + 1} (loss {loss}); try a smaller --lr")
        stats["epoch_times_s"].append(round(time.perf_counter() - t0, 3))
        stats["epochs"] = epoch + 1
        stats["history"].append({"epoch": epoch + 1, "loss": round(loss, 5), "mse": round(mse, 5),
                                 "kl": round(kl, 5)})
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f} (mse {mse:.4f}, kl {kl:.4f})",
                       file=sys.stderr)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, net, _finish(stats, started))
    net.eval()
    return _finish(stats, started)


def _finish(stats: dict, started: float) -> dict:
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in stats.items()}
    out["time_s"] = round(time.perf_counter() - started, 3)
    out["images_per_s"] = round(out["images"] * out["epochs"] / (sum(out["epoch_times_s"]) or 1e-9), 1)
    return out
