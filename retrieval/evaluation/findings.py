"""The report's "what this shows" section, written from its own tables, so that it stays true as cells arrive.

For every label regime it sets the best Hebbian row against the best SGD-from-scratch row and against the same
network and read-out without pre-training (random frozen features for a probe, SGD from scratch for
fine-tuning: the floor any pre-training must clear), in test accuracy and mAP@100, and says for each Hebbian
row where it is above that floor and where below. A difference counts only when
the two confidence intervals do not overlap; with one seed (no interval) the sentence says it is one seed.
Missing baselines (VAE, SGD with augmentation, ...) are named, never guessed.
"""

from __future__ import annotations

import math

from hebb.network import HEBBIAN_RULES
from retrieval.evaluation.paper_numbers import method_name
from retrieval.evaluation.sweep import method_arch

#: The baselines a Hebbian result is judged against, as (rule, read-out or None for any): the section names
#: those the report lacks.
BASELINES = {("sgd", None): "SGD from scratch", ("sgd", "finetune-aug"): "SGD from scratch with augmentation",
             ("vae", None): "VAE", ("random", None): "random frozen features"}

Table = dict[str, dict[float, tuple[float, float]]]


def _rule(row: str) -> str:
    return row.split(" ")[0].partition("@")[0]


def _arch(row: str) -> str:
    return method_arch(row.split(" ")[0])


def _hebbian_and_sgd(methods: list[str]) -> tuple[list[str], list[str]]:
    return [m for m in methods if _rule(m) in HEBBIAN_RULES], [m for m in methods if _rule(m) == "sgd"]


def _best(table: Table, rows: list[str], regime: float) -> str | None:
    scored = [(table[r][regime][0], r) for r in rows if not math.isnan(table.get(r, {}).get(regime, (math.nan,))[0])]
    return max(scored)[1] if scored else None


def compare(a: tuple[float, float], b: tuple[float, float]) -> str:
    """'above', 'below' or 'level' (overlapping 95% intervals) for a against b; 'above*'/'below*' when either
    side has one seed (no interval), so the call rests on one run."""
    (ma, ha), (mb, hb) = a, b
    if math.isnan(ha) or math.isnan(hb):
        return "above*" if ma > mb else "below*"
    if ma - ha > mb + hb:
        return "above"
    if ma + ha < mb - hb:
        return "below"
    return "level"


def _fmt(value: float, scale: float, digits: int) -> str:
    return f"{value * scale:.{digits}f}"


def _difference(diff: float, points: bool) -> str:
    """A signed difference: in points for accuracy (a fraction), as the metric's own value for mAP."""
    return f"{diff * 100:+.1f} points" if points else f"{diff:+.3f}"


def _regime_table(acc: Table, maps: Table, methods: list[str], regimes: list[float]) -> list[str]:
    hebbian, sgd = _hebbian_and_sgd(methods)
    rows = ["| regime | best Hebbian: acc % / mAP@100 | best SGD from scratch | same net and read-out, no pre-training |",
            "|---|---|---|---|"]
    for regime in regimes:
        h = _best(acc, hebbian, regime)
        if h is None:
            continue
        cells = [f"{regime:g}%", f"{method_name(h)}: {_fmt(acc[h][regime][0], 100, 1)} / "
                 f"{_fmt(maps.get(h, {}).get(regime, (math.nan,))[0], 1, 3)}"]
        for other in (_best(acc, sgd, regime), floor_row(methods, h)):
            if other is None or regime not in acc.get(other, {}):
                cells.append("not measured")
                continue
            d_acc = (acc[h][regime][0] - acc[other][regime][0]) * 100
            cells.append(f"{method_name(other)}: {_fmt(acc[other][regime][0], 100, 1)} / "
                         f"{_fmt(maps.get(other, {}).get(regime, (math.nan,))[0], 1, 3)} "
                         f"(Hebbian {d_acc:+.1f} points)")
        rows.append("| " + " | ".join(cells) + " |")
    return rows if len(rows) > 2 else []


def _readout(row: str) -> str:
    return row.partition(" ")[2] or "finetune"


def floor_row(methods: list[str], row: str) -> str | None:
    """The row with the same network and read-out but no Hebbian pre-training: SGD from scratch for a fine-tuned
    row (fine-tuning from random weights), random frozen features for a probe (its own probe kind first)."""
    arch = _arch(row)
    if _readout(row).startswith("finetune"):
        wanted = [("sgd", _readout(row)), ("sgd", "finetune")]
    else:
        wanted = [("random", _readout(row)), ("random", "probe")]
    for rule, readout in wanted:
        for m in methods:
            if _rule(m) == rule and _readout(m) == readout and _arch(m) == arch:
                return m
    return None


def _verdicts(table: Table, methods: list[str], metric: str) -> list[str]:
    """One sentence per Hebbian row: the regimes where it is above / level with / below the same network and
    read-out without pre-training (`floor_row`) in `metric`."""
    out = []
    for row in (m for m in methods if _rule(m) in HEBBIAN_RULES):
        floor = floor_row(methods, row)
        if floor is None:
            out.append(f"- {method_name(row)}: no row of its network and read-out without pre-training to compare with.")
            continue
        shared = [r for r in sorted(table[row]) if r in table.get(floor, {})]
        if not shared:
            continue
        by: dict[str, list[str]] = {}
        for r in shared:
            call = compare(table[row][r], table[floor][r])
            diff = _difference(table[row][r][0] - table[floor][r][0], metric == "accuracy")
            by.setdefault(call.rstrip("*"), []).append(f"{r:g}% ({diff}{', one seed' if call.endswith('*') else ''})")
        parts = [f"{word} at {', '.join(v)}" for word, v in by.items()]
        out.append(f"- {method_name(row)} vs {method_name(floor)}: " + "; ".join(parts) + ".")
    return out


def _headline(table: Table, methods: list[str], regimes: list[float], what: str) -> str:
    """How often the best Hebbian row beats the best SGD-from-scratch row in `table` (each the best of its kind
    in that metric), over the regimes that have both."""
    hebbian, sgd = _hebbian_and_sgd(methods)
    pairs = [(r, _best(table, hebbian, r), _best(table, sgd, r)) for r in regimes]
    pairs = [(r, h, s) for r, h, s in pairs if h and s]
    if not pairs:
        return f"In {what}, no regime has both a Hebbian and an SGD-from-scratch cell yet: no claim either way."
    losses = [f"{r:g}% ({method_name(s)})" for r, h, s in pairs if table[h][r][0] <= table[s][r][0]]
    return (f"In {what} the best Hebbian row is above the best SGD-from-scratch row at {len(pairs) - len(losses)} "
            f"of the {len(pairs)} regimes that have both ({', '.join(f'{r:g}%' for r, _, _ in pairs)})"
            + (f"; not at {', '.join(losses)}" if losses else "") + "." + _unsettled(table, pairs, what == "test accuracy"))


def _unsettled(table: Table, pairs: list, points: bool) -> str:
    """The headline's wins that the intervals do not settle (overlapping, or one side a single seed);
    differences in points when `points` (accuracy), else as the metric's own value (mAP)."""
    weak = []
    for r, h, s in pairs:
        call = compare(table[h][r], table[s][r])
        if table[h][r][0] > table[s][r][0] and call != "above":
            why = "one seed" if call.endswith("*") else "intervals overlap"
            weak.append(f"{r:g}% ({_difference(table[h][r][0] - table[s][r][0], points)}, {why})")
    return f" Of these wins, not settled by the 95% intervals: {', '.join(weak)}." if weak else ""


def findings_section(acc: Table, maps: Table, methods: list[str], regimes: list[float]) -> list[str]:
    """The markdown lines of "## What this shows" (empty when the report has no Hebbian row)."""
    if not any(_rule(m) in HEBBIAN_RULES for m in methods):
        return []
    lines = ["## What this shows", "",
             "Written from the tables above (best layer of each row); 'above' / 'below' means the 95% intervals "
             "do not overlap, 'level' that they do; 'one seed' marks a call that rests on a single run.", ""]
    lines += _regime_table(acc, maps, methods, regimes) + [""]
    lines += [_headline(acc, methods, regimes, "test accuracy"), "", _headline(maps, methods, regimes, "mAP@100"),
              "", "An SGD row without a network name is the 6-layer net.", ""]
    lines += ["Each Hebbian row against the same network and read-out without its pre-training (random frozen "
              "features for a probe, SGD from scratch for fine-tuning), test accuracy:", ""]
    lines += _verdicts(acc, methods, "accuracy") + [""]
    lines += ["The same in retrieval (mAP@100):", ""]
    lines += _verdicts(maps, methods, "map@100") + [""]
    present = {(_rule(m), _readout(m)) for m in methods}
    missing = [name for (rule, readout), name in BASELINES.items()
               if not any(r == rule and readout in (None, ro) for r, ro in present)]
    lines += ["Not in this report, so nothing above is claimed against them: " + "; ".join(missing) + ".", ""]
    return lines
