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
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from hebb.data import to_float
from hebb.errors import UserError
from hebb.finetune import reference_lr
from hebb.network import ARCHITECTURES, HebbNet, canonical_arch
from hebb.runtime import atomic_write

#: Format tag of a VAE pre-training's progress file (see `vae_pretrain`'s `resume`).
PROGRESS_FORMAT = "hebbir-vae-progress"

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
                 fit_input: bool = True, resume: str | Path | None = None) -> dict:
    """Pre-train the trunk of an all-G `net` (e.g. `build_network(rule="vae")`) as a β-VAE encoder.

    resume: a progress file. After every epoch the whole training state (encoder, decoder, optimizer, data
    order and noise generators, stats) is written there atomically once `on_epoch_end` has returned; a later
    call with the same settings and images continues after the last finished epoch, with the same result as
    an uninterrupted run. The file is removed when training ends; one written with other settings is refused
    (`UserError`).
    Returns: epochs, images, time_s, epoch_times_s, images_per_s, history (loss, mse, kl per epoch), and
    resumed_at_epoch when earlier epochs came from `resume`.
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
    first = 0
    resume = Path(resume) if resume is not None else None
    run = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": momentum, "beta": beta, "seed": seed,
           "images": len(images), "fingerprint": _fingerprint(images), "fit_input": fit_input}
    if resume is not None and resume.is_file():
        first, elapsed = _load_progress(resume, run, vae, optimizer, generator, stats, device)
        started -= elapsed
        stats["resumed_at_epoch"] = first
        if progress:
            tqdm.write(f"resuming VAE pre-training after epoch {first}/{epochs} ({resume})", file=sys.stderr)
    for epoch in range(first, epochs):
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
        if resume is not None:  # after the callback: its work is kept, and so is any random state it used
            _save_progress(resume, run, vae, optimizer, generator, stats, time.perf_counter() - started, device)
    net.eval()
    if resume is not None:
        resume.unlink(missing_ok=True)
    return _finish(stats, started)


def _fingerprint(images: torch.Tensor) -> list:
    """Shape and a position-weighted checksum of a strided sample of the images: enough to tell another image
    set (or the same images in another order, which changes the training) from this one."""
    step = max(1, len(images) // 1000)
    sums = images[::step].flatten(1).to(torch.int64).sum(1).cpu()
    return [list(images.shape), int((sums * torch.arange(1, len(sums) + 1)).sum())]


def _save_progress(path: Path, run: dict, vae: VAE, optimizer, generator, stats: dict, elapsed: float,
                   device: torch.device) -> None:
    state = {"format": PROGRESS_FORMAT, "run": run, "epoch": stats["epochs"], "elapsed_s": elapsed,
             "vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "order": generator.get_state(),
             "noise": torch.get_rng_state(), "stats": stats,
             "cuda_noise": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def vae_progress(path: str | Path) -> dict | None:
    """What an interrupted VAE pre-training's progress file holds (epoch done, epochs, epoch_times_s), or None
    when there is no readable one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return None
    if not isinstance(state, dict) or state.get("format") != PROGRESS_FORMAT:
        return None
    return {"epoch": int(state["epoch"]), "epochs": int(state["run"]["epochs"]),
            "epoch_times_s": list(state["stats"]["epoch_times_s"])}


def _load_progress(path: Path, run: dict, vae: VAE, optimizer, generator, stats: dict,
                   device: torch.device) -> tuple[int, float]:
    """Restore a progress file into the training state; (finished epochs, seconds they took)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"cannot read the VAE progress file {path} ({e}); remove it to start again") from None
    if not isinstance(state, dict) or state.get("format") != PROGRESS_FORMAT:
        raise UserError(f"{path} is not a VAE progress file; remove it to start again")
    if state["run"] != run:
        diff = ", ".join(f"{k} {state['run'].get(k)} -> {v}" for k, v in run.items() if state["run"].get(k) != v)
        raise UserError(f"{path} holds a VAE pre-training with other settings ({diff}); remove it to start again")
    vae.load_state_dict(state["vae"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["order"])
    torch.set_rng_state(state["noise"])
    if state["cuda_noise"] is not None:
        torch.cuda.set_rng_state(state["cuda_noise"], device)
    stats.update(state["stats"])
    return int(state["epoch"]), float(state["elapsed_s"])


def _finish(stats: dict, started: float) -> dict:
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in stats.items()}
    out["time_s"] = round(time.perf_counter() - started, 3)
    out["images_per_s"] = round(out["images"] * out["epochs"] / (sum(out["epoch_times_s"]) or 1e-9), 1)
    return out
