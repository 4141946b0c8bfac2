"""FAISS Flat vs Milvus Lite on random unit vectors: build time, single-query latency, batch throughput.

    OMP_NUM_THREADS=1 python bench/milvus_vs_faiss.py                 # 40,000 and 400,000 vectors of 256 floats
    OMP_NUM_THREADS=1 python bench/milvus_vs_faiss.py --sizes 40000,200000

Both sides are exact (faiss IndexFlatIP, Milvus FLAT with metric IP), so the neighbours must agree; the run
records the share of identical top-10 lists. Milvus goes through `retrieval.index.milvus_backend`, the code the
index uses (build = insert + flush + index + load). Writes bench/results/<date>-milvus-vs-faiss.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 50_000):  # in blocks: float64 draws of 400,000 x 256 would double the peak memory
        x = rng.standard_normal((min(50_000, n - s), d)).astype(np.float32)
        out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latency_ms(search, queries: np.ndarray, k: int) -> float:
    search(queries[:1], k)  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q[None], k)
        times.append(time.perf_counter() - t)
    return round(1000 * float(np.median(times)), 3)


def throughput(search, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    _, ids = search(queries, k)
    return round(len(queries) / (time.perf_counter() - t), 1), ids


def bench_size(n: int, d: int, k: int, singles: int, batch: int, index_type: str) -> dict:
    import faiss

    from retrieval.index import milvus_backend as mb
    from retrieval.index.manifest import Manifest

    vectors, queries = unit_vectors(n, d, 0), unit_vectors(max(singles, batch), d, 1)
    row: dict = {"n": n, "dim": d, "k": k}

    t = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(vectors)
    row["faiss_build_s"] = round(time.perf_counter() - t, 3)
    faiss_search = flat.search
    row["faiss_latency_ms"] = latency_ms(faiss_search, queries[:singles], k)
    row["faiss_qps_batch"], faiss_ids = throughput(faiss_search, queries[:batch], k)

    with tempfile.TemporaryDirectory(prefix="milvus-bench-") as tmp:
        items = [(f"img/{i}.jpg", None, f"{i:064x}") for i in range(n)]
        t = time.perf_counter()
        config = mb.create_collection(Path(tmp), {"uri": "milvus.db", "collection": "bench", "index_type": index_type},
                                      d, "bench", range(n), vectors, items)
        row["milvus_build_s"] = round(time.perf_counter() - t, 3)
        row["milvus_index"] = config["index_type"]
        del items
        manifest = Manifest(model_file="model.pt", model_checksum="bench", architecture="-", features={},
                            dimension=d, item_count=n, backend="milvus", milvus=config)
        backend = mb.MilvusBackend(Path(tmp), manifest)
        try:
            row["milvus_latency_ms"] = latency_ms(backend.search, queries[:singles], k)
            row["milvus_qps_batch"], milvus_ids = throughput(backend.search, queries[:batch], k)
        finally:
            backend.close()
    row["same_top_k"] = round(float(np.mean([set(a) == set(b) for a, b in zip(faiss_ids, milvus_ids)])), 4)
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="40000,400000", help="comma-separated collection sizes")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--singles", type=int, default=100, help="single queries timed for the median latency")
    p.add_argument("--batch", type=int, default=1000, help="queries of the throughput batch")
    p.add_argument("--milvus-index", default="FLAT", help="Milvus index type (FLAT: exact, like faiss Flat)")
    p.add_argument("--note", default="", help="recorded as is (e.g. what else ran on the machine)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)

    import faiss
    import milvus_lite
    import pymilvus

    from hebb.runtime import device_description, utc_now

    started = time.perf_counter()
    result = {
        "date": utc_now(),
        "machine": device_description("cpu"),
        "load": list(os.getloadavg()),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": {"faiss": faiss.__version__, "pymilvus": pymilvus.__version__,
                     "milvus_lite": getattr(milvus_lite, "__version__", None), "numpy": np.__version__},
        "note": args.note,
        "rows": [bench_size(int(n), args.dim, args.k, args.singles, args.batch, args.milvus_index)
                 for n in args.sizes.split(",")],
    }
    result["load_after"] = list(os.getloadavg())
    result["wall_s"] = round(time.perf_counter() - started, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{result['date'][:10]}-milvus-vs-faiss.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
