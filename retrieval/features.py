"""Feature extractors: a trained network + a layer + pooling + optional PCA projection + L2 normalisation.

Pipeline for a batch of uint8 images: `net.features(x, layer)` -> spatial pooling -> L2 normalisation ->
(PCA or PCA-whitening fitted on the database, to `dim` components) -> L2 normalisation. Inner products of the
output rows are cosines, which is what the index searches.

Poolings of a (C, H, W) activation: `flatten` (C*H*W), `avg` / `max` (global, C), `avgmax` (both, 2C),
`grid` (2x2 average grid, 4C). Projections: `none`, `pca`, `pcaw` (PCA-whitening).

With `head_weight` W > 0 (a fine-tuned or probed network, features of the layer its classifier reads), the
read-out head's class probabilities, L2-normalised and scaled by W, are appended before the final L2
normalisation: the labels the head learned from then shape the ranking as well as the layer's features.

What `pooling="auto"` (and projection / dim) mean for a layer is the architecture registry's choice
(`hebb.architectures`, each entry's `reductions`, with the measurements behind them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hebb.errors import UserError

POOLINGS = ("flatten", "avg", "max", "avgmax", "grid")
PROJECTIONS = ("none", "pca", "pcaw")

# Images used to fit the projection (a seeded sample of the database when it is larger).
FIT_SAMPLES = 10_000


def _as_uint8_tensor(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {tuple(images.shape)} {images.dtype}")
    return images


def default_reduction(net, layer: int) -> tuple[str, str, int | None]:
    """(pooling, projection, dim) that "auto" means for `layer` of `net`'s architecture (the registry's)."""
    from hebb.architectures import architecture

    return architecture(net.arch).reduction(layer)


def input_side(net) -> int:
    """The side in pixels of the square images `net` takes."""
    size = getattr(net, "input_size", 32)
    if isinstance(size, (tuple, list)):
        size = size[-1]
    return int(size)


def pool(act: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool a (N, C, H, W) (or (N, C)) activation into (N, d) vectors."""
    if act.ndim == 2:
        act = act[:, :, None, None]
    if pooling == "flatten":
        return act.flatten(1)
    if pooling == "avg":
        return act.mean(dim=(2, 3))
    if pooling == "max":
        return act.amax(dim=(2, 3))
    if pooling == "avgmax":
        return torch.cat([act.mean(dim=(2, 3)), act.amax(dim=(2, 3))], dim=1)
    if pooling == "grid":
        side = min(2, act.shape[2], act.shape[3])
        return F.adaptive_avg_pool2d(act, side).flatten(1)
    raise UserError(f"unknown pooling '{pooling}' (choose from {', '.join(POOLINGS)})")


def _orthonormal(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of y (D, q) through the small q x q Gram matrix, applied twice.

    Used instead of QR: on a busy CPU, torch's QR of a tall matrix took seconds, the q x q eigh milliseconds.
    The second pass (as in CholeskyQR2) restores the orthogonality the first loses on ill-conditioned y.
    """
    for _ in range(2):
        g = (y.T @ y).double()
        evals, evecs = torch.linalg.eigh(g)
        evals = evals.clamp_min(evals.max() * 1e-12)
        y = (y.double() @ (evecs / evals.sqrt())).to(y.dtype)
    return y


def fit_pca(x: torch.Tensor, dim: int, whiten: bool = False, n_iter: int = 3) -> dict[str, torch.Tensor]:
    """PCA of the rows of `x` (n, D) to `dim` components: {"mean" (D,), "components" (dim, D), "scale" (dim,)}.

    Exact (eigen-decomposition of the covariance) up to D = 1024; above, randomised subspace iteration,
    whose cost grows with n*D*dim instead of D^3 (seconds instead of minutes for layer-1..3 activations).
    Whitening divides each component by its standard deviation, regularised so that near-zero variances do
    not blow up noise.
    """
    n, d_in = x.shape
    dim = min(dim, d_in, n)
    exact = d_in <= 1024
    x = x.double() if exact else x.float()
    mean = x.mean(dim=0)
    xc = x - mean
    if exact:
        cov = xc.T @ xc / max(n - 1, 1)
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[:dim]
        evals, comps = evals[order], evecs[:, order].T
    else:
        q = min(dim + 16, d_in, n)
        gen = torch.Generator(device=x.device).manual_seed(0)
        basis = _orthonormal(torch.randn(d_in, q, generator=gen, device=x.device))
        for _ in range(n_iter):  # orthonormalising after each product keeps the small directions alive
            basis = _orthonormal(xc.T @ _orthonormal(xc @ basis))
        proj = (xc @ basis).double()
        evals, evecs = torch.linalg.eigh(proj.T @ proj / max(n - 1, 1))
        order = torch.argsort(evals, descending=True)[:dim]
        evals, comps = evals[order], (basis.double() @ evecs[:, order]).T
    evals = evals.clamp_min(0)
    if whiten:
        scale = 1.0 / torch.sqrt(evals + 1e-3 * evals[0].clamp_min(1e-12))
    else:
        scale = torch.ones_like(evals)
    return {"mean": mean.float(), "components": comps.float().contiguous(), "scale": scale.float()}


class FeatureExtractor:
    """`net` + `layer` + pooling + projection + L2 normalisation, on `device`, in batches of `batch_size`."""

    def __init__(self, net, layer: int, pooling: str = "auto", dim: int | None = None, device="cpu",
                 batch_size: int = 256, projection: str = "auto", progress: bool = False,
                 head_weight: float = 0.0):
        n_layers = getattr(net, "num_feature_layers", 5)
        if not isinstance(layer, int) or not 1 <= layer <= n_layers:
            raise UserError(f"layer must be 1..{n_layers}, got {layer}")
        if not head_weight >= 0:
            raise UserError(f"the head weight must be 0 or more, got {head_weight}")
        if head_weight > 0 and layer != n_layers:
            raise UserError(f"the read-out head reads layer {n_layers}: features with the head need that layer, "
                            f"got {layer}")
        default_pooling, default_projection, default_dim = default_reduction(net, layer)
        if pooling in (None, "auto"):
            pooling = default_pooling
        if pooling not in POOLINGS:
            raise UserError(f"unknown pooling '{pooling}' (choose from auto, {', '.join(POOLINGS)})")
        if projection in (None, "auto"):
            projection = default_projection if dim is None or dim > 0 else "none"
        if projection not in PROJECTIONS:
            raise UserError(f"unknown projection '{projection}' (choose from auto, {', '.join(PROJECTIONS)})")
        if projection != "none" and dim is None:
            dim = default_dim or 256
        if dim is not None and dim <= 0:
            raise UserError(f"dim must be positive, got {dim}")
        self.net = net.to(device).eval()
        self.layer = layer
        self.pooling = pooling
        self.projection = projection
        self.requested_dim = dim if projection != "none" else None
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.state: dict[str, torch.Tensor] | None = None
        self.head_weight = float(head_weight)
        self.side = input_side(net)
        self.pooled_dim = self._probe_pooled_dim()
        if self.projection == "none" and self.pooled_dim > 8192:
            raise UserError(f"layer {layer} with pooling '{pooling}' gives {self.pooled_dim:,} floats per image: "
                            f"too large to index raw; add a projection (e.g. --dim 256) or another pooling")

    # ------------------------------------------------------------------ shape and config

    def _probe_pooled_dim(self) -> int:
        with torch.inference_mode():
            x = torch.zeros(2, 3, self.side, self.side, device=self.device)
            return int(pool(self.net.features(x, self.layer), self.pooling).shape[1])

    @property
    def needs_fit(self) -> bool:
        return self.projection != "none" and self.state is None

    @property
    def projected_dim(self) -> int:
        """Length of the layer's part of the output vectors (after pooling and projection)."""
        if self.projection == "none":
            return self.pooled_dim
        if self.state is not None:
            return int(self.state["components"].shape[0])
        return min(self.requested_dim, self.pooled_dim)

    @property
    def dim(self) -> int:
        """Length of the output vectors."""
        return self.projected_dim + (self.net.num_classes if self.head_weight > 0 else 0)

    def config(self) -> dict[str, Any]:
        config = {"layer": self.layer, "pooling": self.pooling, "projection": self.projection,
                  "dim": self.projected_dim, "pooled_dim": self.pooled_dim, "input_size": self.side}
        if self.head_weight > 0:  # absent otherwise, so that configs written before the option stay equal
            config.update(head_weight=self.head_weight, classes=self.net.num_classes)
        return config

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The fitted projection as numpy arrays (empty when there is none)."""
        return {k: v.cpu().numpy() for k, v in (self.state or {}).items()}

    @classmethod
    def from_config(cls, net, config: dict, state: dict | None = None, device="cpu",
                    batch_size: int = 256, progress: bool = False) -> "FeatureExtractor":
        """Rebuild an extractor saved with `config()` and `state_arrays()`."""
        ext = cls(net, int(config["layer"]), pooling=config["pooling"], projection=config["projection"],
                  dim=config["dim"] if config["projection"] != "none" else None, device=device,
                  batch_size=batch_size, progress=progress, head_weight=float(config.get("head_weight", 0.0)))
        if ext.projection != "none":
            if not state:
                raise UserError("the index lacks its projection state (projection.npz)")
            ext.state = {k: torch.as_tensor(np.asarray(v)).to(ext.device) for k, v in state.items()}
        return ext

    # ------------------------------------------------------------------ computing

    def _batches(self, images: torch.Tensor, desc: str):
        starts = range(0, len(images), self.batch_size)
        if self.progress and len(starts) > 1:
            starts = tqdm(starts, desc=desc, unit="batch", leave=False)
        for s in starts:
            yield images[s:s + self.batch_size]

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.side or x.shape[-2] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True, align_corners=False)
        return x

    @torch.inference_mode()
    def pooled(self, images) -> torch.Tensor:
        """Pooled, L2-normalised activations (N, pooled_dim) on the CPU, before any projection."""
        images = _as_uint8_tensor(images)
        out = []
        for batch in self._batches(images, "features for the PCA fit"):
            x = self._resize(batch.to(self.device, non_blocking=True).float().div_(255.0))
            v = pool(self.net.features(x, self.layer), self.pooling).float()
            out.append(F.normalize(v, dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.pooled_dim)

    def fit(self, images, max_samples: int = FIT_SAMPLES, seed: int = 0) -> "FeatureExtractor":
        """Fit the projection on (a seeded sample of at most `max_samples` of) the database images."""
        if self.projection == "none":
            return self
        images = _as_uint8_tensor(images)
        if len(images) > max_samples:
            idx = np.sort(np.random.default_rng(seed).choice(len(images), max_samples, replace=False))
            images = images[torch.from_numpy(idx)]
        if len(images) < 2:
            raise UserError("need at least 2 images to fit the PCA projection")
        pooled = self.pooled(images).to(self.device)
        self.state = fit_pca(pooled, self.requested_dim, whiten=self.projection == "pcaw")
        return self

    def pooled_activations(self, acts: torch.Tensor) -> torch.Tensor:
        """`pooled` for activations of the layer already computed: (N, C, H, W), or flattened (N, C·H·W)."""
        acts = acts.reshape(len(acts), *self.net.feature_shape(self.layer))
        return F.normalize(pool(acts, self.pooling).float(), dim=1)

    def fit_activations(self, acts: torch.Tensor, max_samples: int = FIT_SAMPLES, seed: int = 0) -> "FeatureExtractor":
        """`fit` on the layer's activations of the database images (the same seeded sample as `fit`)."""
        if self.projection == "none":
            return self
        if len(acts) > max_samples:
            idx = np.sort(np.random.default_rng(seed).choice(len(acts), max_samples, replace=False))
            acts = acts[torch.from_numpy(idx)]
        if len(acts) < 2:
            raise UserError("need at least 2 images to fit the PCA projection")
        pooled = self.pooled_activations(acts).to(self.device)
        self.state = fit_pca(pooled, self.requested_dim, whiten=self.projection == "pcaw")
        return self

    @torch.inference_mode()
    def transform_activations(self, acts: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """`transform` for activations of the layer already computed."""
        out = []
        for i in range(0, len(acts), batch_size):
            a = acts[i:i + batch_size].to(self.device)
            out.append(self._output(a, self.pooled_activations(a)).cpu())
        return (torch.cat(out) if out else torch.zeros(0, self.dim)).numpy().astype(np.float32, copy=False)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Apply the fitted projection and the final L2 normalisation to pooled vectors."""
        if self.projection == "none":
            return F.normalize(pooled, dim=1)
        if self.state is None:
            raise RuntimeError("FeatureExtractor.fit() must run before transform() with a PCA projection")
        st = self.state
        z = (pooled.to(st["mean"].device) - st["mean"]) @ st["components"].T * st["scale"]
        return F.normalize(z, dim=1)

    @torch.inference_mode()
    def transform(self, images) -> np.ndarray:
        """Feature vectors (N, dim) float32, rows L2-normalised."""
        out = [self._output(acts, pooled).cpu() for acts, pooled in self._activations(images)]
        return (torch.cat(out) if out else torch.zeros(0, self.dim)).numpy().astype(np.float32, copy=False)

    def _activations(self, images):
        """(layer activations, their pooled L2-normalised vectors) batch by batch."""
        for batch in self._batches(_as_uint8_tensor(images), "features"):
            x = self._resize(batch.to(self.device, non_blocking=True).float().div_(255.0))
            acts = self.net.features(x, self.layer)
            yield acts, F.normalize(pool(acts, self.pooling).float(), dim=1)

    @torch.inference_mode()
    def transform_with_probs(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(feature vectors without the head, the read-out head's class probabilities) in one pass: both
        retrievals, with and without the head (`append_head`), at the cost of one. Needs the classifier's layer."""
        if self.layer != getattr(self.net, "num_feature_layers", 5):
            raise UserError(f"the read-out head reads layer {self.net.num_feature_layers}, not {self.layer}")
        vectors, probs = [], []
        for acts, pooled in self._activations(images):
            vectors.append(self.project(pooled).cpu())
            probs.append(self.net.classifier(acts.flatten(1)).float().softmax(1).cpu())
        if not vectors:
            return np.zeros((0, self.projected_dim), np.float32), np.zeros((0, self.net.num_classes), np.float32)
        return torch.cat(vectors).numpy(), torch.cat(probs).numpy()

    def _output(self, acts: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The output rows from a batch's layer activations and their pooled vectors."""
        out = self.project(pooled)
        if self.head_weight == 0:
            return out
        probs = self.net.classifier(acts.flatten(1).to(out.device)).float().softmax(1)
        return append_head(out, probs, self.head_weight)


def append_head(vectors, probs, weight: float):
    """Rows of `vectors` (L2-normalised features) with the class probabilities `probs`, L2-normalised and
    scaled by `weight`, appended, then L2-normalised again: what an index built with `--head-weight` holds.
    Takes and returns torch tensors or numpy arrays."""
    as_numpy = isinstance(vectors, np.ndarray)
    v = torch.as_tensor(vectors).float()
    p = torch.as_tensor(probs).float().to(v.device)
    out = F.normalize(torch.cat([v, weight * F.normalize(p, dim=1)], 1), dim=1)
    return out.numpy() if as_numpy else out


def describe(config: dict) -> str:
    """One line such as 'layer 3, flatten -> pca 256 (4800 -> 256)'."""
    proj = "" if config["projection"] == "none" else f" -> {config['projection']} {config['dim']}"
    line = f"layer {config['layer']}, {config['pooling']}{proj} ({config['pooled_dim']} -> {config['dim']} floats)"
    if config.get("head_weight"):
        line += f" + the read-out head's {config['classes']} class probabilities x{config['head_weight']:g}"
    return line

