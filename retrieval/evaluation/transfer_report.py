"""The report of a "transfer" sweep: do the features serve classes the network and its read-out never saw?

One row per method, read-out, regime and layer: the read-out's test accuracy on the seen classes, retrieval
among the unseen classes (mAP@100, mAP@R, mAP@all), and mAP@100 against the random frozen network of the
same architecture (the bar a learned feature must clear). Written as `summary.md` and `transfer_map.png`.
"""

from __future__ import annotations

import math
from pathlib import Path

from hebb.runtime import utc_now
from retrieval.evaluation.paper_numbers import method_name
from retrieval.evaluation.report import (SUMMARY_FILE, _md_table, _ordered_methods, _save, comparable, format_ci,
                                         group_runs, mean_ci, reductions, chosen_layers)

MAP_METRICS = ("map@100", "map@R", "map@all")


def _stat(records: list[dict], metric: str) -> tuple[float, float]:
    if metric == "accuracy":
        return mean_ci(r["accuracy"]["top1"] for r in records)
    return mean_ci(r["retrieval"][metric] for r in comparable(records, metric))


def _arch(records: list[dict]) -> str:
    return records[0].get("arch", "?")


def random_baselines(groups) -> dict[str, float]:
    """arch -> mAP@100 of its random frozen network (the mean over its cells; it reads no labels)."""
    out: dict[str, list[float]] = {}
    for (row, _, _), recs in groups.items():
        if row.split(" ")[0].split("@")[0] == "random":
            out.setdefault(_arch(recs), []).extend(r["retrieval"]["map@100"] for r in comparable(recs, "map@100"))
    return {arch: sum(v) / len(v) for arch, v in out.items() if v}


def transfer_rows(results: dict) -> list[dict]:
    """One dict per (row, regime, layer): accuracy and mAP (mean, half CI), the random baseline and the ratio."""
    groups = group_runs(list(results["runs"].values()))
    baselines = random_baselines(groups)
    order = {m: i for i, m in enumerate(_ordered_methods(list(results["runs"].values())))}
    rows = []
    for (row, regime, layer), recs in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1], kv[0][2])):
        arch = _arch(recs)
        entry = {"row": row, "arch": arch, "regime": regime, "layer": layer, "seeds": len(recs),
                 "accuracy": _stat(recs, "accuracy"), **{m: _stat(recs, m) for m in MAP_METRICS},
                 "random_map@100": baselines.get(arch)}
        base = entry["random_map@100"]
        entry["vs_random"] = entry["map@100"][0] / base if base else None
        rows.append(entry)
    return rows


def write_transfer_summary(out: Path, results: dict) -> Path:
    """Write `out/summary.md` (and `transfer_map.png` where matplotlib is installed); return the summary's path."""
    out = Path(out)
    runs = list(results["runs"].values())
    rows = transfer_rows(results)
    classes = next((r["classes"] for r in runs if "classes" in r), {"seen": ["?"], "unseen": ["?"]})
    sessions = results.get("sessions", [])
    devices = sorted({s.get("device", "?") for s in sessions} | {r.get("device", "?") for r in runs})
    lines = [f"# Transfer evaluation: {results['settings'].get('dataset')}", "",
             f"- report written: {utc_now()}",
             f"- runs: {len(runs)} finished, from {results.get('created', '?')} to "
             f"{max(r.get('finished', '') for r in runs)}",
             f"- device(s): {'; '.join(devices)}",
             "- settings: " + ", ".join(f"{k}={v}" for k, v in results["settings"].items())]
    lines += [f"- command ({s.get('started', '?')}, torch {s.get('torch', '?')}): `{s.get('command', '?')}`"
              for s in sessions]
    lines += ["", f"Protocol \"transfer\": the unsupervised pre-training and the read-out see only the images (and, "
              f"for the read-out, the labels at the regime's share) of the seen classes "
              f"({', '.join(classes['seen'])}); accuracy is their {len(classes['seen'])}-way test accuracy. "
              f"Retrieval runs among the unseen classes ({', '.join(classes['unseen'])}): database = their "
              f"training-split images, queries = their test images, at the read-out's layer with the default "
              f"reduction (PCA fitted on that database). \"vs random\" divides mAP@100 by that of the random "
              f"frozen network of the same architecture: above 1, the learned features carry more to unseen "
              f"classes than random ones do. Mean ± 95% CI over seeds (none with one seed).", ""]
    header = ["method", "net", "regime", "layer", "seeds", "seen-class accuracy %", "mAP@100", "mAP@R", "mAP@all",
              "vs random (mAP@100)"]
    table = [[method_name(e["row"]), e["arch"], f"{e['regime']:g}%", str(e["layer"]), str(e["seeds"]),
              format_ci(*e["accuracy"], scale=100), *(format_ci(*e[m], digits=3) for m in MAP_METRICS),
              "–" if e["vs_random"] is None else f"{e['vs_random']:.2f}x"] for e in rows]
    lines += ["## Retrieval among unseen classes", "", _md_table(header, table), ""]
    groups = group_runs(runs)
    if notes := reductions(groups, chosen_layers(groups), _ordered_methods(runs)):
        lines += ["Features each row's mAP was measured on: " + "; ".join(notes) + ".", ""]
    try:
        plot = write_transfer_plot(out, rows)
        lines += ["## Plot", "", f"![{plot.stem}]({plot.name})", ""]
    except ImportError:
        lines += ["(matplotlib is not installed here: run `hebbir evaluate --report-only` where it is)", ""]
    path = out / SUMMARY_FILE
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path


def write_transfer_plot(out: Path, rows: list[dict]) -> Path:
    """Bars of mAP@100 among the unseen classes per row, with each architecture's random baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows) + 2), 4.5))
    archs = sorted({e["arch"] for e in rows})
    colours = {a: f"C{i}" for i, a in enumerate(archs)}
    xs = range(len(rows))
    means = [e["map@100"][0] for e in rows]
    errs = [0 if math.isnan(e["map@100"][1]) else e["map@100"][1] for e in rows]
    ax.bar(xs, means, yerr=errs, color=[colours[e["arch"]] for e in rows], capsize=3)
    for arch in archs:
        base = next((e["random_map@100"] for e in rows if e["arch"] == arch and e["random_map@100"]), None)
        if base:
            ax.axhline(base, color=colours[arch], linestyle="--", linewidth=1, label=f"random frozen {arch}")
    ax.set_xticks(list(xs), [f"{method_name(e['row'])}\n{e['regime']:g}%, l{e['layer']}" for e in rows],
                  rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("mAP@100 among unseen classes")
    ax.set_title("Transfer: retrieval among classes the network never saw")
    if any(e["random_map@100"] for e in rows):
        ax.legend(fontsize=8)
    return _save(fig, out / "transfer_map.png")
