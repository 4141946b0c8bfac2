"""Serving paths: feature extraction, JPEG decoding and exact search, each with an in-run baseline.

    extract   retrieval.features.FeatureExtractor.transform at layer 5 (uint8 in host memory -> vectors),
              against the bare `net.features` forward on device-resident float batches
    decode    hebb.images.load_image (+ image_to_array) on JPEG bytes in memory, one thread, against plain PIL
    search    exact k-NN over 40,000 random unit vectors: torch (matmul + topk), retrieval.search.TorchBackend,
              faiss IndexFlatIP when importable; queries batched and one at a time
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench import flops
from bench.timing import time_fn, time_interleaved
from hebb.network import build_network


def forward_macs_per_image(layer: int = 5) -> int:
    return sum(w["forward_macs"] for w in flops.network_work(batch=1)["layers"][:layer])


def extraction(images: torch.Tensor, device: torch.device, layer: int = 5, batch_size: int = 256,
               fit_images: int = 1024) -> dict:
    """Images/s of FeatureExtractor.transform and of the bare forward, on the same uint8 images."""
    from retrieval.features import FeatureExtractor

    torch.manual_seed(0)
    net = build_network(rule="hpca").to(device).eval()
    ext = FeatureExtractor(net, layer, device=device, batch_size=batch_size)
    ext.fit(images[:fit_images])
    n = len(images)
    x_dev = images.to(device)

    @torch.inference_mode()
    def bare():
        for s in range(0, n, batch_size):
            net.features(x_dev[s:s + batch_size].float().div_(255.0), layer)

    vecs = ext.transform(images[:batch_size])
    # interleaved rounds, so that a busy phase of a shared machine does not land on one of the two only
    times = time_interleaved({"extract": lambda: ext.transform(images), "bare": bare}, device, repeats=3)
    t, tb = times["extract"], times["bare"]
    macs = forward_macs_per_image(layer)
    return {"n_images": n, "layer": layer, "batch": batch_size, "config": ext.config(), "dim": int(vecs.shape[1]),
            "extract_s": t, "extract_img_per_s": n / t, "bare_forward_img_per_s": n / tb,
            "forward_gmac_per_image": macs / 1e9, "bare_forward_gflops": 2 * macs * n / tb / 1e9}


def jpeg_samples(archive: Path | None, count: int) -> tuple[list[bytes], str]:
    """`count` JPEG files as bytes: the first ones of the CIFAR archive, else random 32x32 images encoded."""
    if archive is not None and archive.is_file():
        out = []
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(".jpg"):
                    out.append(tar.extractfile(member).read())
                    if len(out) >= count:
                        break
        return out, f"CIFAR-10 JPEGs from {archive.name}"
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
        out.append(buf.getvalue())
    return out, "random 32x32 images encoded as JPEG (quality 75)"


def decoding(archive: Path | None, count: int = 2000) -> dict:
    """Images/s of the project's loader (one thread), and of bare PIL decoding of the same bytes."""
    from PIL import Image

    from hebb.images import image_to_array, load_image

    blobs, source = jpeg_samples(archive, count)

    def project():
        for b in blobs:
            image_to_array(load_image(b), 32)

    def bare():
        for b in blobs:
            np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))

    cpu = torch.device("cpu")
    tp = time_fn(project, cpu, warmup=1, repeats=3)["median_s"]
    tb = time_fn(bare, cpu, warmup=1, repeats=3)["median_s"]
    return {"n_images": len(blobs), "source": source, "threads": 1, "load_image_img_per_s": len(blobs) / tp,
            "pil_img_per_s": len(blobs) / tb, "overhead_vs_pil": tp / tb}


def _torch_search(db: torch.Tensor, q: torch.Tensor, k: int):
    return torch.topk(q @ db.T, k, dim=1)


def search(device: torch.device, n_db: int = 40_000, dim: int = 256, k: int = 10, n_batched: int = 1000,
           n_single: int = 200) -> dict:
    """Queries/s of exact inner-product search, batched (n_batched at once) and one query at a time."""
    g = torch.Generator(device="cpu").manual_seed(0)
    db_cpu = F.normalize(torch.randn(n_db, dim, generator=g), dim=1)
    q_cpu = F.normalize(torch.randn(n_batched, dim, generator=g), dim=1)
    db, q = db_cpu.to(device), q_cpu.to(device)
    out = {"n_db": n_db, "dim": dim, "k": k, "n_batched": n_batched, "n_single": n_single,
           "gmac_per_query": n_db * dim / 1e9, "db_mbytes": n_db * dim * 4 / 1e6}

    t = time_fn(lambda: _torch_search(db, q, k), device, warmup=1, repeats=5)["median_s"]
    out["torch_batched_qps"] = n_batched / t
    out["torch_batched_gflops"] = 2 * n_db * dim * n_batched / t / 1e9

    def singles():
        for i in range(n_single):
            _torch_search(db, q[i:i + 1], k)

    t = time_fn(singles, device, warmup=1, repeats=3)["median_s"]
    out["torch_single_qps"] = n_single / t
    out["torch_single_gbs"] = n_single * n_db * dim * 4 / t / 1e9  # each single query reads the whole db
    reference = _torch_search(db, q, k).indices.cpu()

    try:
        from retrieval.search import TorchBackend
    except ImportError as exc:  # pragma: no cover - depends on the checkout
        out["backend_error"] = str(exc)
    else:
        backend = TorchBackend(db_cpu.numpy(), device=device)
        qn = q_cpu.numpy()
        t = time_fn(lambda: backend.search(qn, k), device, warmup=1, repeats=5)["median_s"]
        out["backend_batched_qps"] = n_batched / t
        t = time_fn(lambda: [backend.search(qn[i:i + 1], k) for i in range(n_single)], device, warmup=1,
                    repeats=3)["median_s"]
        out["backend_single_qps"] = n_single / t

    try:
        import faiss
    except ImportError:
        out["faiss"] = "not installed"
    else:
        index = faiss.IndexFlatIP(dim)
        index.add(db_cpu.numpy())
        qn = q_cpu.numpy()
        cpu = torch.device("cpu")
        t = time_fn(lambda: index.search(qn, k), cpu, warmup=1, repeats=5)["median_s"]
        out["faiss_batched_qps"] = n_batched / t
        t = time_fn(lambda: [index.search(qn[i:i + 1], k) for i in range(n_single)], cpu, warmup=1,
                    repeats=3)["median_s"]
        out["faiss_single_qps"] = n_single / t
        _, ids = index.search(qn, k)
        out["faiss_top1_agrees_with_torch"] = float((torch.from_numpy(ids[:, 0]) == reference[:, 0]).float().mean())
    out["search_qps"] = out["torch_batched_qps"]
    return out
