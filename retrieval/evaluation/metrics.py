"""Retrieval and classification metrics, exactly as docs/EVALUATION.md#metrics defines them.

A query's ranking is a row of 0/1 relevance flags `ranked_rel` (1 = the i-th result has the query's class);
`n_relevant` is R_q, the number of relevant items in the database (the query itself excluded when it is in the
database). Conventions, the same in every function:

- k larger than the ranking given means the whole ranking (k is clipped to its length K).
- A query with R_q = 0 has AP 0 (there is nothing to find), and contributes 0 to mAP.
- Ties in score are broken by database index, lower first (a stable sort), so rankings are reproducible.

`rank_database` ranks a whole database for many queries by inner product (cosine on L2-normalised features)
and computes every per-query number the reports need, a chunk of queries at a time, on the GPU when asked,
so that the Q x N score matrix never exists at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hebb.errors import UserError

#: Recall levels of the interpolated precision-recall curve (the standard 11 points).
RECALL_LEVELS = np.linspace(0.0, 1.0, 11)
#: Cut-offs of the default precision@k curve (clipped to the database size).
CURVE_KS = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4000)


def _as_rel(ranked_rel) -> np.ndarray:
    rel = np.asarray(ranked_rel)
    if rel.ndim != 2:
        raise UserError(f"ranked_rel must be a (queries, K) array, got shape {rel.shape}")
    return rel.astype(np.float64, copy=False)


def _check_k(k: int) -> int:
    if int(k) < 1:
        raise UserError(f"k must be at least 1, got {k}")
    return int(k)


def precision_at_k(ranked_rel, k: int) -> np.ndarray:
    """P@k per query: (1/k) Σ_{i≤k} rel_i; k larger than the ranking means the whole ranking."""
    rel = _as_rel(ranked_rel)
    k = min(_check_k(k), rel.shape[1])
    if k == 0:
        return np.zeros(rel.shape[0])
    return rel[:, :k].sum(axis=1) / k


def average_precision(ranked_rel, n_relevant, k: int | None = None) -> np.ndarray:
    """AP@k per query: (1/min(k, R_q)) Σ_{i≤k} rel_i · P@i; k=None means the whole ranking; R_q = 0 gives 0."""
    rel = _as_rel(ranked_rel)
    n_rel = np.asarray(n_relevant, dtype=np.float64).reshape(-1)
    if n_rel.shape[0] != rel.shape[0]:
        raise UserError(f"n_relevant has {n_rel.shape[0]} entries for {rel.shape[0]} queries")
    k = rel.shape[1] if k is None else min(_check_k(k), rel.shape[1])
    rel = rel[:, :k]
    prec = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    norm = np.minimum(k, n_rel)
    total = (rel * prec).sum(axis=1)
    return np.divide(total, norm, out=np.zeros_like(total), where=norm > 0)


def mean_average_precision(ranked_rel, n_relevant, k: int | None = None) -> float:
    """mAP@k: the mean of `average_precision` over queries (k=None: over the whole ranking, i.e. mAP@all)."""
    return float(average_precision(ranked_rel, n_relevant, k).mean())


def precision_curve(ranked_rel, ks=CURVE_KS) -> dict[int, float]:
    """{k: mean P@k} for the cut-offs `ks` that fit in the ranking."""
    rel = _as_rel(ranked_rel)
    return {int(k): float(precision_at_k(rel, k).mean()) for k in ks if k <= rel.shape[1]}


def precision_recall_curve(ranked_rel, n_relevant, recall_levels=RECALL_LEVELS) -> np.ndarray:
    """Interpolated precision at each recall level, averaged over queries.

    Interpolated precision at recall r = the highest precision at any rank whose recall is at least r
    (0 when the ranking never reaches r). Pass the full ranking for a meaningful curve.
    """
    rel = _as_rel(ranked_rel)
    n_rel = np.asarray(n_relevant, dtype=np.float64).reshape(-1)
    return _interpolated_pr(torch.from_numpy(rel), torch.from_numpy(n_rel),
                            torch.as_tensor(np.asarray(recall_levels, dtype=np.float64))).mean(0).numpy()


def topk_accuracy(logits, labels, ks=(1, 5)) -> dict[int, float]:
    """{k: fraction of samples whose true label is among the k highest logits} (top-1, top-5, ...)."""
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels).reshape(-1, 1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise UserError(f"logits must be (N, classes) with N = {labels.shape[0]}, got {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        return {int(k): 0.0 for k in ks}
    from hebb.finetune import topk_correct  # the one top-k count, shared with training

    for k in ks:
        _check_k(k)
    correct = topk_correct(logits, labels.reshape(-1), topk=tuple(int(k) for k in ks))
    return {int(k): correct[f"top{int(k)}"].item() / logits.shape[0] for k in ks}


# ----------------------------------------------------------------------------------------- whole database


@dataclass
class Ranking:
    """Per-query results of ranking a database for a set of queries (arrays have one row per query)."""

    n_relevant: np.ndarray                      # (Q,) R_q
    ap_all: np.ndarray                          # (Q,) AP over the full ranking
    ap_at_r: np.ndarray                         # (Q,) AP@R_q (the ranking cut at the query's own R_q)
    ap_at: dict[int, np.ndarray]                # {k: (Q,) AP@k}
    precision_at: dict[int, np.ndarray]         # {k: (Q,) P@k}
    pr_precision: np.ndarray                    # (Q, levels) interpolated precision
    recall_levels: np.ndarray = field(default_factory=lambda: RECALL_LEVELS.copy())
    top_indices: np.ndarray | None = None       # (Q, k) database indices of the best k results
    top_scores: np.ndarray | None = None        # (Q, k) their inner products

    def summary(self) -> dict:
        """Mean metrics with their public names: map@K, map@R, map@all, p@K, and the PR curve."""
        out = {f"map@{k}": float(v.mean()) for k, v in sorted(self.ap_at.items())}
        out["map@R"] = float(self.ap_at_r.mean())
        out["map@all"] = float(self.ap_all.mean())
        out["p@k"] = {str(k): float(v.mean()) for k, v in sorted(self.precision_at.items())}
        out["pr_curve"] = {"recall": [float(r) for r in self.recall_levels],
                           "precision": [float(p) for p in self.pr_precision.mean(0)]}
        out["queries"] = int(len(self.n_relevant))
        return out


def _interpolated_pr(rel: torch.Tensor, n_rel: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """(Q, K) relevance, (Q,) R_q, (L,) recall levels -> (Q, L) interpolated precision (0 where unreached)."""
    q, k = rel.shape
    if k == 0:
        return torch.zeros(q, len(levels), dtype=torch.float64)
    hits = rel.cumsum(1)
    prec = hits / torch.arange(1, k + 1, device=rel.device, dtype=hits.dtype)
    # best precision at this rank or any later one
    best_after = prec.flip(1).cummax(1).values.flip(1)
    # first rank whose hit count reaches r * R_q (R_q is an integer, so compare counts, not ratios)
    need = torch.ceil(levels.to(rel.device, hits.dtype)[None, :] * n_rel[:, None].to(hits.dtype) - 1e-9)
    pos = torch.searchsorted(hits.contiguous(), need.contiguous(), side="left")
    reached = pos < k
    vals = best_after.gather(1, pos.clamp(max=k - 1))
    vals = torch.where(reached & (n_rel[:, None] > 0), vals, torch.zeros_like(vals))
    return vals.double().cpu()


def _auto_chunk(n_db: int, device: torch.device) -> int:
    # elements of the (chunk x N) score matrix per step; each costs ~50 bytes across the working arrays
    budget = 64_000_000 if device.type == "cuda" else 2_000_000
    return max(1, budget // max(1, n_db))


def rank_database(query_feats, db_feats, query_labels, db_labels, k: int | None = None,
                  device: str | torch.device = "cpu", chunk: int | None = None, exclude=None,
                  ap_ks=(100,), curve_ks=CURVE_KS, recall_levels=RECALL_LEVELS) -> Ranking:
    """Rank the whole database for every query by inner product and compute the per-query metrics.

    query_feats (Q, d), db_feats (N, d): numpy arrays or tensors (L2-normalised for cosine).
    k: how many best database indices/scores to keep per query in the result (None keeps none; the metrics
    always use the full ranking). exclude: (Q,) database index of each query to leave out of its own ranking
    (-1 = none), for when the queries are database items. chunk: queries per step (None: sized so a step's
    score matrix stays small). Ties are ordered by database index (stable sort).
    """
    device = torch.device(device)
    q_feats = torch.as_tensor(np.asarray(query_feats) if not torch.is_tensor(query_feats) else query_feats)
    d_feats = torch.as_tensor(np.asarray(db_feats) if not torch.is_tensor(db_feats) else db_feats)
    q_labels = torch.as_tensor(np.asarray(query_labels)).long().reshape(-1)
    d_labels = torch.as_tensor(np.asarray(db_labels)).long().reshape(-1)
    if q_feats.ndim != 2 or d_feats.ndim != 2 or q_feats.shape[1] != d_feats.shape[1]:
        raise UserError(f"feature shapes do not match: queries {tuple(q_feats.shape)}, "
                        f"database {tuple(d_feats.shape)}")
    if len(q_labels) != len(q_feats) or len(d_labels) != len(d_feats):
        raise UserError("one label per query and per database item is needed")
    n_q, n_db = len(q_feats), len(d_feats)
    if n_db == 0:
        raise UserError("the database is empty")
    if (q_labels < 0).any() or (d_labels < 0).any():
        raise UserError("labels must be class numbers >= 0")
    excl = (torch.full((n_q,), -1, dtype=torch.long) if exclude is None
            else torch.as_tensor(np.asarray(exclude)).long().reshape(-1))
    if len(excl) != n_q or (n_q and int(excl.max()) >= n_db):
        raise UserError("exclude must give one database index (or -1) per query")

    # R_q: items of the query's class, minus the query itself when it is in the database with that class
    n_classes = int(max(d_labels.max(), q_labels.max() if n_q else 0)) + 1
    n_rel = torch.bincount(d_labels, minlength=n_classes)[q_labels]
    self_rel = (excl >= 0) & (d_labels[excl.clamp(min=0)] == q_labels)
    n_rel = n_rel - self_rel.long()

    k_keep = 0 if k is None else min(_check_k(k), n_db)
    ap_ks = sorted({_check_k(x) for x in ap_ks})     # keys keep their names; k > N means N
    curve_ks = sorted({int(x) for x in curve_ks if x <= n_db})
    levels = torch.as_tensor(np.asarray(recall_levels, dtype=np.float64))
    chunk = chunk or _auto_chunk(n_db, device)

    d_dev = d_feats.to(device, torch.float32)
    dl_dev = d_labels.to(device)
    ranks = torch.arange(1, n_db + 1, device=device, dtype=torch.float64)
    ap_all, ap_r, pr = [], [], []
    ap_at = {x: [] for x in ap_ks}
    p_at = {x: [] for x in curve_ks}
    tops_i, tops_s = [], []
    for start in range(0, n_q, chunk):
        stop = min(n_q, start + chunk)
        scores = q_feats[start:stop].to(device, torch.float32) @ d_dev.T
        ex = excl[start:stop].to(device)
        has_ex = ex >= 0
        if has_ex.any():
            rows = torch.nonzero(has_ex).squeeze(1)
            scores[rows, ex[rows]] = -torch.inf      # sorts last; its relevance is zeroed below
        order = torch.sort(scores, dim=1, descending=True, stable=True)
        rel = dl_dev[order.indices] == q_labels[start:stop].to(device)[:, None]
        if has_ex.any():
            rel &= order.indices != ex[:, None]
        rel = rel.double()
        nr = n_rel[start:stop].to(device).double()
        hits = rel.cumsum(1)
        gain = rel * hits / ranks                       # rel_i · P@i
        cum_gain = gain.cumsum(1)
        safe = nr.clamp(min=1)
        ap_all.append(torch.where(nr > 0, cum_gain[:, -1] / safe, 0.0).cpu())
        r_idx = (nr.long() - 1).clamp(min=0, max=n_db - 1)
        ap_r.append(torch.where(nr > 0, cum_gain.gather(1, r_idx[:, None]).squeeze(1) / safe, 0.0).cpu())
        for x in ap_ks:
            norm = torch.minimum(nr, torch.tensor(float(x), device=device, dtype=torch.float64))
            ap_at[x].append(torch.where(nr > 0, cum_gain[:, min(x, n_db) - 1] / norm.clamp(min=1), 0.0).cpu())
        for x in curve_ks:
            p_at[x].append((hits[:, x - 1] / x).cpu())
        pr.append(_interpolated_pr(rel, nr, levels))
        if k_keep:
            tops_i.append(order.indices[:, :k_keep].cpu())
            tops_s.append(order.values[:, :k_keep].float().cpu())
        del scores, order, rel, hits, gain, cum_gain

    def cat(parts):
        return torch.cat(parts).numpy() if parts else np.zeros(0)

    return Ranking(
        n_relevant=n_rel.numpy(),
        ap_all=cat(ap_all), ap_at_r=cat(ap_r),
        ap_at={x: cat(v) for x, v in ap_at.items()},
        precision_at={x: cat(v) for x, v in p_at.items()},
        pr_precision=torch.cat(pr).numpy() if pr else np.zeros((0, len(levels))),
        recall_levels=levels.numpy(),
        top_indices=cat(tops_i).astype(np.int64).reshape(n_q, k_keep) if k_keep else None,
        top_scores=cat(tops_s).astype(np.float32).reshape(n_q, k_keep) if k_keep else None,
    )
