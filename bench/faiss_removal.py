"""Removing items from an exact FAISS index: zero rows + Flat rebuild (what `hebbir index sync` does) against
IndexIDMap2.remove_ids, 40,000 x 256 unit vectors, 100 removed, one thread. Prints median times."""
import time, numpy as np, faiss
faiss.omp_set_num_threads(1)
rng = np.random.default_rng(0)
x = rng.standard_normal((40000, 256)).astype(np.float32); x /= np.linalg.norm(x, axis=1, keepdims=True)
gone = rng.choice(40000, 100, replace=False)
res = {}
for rnd in range(3):
    t = time.perf_counter(); y = x.copy(); y[gone] = 0; idx = faiss.IndexFlatIP(256); idx.add(y); res.setdefault('zero rows + Flat rebuild', []).append(time.perf_counter() - t)
    m = faiss.IndexIDMap2(faiss.IndexFlatIP(256)); m.add_with_ids(x, np.arange(40000))
    t = time.perf_counter(); m.remove_ids(gone.astype(np.int64)); res.setdefault('IDMap2 remove_ids', []).append(time.perf_counter() - t)
    t = time.perf_counter(); faiss.write_index(idx, '/tmp/x.faiss'); res.setdefault('write index.faiss', []).append(time.perf_counter() - t)
for k, v in res.items(): print(f"{k}: median {np.median(v)*1000:.1f} ms")
q = x[:1000]
a = idx.search(q, 10); b = m.search(q, 10)
print('same top-10 for surviving items:', np.mean([set(a[1][i]) - set(gone) == set(b[1][i]) - set(gone) for i in range(1000)]))
