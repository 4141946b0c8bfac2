"""The evaluation report: `summary.md` (tables, mean ± 95% CI over seeds) and PNG plots from results.json.

Confidence intervals are Student-t intervals of the mean over seeds: mean ± t_{0.975, n-1} · s / sqrt(n)
(s the sample standard deviation, t from `scipy.stats.t`); with one seed there is no interval and a cell
shows the mean alone. Without scipy the report is still written, without intervals, and says so.
Tables are per method x label regime at the layer chosen by validation accuracy (the only layer when the
sweep ran one), with the papers' numbers beside ours where they exist; a layer-by-layer table follows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from hebb.errors import UserError
from hebb.runtime import utc_now
from retrieval.evaluation.findings import findings_section
from retrieval.evaluation.sweep import load_results
from retrieval.evaluation.paper_numbers import (PAPER_ACCURACY, PAPER_SOURCE, PAPER_TRAINING_TIME,
                                     method_name, paper_accuracy)

SUMMARY_FILE = "summary.md"
MAP_METRICS = ("map@100", "map@R", "map@all")
HEAD_PREFIX = "head "   # "head map@100": the cell's retrieval with the read-out head appended
METHOD_ORDER = ("hpca", "swta", "wta", "vae", "sgd", "random")


# ------------------------------------------------------------------------------------------ statistics


def t_quantile(p: float, df: float) -> float:
    """Student-t quantile (inverse CDF) for 0 < p < 1, from `scipy.stats.t`.

    scipy is imported here, not at module level, so that the rest of the report (and `hebbir evaluate`)
    still works on a machine without it; `mean_ci` then gives no interval.
    """
    if not 0 < p < 1 or df <= 0:
        raise UserError(f"t quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    from scipy.stats import t

    return float(t.ppf(p, df))


def have_scipy() -> bool:
    """Whether scipy (needed for confidence intervals) can be imported here."""
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return False
    return True


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t confidence interval).

    The half-width is nan for fewer than 2 values, and when scipy is not installed (see `have_scipy`; the
    summary says so in its header).
    """
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2:
        return float(x.mean()), math.nan
    try:
        q = t_quantile(0.5 + confidence / 2, len(x) - 1)
    except ImportError:
        return float(x.mean()), math.nan
    return float(x.mean()), float(q * x.std(ddof=1) / math.sqrt(len(x)))


def format_ci(mean: float, half: float, digits: int = 2, scale: float = 1.0) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(half):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}"


# ------------------------------------------------------------------------------------------ grouping


def _get(record: dict, metric: str):
    if metric == "accuracy":
        return record["accuracy"].get("top1")
    if metric == "top5":
        return record["accuracy"].get("top5")
    if metric == "val_accuracy":
        return record.get("val_accuracy")
    if metric.startswith(HEAD_PREFIX):
        return record.get("retrieval_head", {}).get(metric[len(HEAD_PREFIX):])
    return record["retrieval"].get(metric)


def row_key(record: dict) -> str:
    """The table row of a cell: its method, plus ' probe' for the probe read-out ('softhebb probe')."""
    readout = record.get("readout", "finetune")
    return record["method"] if readout == "finetune" else f"{record['method']} {readout}"


def _ordered_methods(runs: list[dict]) -> list[str]:
    present = {row_key(r) for r in runs}

    def order(key: str):
        base = key.split(" ")[0].split("@")[0]
        return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), key)

    return sorted(present, key=order)


def group_runs(runs: list[dict]) -> dict[tuple[str, float, int], list[dict]]:
    """{(row key, regime, layer): [records over seeds]}."""
    groups: dict[tuple[str, float, int], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(row_key(r), float(r["regime"]), int(r["layer"]))].append(r)
    return groups


def chosen_layers(groups) -> dict[tuple[str, float], int]:
    """(method, regime) -> the layer with the best mean validation accuracy (ties: the higher layer)."""
    best: dict[tuple[str, float], tuple[float, int]] = {}
    for (method, regime, layer), recs in groups.items():
        val = [v for v in (_get(r, "val_accuracy") for r in recs) if v is not None]
        score = float(np.mean(val)) if val else -math.inf
        key = (method, regime)
        if key not in best or (score, layer) > best[key]:
            best[key] = (score, layer)
    return {k: layer for k, (_, layer) in best.items()}


def comparable(records: list[dict], metric: str) -> list[dict]:
    """The records whose `metric` can be averaged together: for a retrieval metric, those whose features were
    reduced the way the newest record's were (an older cell of another reduction is left out, never mixed)."""
    if metric in ("accuracy", "top5", "val_accuracy") or not records:
        return records
    newest = max(records, key=lambda r: r.get("finished", ""))
    return [r for r in records if r["retrieval"].get("features") == newest["retrieval"].get("features")]


def mixed_reductions(groups) -> list[str]:
    """'method regime% layer L' for every group whose cells' retrieval used more than one reduction."""
    return [f"{method_name(m)} {r:g}% layer {layer}" for (m, r, layer), recs in sorted(groups.items())
            if len(comparable(recs, "map@100")) < len(recs)]


def reductions(groups, chosen, methods) -> list[str]:
    """'row: features' for each table row, from the newest cell at its chosen layers (what its mAP figures used)."""
    from retrieval.features import describe

    out = []
    for m in methods:
        recs = [r for (method, regime), layer in chosen.items() if method == m for r in groups[(m, regime, layer)]]
        feats = {describe(r["retrieval"]["features"]) for r in comparable(recs, "map@100")
                 if r["retrieval"].get("features", {}).get("pooled_dim")}
        if feats:
            out.append(f"{method_name(m)}: {'; '.join(sorted(feats))}")
    return out


def metric_table(groups, chosen, metric: str) -> dict[str, dict[float, tuple[float, float]]]:
    """{method: {regime: (mean, ci)}} of `metric` at the chosen layers."""
    table: dict[str, dict[float, tuple[float, float]]] = defaultdict(dict)
    for (method, regime), layer in chosen.items():
        table[method][regime] = mean_ci(_get(r, metric) for r in comparable(groups[(method, regime, layer)], metric))
    return table


# ------------------------------------------------------------------------------------------ markdown


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _accuracy_section(groups, chosen, methods, regimes) -> str:
    table = metric_table(groups, chosen, "accuracy")
    header = ["method"] + [f"{r:g}%" for r in regimes]
    rows = [[method_name(m)] + [format_ci(*table[m].get(r, (math.nan, math.nan)), scale=100)
                                         for r in regimes] for m in methods]
    for m in methods:
        if m in PAPER_ACCURACY:
            rows.append([f"*{method_name(m)} (paper)*"] + [
                f"*{v:.2f}*" if (v := paper_accuracy(m, r)) is not None else "–" for r in regimes])
    return _md_table(header, rows)


def _map_section(groups, chosen, methods, regimes) -> str:
    parts = []
    for metric in MAP_METRICS:
        table = metric_table(groups, chosen, metric)
        header = ["method"] + [f"{r:g}%" for r in regimes]
        rows = [[method_name(m)] + [format_ci(*table[m].get(r, (math.nan, math.nan)), digits=3)
                                             for r in regimes] for m in methods]
        parts.append(f"**{metric}**\n\n" + _md_table(header, rows))
    head = metric_table(groups, chosen, HEAD_PREFIX + "map@100")
    with_head = [m for m in methods if any(not math.isnan(v[0]) for v in head[m].values())]
    if with_head:
        rows = [[method_name(m)] + [format_ci(*head[m].get(r, (math.nan, math.nan)), digits=3) for r in regimes]
                for m in with_head]
        parts.append("**mAP@100 with the read-out head** (its class probabilities, L2-normalised, appended to "
                     "each vector with weight 1 before the final normalisation: the index `hebbir index build "
                     "--head-weight 1` builds; cells recorded before this column existed have none)\n\n"
                     + _md_table(header, rows))
    return "\n\n".join(parts)


def _layer_section(groups, methods, regimes) -> str:
    layers = sorted({layer for (_, _, layer) in groups})
    header = ["method", "regime"] + [f"layer {layer}: acc % / mAP@100" for layer in layers]
    rows = []
    for m in methods:
        for r in regimes:
            cells = []
            for layer in layers:
                recs = groups.get((m, r, layer))
                if not recs:
                    cells.append("–")
                    continue
                acc = format_ci(*mean_ci(_get(x, "accuracy") for x in recs), digits=1, scale=100)
                mp = format_ci(*mean_ci(_get(x, "map@100") for x in comparable(recs, "map@100")), digits=3)
                cells.append(f"{acc} / {mp}")
            if any(c != "–" for c in cells):
                rows.append([method_name(m), f"{r:g}%"] + cells)
    return _md_table(header, rows)


def _fmt_s(seconds) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {seconds % 60:.0f}s"
    return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60)}m"


def training_times(results: dict, methods) -> dict[str, dict[str, float]]:
    """{method: epoch_s, epochs, total_s (pre-training, mean over seeds), finetune_s (mean over runs)}."""
    out = {}
    for m in methods:
        pre = [v for k, v in results.get("pretraining", {}).items() if k.split("/")[0] == m.split(" ")[0]]
        ft = [r["timings"].get("finetune_s") or r["timings"].get("probe_s") for r in results["runs"].values()
              if row_key(r) == m and (r["timings"].get("finetune_s") or r["timings"].get("probe_s")) is not None]
        out[m] = {"epoch_s": float(np.mean([p.get("epoch_time_s", 0) for p in pre])) if pre else math.nan,
                  "epochs": float(np.mean([p.get("epochs", 0) for p in pre])) if pre else math.nan,
                  "total_s": float(np.mean([p.get("wall_s", p.get("time_s", 0)) for p in pre])) if pre else math.nan,
                  "finetune_s": float(np.mean(ft)) if ft else math.nan}
    return out


def _time_section(results, methods) -> str:
    times = training_times(results, methods)
    header = ["method", "epoch", "epochs", "pre-training total", "fine-tuning (mean per run)",
              "paper: epoch", "paper: epochs", "paper: total"]
    rows = []
    for m in methods:
        t = times[m]
        p = PAPER_TRAINING_TIME.get(m.split(" ")[0], {})    # the pre-training a probe row reads is the same
        rows.append([method_name(m), _fmt_s(t["epoch_s"]),
                     "–" if math.isnan(t["epochs"]) else f"{t['epochs']:g}", _fmt_s(t["total_s"]),
                     _fmt_s(t["finetune_s"]), _fmt_s(p.get("epoch_s")),
                     f"{p['epochs']:g}" if p else "–", _fmt_s(p.get("total_s"))])
    return _md_table(header, rows)


def write_summary(out: Path, results: dict, pr_regime: float | None = None) -> Path:
    """Write `out/summary.md` and the plots; return the summary's path."""
    out = Path(out)
    runs = list(results["runs"].values())
    if not runs:
        raise UserError(f"{out}: results.json holds no finished runs yet")
    groups = group_runs(runs)
    chosen = chosen_layers(groups)
    methods = _ordered_methods(runs)
    regimes = sorted({float(r["regime"]) for r in runs})
    seeds = sorted({int(r["seed"]) for r in runs})
    try:
        plots = write_plots(out, groups, chosen, methods, regimes, results, pr_regime)
        write_curves_plot(out)  # shown in its own section
    except ImportError:  # a training machine without matplotlib: tables now, plots with --report-only later
        plots = []

    sessions = results.get("sessions", [])
    devices = sorted({s.get("device", "?") for s in sessions} | {r.get("device", "?") for r in runs})
    lines = [f"# Evaluation: {results['settings'].get('dataset')}", ""]
    lines.append(f"- report written: {utc_now()}")
    lines.append(f"- runs: {len(runs)} finished ({len(methods)} methods, {len(regimes)} regimes, "
                 f"{len({int(r['layer']) for r in runs})} layer(s), seeds {', '.join(map(str, seeds))}), "
                 f"from {results.get('created', '?')} to {max(r.get('finished', '') for r in runs)}")
    lines.append(f"- device(s): {'; '.join(devices)}")
    lines.append("- settings: " + ", ".join(f"{k}={v}" for k, v in results["settings"].items()))
    if not have_scipy():
        lines.append("- confidence intervals: omitted, scipy is not installed here (run `hebbir evaluate "
                     "--report-only` where it is)")
    for s in sessions:
        lines.append(f"- command ({s.get('started', '?')}, torch {s.get('torch', '?')}): `{s.get('command', '?')}`")
    lines += ["", "Mean ± 95% Student-t confidence interval over seeds (no interval with one seed). "
              "Retrieval protocol \"seed\": database = training split, queries = test split, cosine on the "
              "fine-tuned network's features at the layer; mAP@R cuts each query's ranking at its number of "
              "relevant items. The layer of each cell is the one with the best validation accuracy among "
              "those run: " + ", ".join(f"{method_name(m)} {r:g}% → {chosen[(m, r)]}"
                                        for m in methods for r in regimes if (m, r) in chosen) + ".", ""]
    lines += ["## Test accuracy (top-1, %)", "",
              f"Paper rows: {PAPER_SOURCE} (mean of 5 runs, no CI given). The SGD row is our in-run "
              "baseline: the same network trained from scratch on the labelled subset only.", "",
              _accuracy_section(groups, chosen, methods, regimes), ""]
    lines += ["## Retrieval (mAP)", "", "The papers report no retrieval mAP for this protocol; there is nothing "
              "of theirs to put beside these.", "", _map_section(groups, chosen, methods, regimes), ""]
    if rows := reductions(groups, chosen, methods):
        lines += ["Features each row's mAP was measured on (pooling -> projection, fitted on the database): "
                  + "; ".join(rows) + ".", ""]
    if mixed := mixed_reductions(groups):
        lines += ["Cells whose retrieval features were reduced differently from the newest cell of their row "
                  "(an older default) are left out of the mAP figures, not averaged in: " + "; ".join(mixed) + ".",
                  ""]
    lines += ["## Layer by layer", "", _layer_section(groups, methods, regimes), ""]
    lines += findings_section(metric_table(groups, chosen, "accuracy"), metric_table(groups, chosen, "map@100"),
                              methods, regimes)
    lines += curves_section(out)
    lines += ["## Training time", "",
              "Ours: unsupervised pre-training (mean over seeds; 0 epochs for methods without that stage; the "
              "total includes fitting the input normalisation / ZCA) and fine-tuning, on the device(s) above. Paper: its Table 1 (FastHebb implementations for HPCA and "
              "soft-WTA; RTX 3060), epochs counted until the network stops improving.", "",
              _time_section(results, methods), ""]
    lines += ["## Plots", ""] + ([f"![{p.stem}]({p.name})" for p in plots] or
                                 ["(matplotlib is not installed here: run `hebbir evaluate --report-only` "
                                  "where it is)"]) + [""]
    path = out / SUMMARY_FILE
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------ plots


def _regime_series(groups, chosen, method, regimes, metric):
    xs, means, halves = [], [], []
    for r in regimes:
        if (method, r) in chosen:
            m, h = mean_ci(_get(x, metric) for x in comparable(groups[(method, r, chosen[(method, r)])], metric))
            xs.append(r)
            means.append(m)
            halves.append(0.0 if math.isnan(h) else h)
    return np.array(xs), np.array(means), np.array(halves)


def _plot_vs_regime(ax, groups, chosen, methods, regimes, metric, scale=1.0, upper=1.0):
    for i, m in enumerate(methods):
        xs, mean, half = _regime_series(groups, chosen, m, regimes, metric)
        if not len(xs):
            continue
        color = f"C{i}"
        ax.plot(xs, mean * scale, "o-", color=color, label=method_name(m))
        # the band is the CI of the mean; clipped to the metric's range, which the mean cannot leave
        ax.fill_between(xs, np.clip(mean - half, 0, upper) * scale, np.clip(mean + half, 0, upper) * scale,
                        color=color, alpha=0.2)
    ax.set_xscale("log")
    _regime_ticks(ax, regimes)
    ax.set_xlabel("labelled images (% of the training split)")
    ax.grid(True, alpha=0.3)


def _regime_ticks(ax, regimes) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xticks(list(regimes))
    ax.set_xticklabels([f"{r:g}" for r in regimes])
    ax.xaxis.set_minor_locator(NullLocator())


def write_plots(out: Path, groups, chosen, methods, regimes, results, pr_regime=None) -> list[Path]:
    """accuracy_vs_regime.png, map_vs_regime.png, pr_curves.png, training_times.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    _plot_vs_regime(ax, groups, chosen, methods, regimes, "accuracy", scale=100)
    for i, m in enumerate(methods):
        if m in PAPER_ACCURACY:
            xs = sorted(PAPER_ACCURACY[m])
            ax.plot(xs, [PAPER_ACCURACY[m][x] for x in xs], "x--", color=f"C{i}", alpha=0.6,
                    label=f"{method_name(m)} (paper)")
    _regime_ticks(ax, sorted(set(regimes) | {float(r) for m in methods for r in PAPER_ACCURACY.get(m, {})}))
    ax.set_ylabel("test accuracy (top-1, %)")
    ax.set_title("Accuracy vs label regime (mean, 95% CI)")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "accuracy_vs_regime.png"))

    fig, axes = plt.subplots(1, len(MAP_METRICS), figsize=(15, 4.5), sharey=False)
    for ax, metric in zip(axes, MAP_METRICS):
        _plot_vs_regime(ax, groups, chosen, methods, regimes, metric)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs label regime")
    axes[0].legend(fontsize=8)
    paths.append(_save(fig, out / "map_vs_regime.png"))

    regime = pr_regime if pr_regime is not None else (10.0 if 10.0 in regimes else regimes[0])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, m in enumerate(methods):
        if (m, regime) not in chosen:
            continue
        curves = [r["retrieval"]["pr_curve"] for r in comparable(groups[(m, regime, chosen[(m, regime)])], "map@100")]
        recall = curves[0]["recall"]
        prec = np.mean([c["precision"] for c in curves], axis=0)
        ax.plot(recall, prec, "o-", color=f"C{i}", label=method_name(m), markersize=3)
    ax.set_xlabel("recall")
    ax.set_ylabel("interpolated precision")
    ax.set_title(f"Precision-recall at {regime:g}% labels (mean over seeds)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "pr_curves.png"))

    times = training_times(results, methods)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    names = [method_name(m) for m in methods]
    x = np.arange(len(methods))
    panels = (("epoch_s", "pre-training epoch (s)"), ("epochs", "pre-training epochs"),
              ("total_s", "pre-training total (s)"), ("finetune_s", "fine-tuning per run (s)"))
    for ax, (key, label) in zip(axes, panels):
        ours = [0 if math.isnan(times[m][key]) else times[m][key] for m in methods]
        paper = [PAPER_TRAINING_TIME.get(m, {}).get(key, math.nan) for m in methods]
        has_paper = any(not math.isnan(v) for v in paper)
        width = 0.4 if has_paper else 0.8
        ax.bar(x - (width / 2 if has_paper else 0), ours, width, color=[f"C{i}" for i in range(len(methods))],
               label="this run")
        if has_paper:
            ax.bar(x + width / 2, [0 if math.isnan(v) else v for v in paper], width, color="white",
                   edgecolor=[f"C{i}" for i in range(len(methods))], hatch="//", label="paper (RTX 3060)")
            ax.legend(fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30)
        ax.set_title(label)
    paths.append(_save(fig, out / "training_times.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(out: Path, pr_regime: float | None = None) -> Path:
    """Regenerate summary.md and the plots of a sweep folder from its results.json."""
    results = load_results(Path(out))
    if results is None:
        raise UserError(f"{out}: no results.json (run `hebbir evaluate ... --out {out}` first)")
    return write_summary(Path(out), results, pr_regime)


# ------------------------------------------------------------------------------------------ pre-training curves


def curves_section(out: Path) -> list[str]:
    """Markdown lines for the report: each curve's accuracy per epoch and the epochs it needs (none: no file)."""
    from retrieval.evaluation.curves import CURVES_FILE, CURVES_PLOT, load_curves, needed_epochs

    curves = load_curves(out)
    if not curves or not curves["curves"]:
        return []
    s = curves["settings"]
    most = max(len(c["points"]) for c in curves["curves"].values())
    cell_epochs = _cell_pretraining_epochs(out)
    rows, short = [], []
    for method, c in curves["curves"].items():
        accs = {p["epoch"]: p["val_accuracy"] for p in c["points"]}
        need = needed_epochs(c["points"])
        used = cell_epochs.get(method, [])
        rows.append([method_name(method), str(c["layer"])] +
                    [f"{accs[e] * 100:.2f}" if e in accs else "–" for e in range(1, most + 1)] +
                    [f"{need} of {len(c['points'])}" + ("" if len(c["points"]) >= c["epochs"] else " (unfinished)"),
                     ", ".join(map(str, used)) or "–"])
        if need and any(e < need for e in used):
            best, got = max(accs.values()), accs.get(min(used))
            short.append(f"{method_name(method)} ({min(used)} of the {need} epochs its curve needs"
                         + (f", {(best - got) * 100:.1f} validation points below the curve's best)" if got else ")"))
    header = (["method", "layer"] + [f"epoch {e}" for e in range(1, most + 1)]
              + ["epochs needed", "epochs of this report's cells"])
    lines = ["## Pre-training curves", "",
             f"Probe accuracy (%) on the validation split after each unsupervised epoch: the top layer's frozen "
             f"features, the probe head trained on the {s['regime']:g}% regime's labels (seed {s['seed']}), best "
             f"head epoch on the validation split. \"Epochs needed\": the first epoch within 0.5 points of the "
             f"curve's best. From `{CURVES_FILE}`; commands: "
             + "; ".join(f"`{x['command']}`" for x in curves.get("sessions", []) if x.get("command")) + ".", "",
             _md_table(header, rows), ""]
    if short:
        lines += ["Cells here pre-trained for fewer epochs than their method's curve needs: " + "; ".join(short)
                  + ". Their rows understate what the method reaches with the epochs it needs.", ""]
    if (Path(out) / CURVES_PLOT).is_file():
        lines += [f"![pre-training curves]({CURVES_PLOT})", ""]
    return lines


def _cell_pretraining_epochs(out: Path) -> dict[str, list[int]]:
    """method -> the sorted pre-training epochs of the cells in OUT/results.json (trained pre-trainings only)."""
    from retrieval.evaluation.sweep import load_results

    results = load_results(out) or {}
    found: dict[str, set[int]] = {}
    for key, record in results.get("pretraining", {}).items():
        if record.get("epochs"):
            found.setdefault(key.rpartition("/s")[0], set()).add(int(record["epochs"]))
    return {m: sorted(e) for m, e in found.items()}


def write_curves_plot(out: Path) -> Path | None:
    """OUT/pretraining_curves.png from curves.json (None when there are no curves)."""
    from retrieval.evaluation.curves import CURVES_PLOT, load_curves

    curves = load_curves(out)
    if not curves or not curves["curves"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, c in curves["curves"].items():
        pts = [p for p in c["points"] if p.get("val_accuracy") is not None]
        ax.plot([p["epoch"] for p in pts], [100 * p["val_accuracy"] for p in pts], "o-", label=method_name(method))
    ax.set_xlabel("unsupervised pre-training epochs")
    ax.set_ylabel("probe accuracy on the validation split (%)")
    ax.set_title(f"Pre-training curves (probe on {curves['settings']['regime']:g}% of the labels)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return _save(fig, Path(out) / CURVES_PLOT)
