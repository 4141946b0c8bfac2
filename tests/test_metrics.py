"""docs/EVALUATION.md#metrics: hand-computed cases, a brute-force definition on random data, chunked ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hebb.errors import UserError
from retrieval.evaluation.metrics import (average_precision, mean_average_precision, precision_at_k, precision_curve,
                               precision_recall_curve, rank_database, topk_accuracy)

# ------------------------------------------------------------------------------------------ hand-computed


def test_precision_at_k_hand_computed():
    rel = [[1, 0, 1, 1], [0, 0, 0, 1]]
    assert precision_at_k(rel, 1).tolist() == [1.0, 0.0]
    assert precision_at_k(rel, 3).tolist() == pytest.approx([2 / 3, 0.0])
    # k beyond the list means the whole list
    assert precision_at_k(rel, 10).tolist() == pytest.approx([3 / 4, 1 / 4])


def test_average_precision_hand_computed():
    rel = [[1, 0, 1, 1, 0]]
    # hits at ranks 1, 3, 4: P@1 = 1, P@3 = 2/3, P@4 = 3/4; R_q = 5 (two relevant items never retrieved)
    assert average_precision(rel, [5]).tolist() == pytest.approx([(1 + 2 / 3 + 3 / 4) / 5])
    # AP@3 normalises by min(3, R_q) = 3
    assert average_precision(rel, [5], k=3).tolist() == pytest.approx([(1 + 2 / 3) / 3])
    # AP@3 with R_q = 2 normalises by 2
    assert average_precision(rel, [2], k=3).tolist() == pytest.approx([(1 + 2 / 3) / 2])
    # k = 1: AP@1 = P@1
    assert average_precision(rel, [5], k=1).tolist() == [1.0]
    assert average_precision([[0, 1]], [1], k=1).tolist() == [0.0]
    # k larger than the list means the list
    assert average_precision(rel, [3], k=50).tolist() == pytest.approx(average_precision(rel, [3]).tolist())


def test_perfect_and_no_relevant_queries():
    rel = [[1, 1, 0, 0], [0, 0, 0, 0]]
    ap = average_precision(rel, [2, 0])
    assert ap.tolist() == [1.0, 0.0]          # R_q = 0 -> AP 0, documented
    assert mean_average_precision(rel, [2, 0]) == 0.5


def test_precision_recall_curve_hand_computed():
    # hits at ranks 2 and 4 of R_q = 2: precision 1/2 at recall 0.5, 2/4 at recall 1
    rel = [[0, 1, 0, 1]]
    curve = precision_recall_curve(rel, [2], recall_levels=[0.0, 0.5, 1.0])
    assert curve.tolist() == pytest.approx([0.5, 0.5, 0.5])
    # hits at ranks 1 and 4: interpolated precision is 1 up to recall 0.5, then 2/4
    curve = precision_recall_curve([[1, 0, 0, 1]], [2], recall_levels=[0.0, 0.5, 0.6, 1.0])
    assert curve.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.5])
    # recall never reached (R_q larger than the hits in the list) -> 0 there
    curve = precision_recall_curve([[1, 0]], [2], recall_levels=[0.5, 1.0])
    assert curve.tolist() == pytest.approx([1.0, 0.0])


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc[1] == pytest.approx(1 / 3)
    assert acc[2] == pytest.approx(2 / 3)
    assert acc[5] == 1.0                      # k beyond the number of classes: every label is in the top


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError):
        precision_at_k([[1, 0]], 0)
    with pytest.raises(UserError):
        average_precision([[1, 0]], [1, 2])
    with pytest.raises(UserError):
        rank_database(np.ones((2, 3)), np.ones((4, 5)), [0, 1], [0, 1, 0, 1])


# ------------------------------------------------------------------------------------ brute-force check


def _brute_ap(rel_row, r_q, k):
    """AP@k straight from the definition, one query, plain Python."""
    k = min(k, len(rel_row))
    if r_q == 0:
        return 0.0
    total, hits = 0.0, 0
    for i in range(k):
        if rel_row[i]:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, r_q)


def _brute_rank(q, db, ql, dl, exclude):
    """Per-query full ranking by a plain loop: score descending, ties by database index."""
    out = []
    for i in range(len(q)):
        scores = [float(np.dot(q[i], db[j])) for j in range(len(db))]
        order = sorted((j for j in range(len(db)) if j != exclude[i]), key=lambda j: (-scores[j], j))
        rel = [int(dl[j] == ql[i]) for j in order]
        r_q = sum(int(dl[j] == ql[i]) for j in range(len(db)) if j != exclude[i])
        out.append((order, rel, r_q))
    return out


def test_vectorised_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    rel = rng.random((30, 40)) < 0.3
    n_rel = rel.sum(1) + rng.integers(0, 5, size=30)
    n_rel[0] = 0
    rel[0] = False
    for k in (1, 7, 40, 100):
        want = [_brute_ap(rel[i], n_rel[i], k) for i in range(30)]
        assert average_precision(rel, n_rel, k) == pytest.approx(want, abs=1e-12)
        assert precision_at_k(rel, k) == pytest.approx([rel[i, :min(k, 40)].sum() / min(k, 40) for i in range(30)])


@pytest.mark.parametrize("exclude_self", [False, True])
def test_rank_database_matches_brute_force(exclude_self):
    rng = np.random.default_rng(1)
    db = rng.normal(size=(60, 8)).astype(np.float32)
    db[10] = db[3]                             # an exact tie: index 3 must come first
    dl = rng.integers(0, 4, size=60)
    if exclude_self:
        qi = np.array([3, 10, 17, 42, 59])
        q, ql, exclude = db[qi], dl[qi], qi
    else:
        q = rng.normal(size=(7, 8)).astype(np.float32)
        ql, exclude = rng.integers(0, 5, size=7), None  # class 4 has no database items: R_q = 0
    res = rank_database(q, db, ql, dl, k=60, chunk=2, exclude=exclude, ap_ks=(1, 5, 100), curve_ks=(1, 10))
    brute = _brute_rank(q, db, ql, dl, exclude if exclude is not None else [-1] * len(q))
    for i, (order, rel, r_q) in enumerate(brute):
        assert res.n_relevant[i] == r_q
        assert res.top_indices[i, :len(order)].tolist() == order
        assert res.ap_all[i] == pytest.approx(_brute_ap(rel, r_q, len(rel)), abs=1e-12)
        assert res.ap_at_r[i] == pytest.approx(_brute_ap(rel, r_q, max(r_q, 1)), abs=1e-12)
        assert res.ap_at[5][i] == pytest.approx(_brute_ap(rel, r_q, 5), abs=1e-12)
        assert res.ap_at[100][i] == pytest.approx(_brute_ap(rel, r_q, 60), abs=1e-12)  # 100 > N: all
        assert res.precision_at[10][i] == pytest.approx(sum(rel[:10]) / 10)
    if exclude_self:
        assert not np.any(res.top_indices[:, :59] == exclude[:, None])   # a query never finds itself
        assert res.top_indices[0, 0] == 10 and res.top_indices[1, 0] == 3
    else:
        assert np.all(res.ap_all[ql == 4] == 0)
    # the per-query PR curves agree with the standalone function on the same full rankings
    rel_matrix = np.array([rel + [0] * (60 - len(rel)) for _, rel, _ in brute])
    assert res.pr_precision.mean(0) == pytest.approx(
        precision_recall_curve(rel_matrix, res.n_relevant), abs=1e-12)


def test_chunked_ranking_equals_unchunked():
    rng = np.random.default_rng(2)
    db = rng.normal(size=(500, 16)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    dl = rng.integers(0, 10, size=500)
    q = rng.normal(size=(37, 16)).astype(np.float32)
    ql = rng.integers(0, 10, size=37)
    whole = rank_database(q, db, ql, dl, k=20, chunk=1000)
    parts = rank_database(q, db, ql, dl, k=20, chunk=3)
    assert np.array_equal(whole.top_indices, parts.top_indices)
    assert whole.summary() == parts.summary()
    assert whole.ap_all.shape == (37,)
    s = whole.summary()
    assert set(s) >= {"map@100", "map@R", "map@all", "p@k", "pr_curve"}
    # random features: mAP near the class prior (0.1), far from perfect
    assert 0.05 < s["map@all"] < 0.2


def test_ranking_by_class_clusters_is_perfect():
    # features = one-hot class vectors: every relevant item outranks every other
    dl = np.repeat(np.arange(4), 5)
    db = np.eye(4, dtype=np.float32)[dl]
    res = rank_database(db, db, dl, dl, exclude=np.arange(20), ap_ks=(100,), curve_ks=(1, 4, 5))
    s = res.summary()
    assert (res.n_relevant == 4).all()
    assert s["map@all"] == s["map@R"] == s["map@100"] == 1.0
    assert s["p@k"]["4"] == 1.0 and s["p@k"]["5"] == pytest.approx(0.8)
    assert s["pr_curve"]["precision"] == pytest.approx([1.0] * 11)
    assert precision_curve(np.ones((2, 3)), ks=(1, 3, 9)) == {1: 1.0, 3: 1.0}
