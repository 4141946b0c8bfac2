"""Markdown tables of benchmark results, for docs/PERFORMANCE.md:  python bench/report.py bench/results/*.json"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x, spec=".3g") -> str:
    if x is None:
        return "–"
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def _pct(x) -> str:
    return "–" if x is None else f"{x:.0%}"


def results_table(result: dict) -> str:
    """One result file as a markdown table: metric, value, in-run baseline, ratio, fraction of matmul rate."""
    m, d = result["metrics"], result["details"]
    head = (f"**{result['device']}** — {result['date']} — load {result['load']} → {result.get('load_after')} — "
            f"commit `{result['git_commit']}` — data: {result.get('data')}\n\n"
            f"`{result['command']}`\n\n"
            f"Measured limits: fp32 matmul {_f(m.get('matmul_gflops'))} GFLOP/s, copy {_f(m.get('copy_gbs'))} GB/s.\n\n"
            "| metric | value | in-run baseline | speed-up (baseline time ÷ project time) | of matmul rate | "
            "measured with |\n"
            "|---|---|---|---|---|---|\n")
    rows = []
    for rule in ("hpca", "swta"):
        if m.get(f"{rule}_epoch_s") is not None:
            rows.append((f"`{rule}_epoch_s`", _f(m[f"{rule}_epoch_s"]) + " s",
                         f"unfused loop {_f(m.get(f'{rule}_unfused_epoch_s'))} s",
                         f"{_f(m.get(f'{rule}_speedup_vs_unfused'), '.2f')}x",
                         _pct(m.get(f"{rule}_fraction_of_matmul")),
                         f"{m[f'{rule}_n_images']} images, batch 64 ({_f(m[f'{rule}_images_per_s'])} img/s)"))
    if m.get("finetune_run_s") is not None:
        c = m["finetune_config"]
        rows.append(("`finetune_run_s`", _f(m["finetune_run_s"]) + " s",
                     f"bare loop {_f(m.get('finetune_plain_loop_s'))} s",
                     f"{_f(1 / m['finetune_overhead_vs_plain'], '.2f')}x" if m.get("finetune_overhead_vs_plain")
                     else "–", "–",
                     f"{c['train_images']} train / {c['val_images']} val images, {c['epochs']} epochs, layer {c['layer']}"))
    if m.get("extract_img_per_s") is not None:
        rows.append(("`extract_img_per_s`", _f(m["extract_img_per_s"]),
                     f"bare forward {_f(m.get('extract_bare_forward_img_per_s'))} img/s",
                     f"{_f(m['extract_img_per_s'] / m['extract_bare_forward_img_per_s'], '.2f')}x"
                     if m.get("extract_bare_forward_img_per_s") else "–",
                     _pct(m.get("extract_forward_fraction_of_matmul")) + " (bare forward)",
                     f"{m['extract_n_images']} images, layer 5 flatten + PCA 256"))
    if m.get("decode_img_per_s") is not None:
        rows.append(("`decode_img_per_s`", _f(m["decode_img_per_s"]), f"bare PIL {_f(m.get('decode_pil_img_per_s'))}",
                     f"{_f(m['decode_img_per_s'] / m['decode_pil_img_per_s'], '.2f')}x", "–",
                     "CIFAR JPEGs in memory, 1 thread"))
    if m.get("search_qps") is not None:
        s = d.get("search", {})
        rows.append(("`search_qps`", _f(m["search_qps"]),
                     f"faiss Flat {_f(m.get('search_faiss_qps'))}; TorchBackend {_f(s.get('backend_batched_qps'))}",
                     "–", _pct(m.get("search_fraction_of_matmul")),
                     f"{m['search_n_db']} x {m['search_dim']}, k={m['search_k']}, 1,000 queries at once; "
                     f"one at a time {_f(m.get('search_single_qps'))} q/s"))
    body = "\n".join("| " + " | ".join(r) + " |" for r in rows)
    return head + body + "\n"


def rules_table(result: dict) -> str:
    """The per-layer rule timings of one result as a markdown table."""
    cases = result["details"].get("rules", [])
    if not cases:
        return ""
    out = ["| rule, layer, batch | fast (project) | rules on unfold | unfused | candidate prefix | "
           "fast vs unfused | fast vs per-sample reference | rel. err vs reference | fast, of matmul rate |",
           "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        t = c["times_s"]
        out.append(f"| {c['rule']} L{c['layer']} B{c['batch']} | {_f(t['fast'])} s | {_f(t['rules'])} s | "
                   f"{_f(t['unfused'])} s | {_f(t.get('candidate_prefix'))}{' s' if 'candidate_prefix' in t else ''} | "
                   f"{_f(c['speedup_vs_unfused'], '.2f')}x | {_f(c['speedup_vs_reference'], '.3g')}x "
                   f"(B{c['reference_batch']}) | {c['rel_err_vs_reference']['fast']:.1e} | "
                   f"{_pct(c.get('fast_fraction_of_matmul'))} |")
    return "\n".join(out) + "\n"


def profile_table(result: dict) -> str:
    out = []
    for p in result["details"].get("profile", []):
        out.append(f"{p['rule']}: {p['total_ms_per_step']:.0f} ms per step of 64 images ({p['sort_key']})\n")
        out.append("| share | ms/step | calls/step | op |\n|---|---|---|---|")
        for r in p["top_ops"][:8]:
            out.append(f"| {r['share']:.0%} | {r['ms_per_step']:.0f} | {r['calls_per_step']:.0f} | `{r['op']}` |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    for path in paths:
        result = json.loads(path.read_text())
        print(f"### {path.name}\n")
        print(results_table(result))
        print(rules_table(result))
        print(profile_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
