"""Benchmark every hot path of hebbir in one run, each against an in-run baseline; write a JSON and a table.

    python bench/run.py [--device auto|cpu|cuda] [--quick] [--data ARCHIVE_OR_DATA_DIR] [--n-images N]

Sections: machine limits (matmul rate, copy bandwidth), work counts, rules (fast vs unfused vs per-sample
reference), pre-training epochs (HPCA, soft-WTA, WTA on cifar6; SoftHebb on wide3) vs an unfused loop, the
original FastHebb code on the same batches (`--reference PATH` or HEBBIR_FASTHEBB_REF; skipped without it),
a fine-tuning run vs a bare loop, feature extraction vs the bare forward, JPEG decoding vs PIL, exact search
(torch, faiss if installed), and a torch.profiler breakdown of one pre-training step. Needs torch only (faiss
and streamlit are optional).
The result goes to bench/results/<date>-<time>-<device>.json (see bench/README.md for the fields).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == REPO / "bench":
    sys.path[0] = str(REPO)  # run as a script: import the project, not bench/ modules as top-level names

import torch  # noqa: E402

from bench import flops, profiling, reference, rules as rule_bench, serving, timing, training  # noqa: E402

DEFAULT_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
TEMP_DIRS: list[Path] = []  # removed when the run ends
SECTIONS = ("limits", "rules", "pretrain", "reference", "finetune", "probe", "extract", "decode", "search",
            "profile")
#: (rule, architecture) of the pre-training epochs
PRETRAIN = (("hpca", "cifar6"), ("swta", "cifar6"), ("wta", "cifar6"), ("softhebb", "wide3"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole run")
    p.add_argument("--data", type=Path, default=None,
                   help="CIFAR-10 archive (.tar.gz) or a data directory holding an imported cifar10; default: "
                        "./data if cifar10 is imported there, else random uint8 images")
    p.add_argument("--n-images", type=int, default=None,
                   help="images per pre-training epoch (default 40000 on cuda, 1024 on cpu, 16 quick)")
    p.add_argument("--finetune-images", type=int, default=None,
                   help="labelled images of the fine-tuning run (default 4000 on cuda = 10%% regime, 256 on cpu)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="default 20 on cuda, 2 on cpu")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats of the short timings (default 5)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--reference", default=None,
                   help="clone or bare git directory of GabrieleLagani/HebbianLearning (tag fasthebb) for the "
                        f"reference section (default: ${reference.ENV}; skipped when neither is there)")
    p.add_argument("--git-commit", default=None,
                   help="commit to record when the tree has no .git (e.g. a copy on the device machine)")
    return p.parse_args(argv)


def sizes(args, device: torch.device) -> dict:
    gpu = device.type == "cuda"
    if args.quick:
        return dict(n_images=args.n_images or 16, ft_train=32, ft_val=16, ft_epochs=1, extract=64, decode=50,
                    n_db=2000, n_batched=50, n_single=10, repeats=args.repeats or 2, pretrain_repeats=1,
                    reference_batches=1, probe_epochs=1)
    return dict(n_images=args.n_images or (40_000 if gpu else 1024),
                ft_train=args.finetune_images or (4000 if gpu else 256), ft_val=10_000 if gpu else 256,
                ft_epochs=args.finetune_epochs or (20 if gpu else 2), extract=40_000 if gpu else 2048,
                decode=2000, n_db=40_000, n_batched=1000, n_single=1000 if gpu else 200,
                repeats=args.repeats or 5, pretrain_repeats=3 if gpu else 1, reference_batches=5,
                probe_epochs=50 if gpu else 10)


def load_data(args, need: int):
    """(train ArraySet, val ArraySet, description): CIFAR-10 if available, else random images with labels."""
    from hebb.data import ArraySet, import_dataset, is_imported, load_splits

    data = args.data
    if data is not None and data.is_file():
        data_dir = Path(tempfile.mkdtemp(prefix="hebbir-bench-data-"))
        TEMP_DIRS.append(data_dir)
        import_dataset("cifar10", data, data_dir)
    elif data is not None:
        data_dir = data
    else:
        data_dir = REPO / "data"
        if not is_imported("cifar10", data_dir):
            data_dir = None
    if data_dir is not None:
        splits = load_splits("cifar10", data_dir)
        return splits["train"], splits["val"], f"CIFAR-10 from {data_dir}"
    g = torch.Generator().manual_seed(0)
    n = max(need, 64)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 10
    classes = [f"class{i}" for i in range(10)]
    train = ArraySet(images, labels, [f"random/{i}" for i in range(n)], classes)
    return train, train, "random uint8 images (no CIFAR-10 given)"


def _take(ds, n):
    from hebb.data import ArraySet

    n = min(n, len(ds))
    return ArraySet(ds.images[:n], ds.labels[:n], ds.paths[:n], ds.classes)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def pretrain_flops(batch_sizes: list[int], rule: str, device_type: str, arch: str = "cifar6",
                   whitening: bool = False) -> float:
    """FLOPs of the fast pre-training steps for these batch sizes (2 x MACs of forward + update, and of the
    input's ZCA whitening when `whitening` and the rule's network whitens)."""
    key = {"hpca": "hpca_fast"}.get(rule, rule)
    total = 0.0
    for b in set(batch_sizes):
        work = flops.network_work(batch=b, device_type=device_type, arch=arch)["totals"][f"{key}_step_gmac_per_batch"]
        zca = flops.zca_macs(rule, b, arch) if whitening else 0
        total += 2 * (work * 1e9 + zca) * batch_sizes.count(b)
    return total


def epoch_batches(n: int, batch: int = flops.BATCH) -> list[int]:
    sizes_ = [min(batch, n - s) for s in range(0, n, batch)]
    return [b for b in sizes_ if b >= 2]


def run_sections(args, device, sz, sections, result, log):
    metrics = result["metrics"]
    details = result["details"]
    rate = None

    def section(name, fn):
        if name not in sections:
            return
        t0 = time.perf_counter()
        log(f"[{name}] ...")
        try:
            fn()
        except Exception as exc:  # one broken section must not lose the others
            details.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            log(traceback.format_exc())
        log(f"[{name}] {time.perf_counter() - t0:.1f} s")

    def limits():
        nonlocal rate
        lim = timing.machine_limits(device, quick=args.quick)
        details["limits"] = lim
        metrics["matmul_gflops"] = lim["matmul"]["gflops"]
        metrics["copy_gbs"] = lim["copy"]["gbs"]
        rate = lim["matmul"]["gflops"]

    def frac(gflops, local=None):
        limit = local or rate
        return None if limit is None or gflops is None else gflops / limit

    def local_rate(fn):
        """fn()'s result and the matmul rate measured just before and after it (mean): on a shared machine
        the rate of the moment, against which the fractions of that timing are taken."""
        if "limits" not in sections:
            return fn(), None
        n = 512 if args.quick else None
        before = timing.matmul_rate(device, n, repeats=3)["gflops"]
        out = fn()
        return out, (before + timing.matmul_rate(device, n, repeats=3)["gflops"]) / 2

    section("limits", limits)
    details["work"] = flops.network_work(device_type=device.type)
    log(flops.format_table(details["work"]))
    need = max(sz["n_images"], sz["extract"], sz["ft_train"] + 1)
    train, val, data_desc = load_data(args, need)
    result["data"] = data_desc

    def rules_():
        cases, local = local_rate(lambda: rule_bench.run(device, repeats=sz["repeats"], quick=args.quick))
        details["rules"] = cases
        for c in cases:
            c["matmul_gflops_local"] = local
            c["fast_fraction_of_matmul"] = frac(c["fast_gflops"], local)
        metrics["rules_fast_equal_reference"] = all(c.get("fast_equals_reference", True) for c in cases)
        metrics["rules_max_rel_err_vs_reference"] = max(c["rel_err_vs_reference"].get("fast", 0) for c in cases)

    def pretrain_():
        n = min(sz["n_images"], len(train))
        images = train.images[:n]
        for rule, arch in PRETRAIN:
            r, local = local_rate(lambda: training.pretrain_epoch(rule, images, device, repeats=sz["pretrain_repeats"],
                                                                  warmup_images=min(256, n), arch=arch))
            # the epoch whitens each batch before layer 1 (soft-WTA, WTA): that product is part of its work
            fl = pretrain_flops(epoch_batches(n, r["batch"]), rule, device.type, arch, whitening=True)
            layers_fl = pretrain_flops(epoch_batches(n, r["batch"]), rule, device.type, arch)
            r["fast_gflops"] = fl / r["epoch_s"] / 1e9
            r["matmul_gflops_local"] = local
            r["fraction_of_matmul"] = frac(r["fast_gflops"], local)
            r["fraction_of_matmul_layers_only"] = frac(layers_fl / r["epoch_s"] / 1e9, local)
            r["floor_s_at_matmul_rate"] = None if rate is None else fl / ((local or rate) * 1e9)
            details[f"pretrain_{rule}"] = r
            metrics.update({f"{rule}_epoch_s": r["epoch_s"], f"{rule}_n_images": n,
                            f"{rule}_images_per_s": r["images_per_s"],
                            f"{rule}_unfused_epoch_s": r.get("unfused_epoch_s"),
                            f"{rule}_speedup_vs_unfused": r.get("speedup_vs_unfused"),
                            f"{rule}_fraction_of_matmul": r["fraction_of_matmul"]})

    def reference_():
        repo = reference.locate(args.reference)
        if repo is None:
            details["reference"] = {"skipped": f"no reference code (give --reference PATH or ${reference.ENV})"}
            log(details["reference"]["skipped"])
            return
        n = 64 * (sz["reference_batches"] + 1)
        cases = []
        for rule in reference.RULES:
            c, local = local_rate(lambda: reference.compare(rule, train.images[:max(n, 1024)], repo,
                                                            batches=sz["reference_batches"]))
            c["matmul_gflops_local"] = local
            cases.append(c)
        work = {rule: pretrain_flops([64], rule, device.type) for rule in reference.RULES}
        for c in cases:
            local = c["matmul_gflops_local"] or rate
            c["hebbir_fraction_of_matmul"] = frac(work[c["rule"]] / c["hebbir_s_per_batch"] / 1e9, local)
            c["floor_s_at_matmul_rate"] = None if local is None else work[c["rule"]] / (local * 1e9)
            c["speedup_ceiling_at_matmul_rate"] = (None if rate is None
                                                   else c["reference_s_per_batch"] / c["floor_s_at_matmul_rate"])
            metrics[f"{c['rule']}_speedup_vs_reference"] = c["speedup"]
            metrics[f"{c['rule']}_reference_s_per_batch"] = c["reference_s_per_batch"]
            metrics[f"{c['rule']}_hebbir_s_per_batch"] = c["hebbir_s_per_batch"]
        details["reference"] = {"repo": str(repo), "tag": reference.TAG, "cases": cases}

    def finetune_():
        tr = _take(train, sz["ft_train"])
        va = _take(val, sz["ft_val"]) if val is not train else tr
        r = training.finetune_run(tr, va, device, sz["ft_epochs"], repeats=1 if args.quick else 3)
        details["finetune"] = r
        metrics.update(finetune_run_s=r["run_s"], finetune_config=r["config"],
                       finetune_plain_loop_s=r.get("plain_loop_s"),
                       finetune_overhead_vs_plain=r.get("overhead_vs_plain"))

    def probe_():
        tr = _take(train, sz["ft_train"])
        va = _take(val, sz["ft_val"]) if val is not train else tr
        r = training.probe_run(tr, va, device, sz["probe_epochs"], repeats=1 if args.quick else 3)
        details["probe"] = r
        metrics.update(probe_run_s=r["run_s"], probe_config=r["config"], probe_plain_loop_s=r.get("plain_loop_s"),
                       probe_overhead_vs_plain=r.get("overhead_vs_plain"))

    def extract():
        r = serving.extraction(train.images[:sz["extract"]], device, fit_images=min(1024, sz["extract"]))
        r["bare_forward_fraction_of_matmul"] = frac(r["bare_forward_gflops"])
        details["extract"] = r
        metrics.update(extract_img_per_s=r["extract_img_per_s"], extract_n_images=r["n_images"],
                       extract_bare_forward_img_per_s=r["bare_forward_img_per_s"],
                       extract_forward_fraction_of_matmul=r["bare_forward_fraction_of_matmul"])

    def decode():
        archive = args.data if args.data is not None and args.data.is_file() else DEFAULT_ARCHIVE
        r = serving.decoding(archive, sz["decode"])
        details["decode"] = r
        metrics.update(decode_img_per_s=r["load_image_img_per_s"], decode_pil_img_per_s=r["pil_img_per_s"])

    def search():
        r = serving.search(device, n_db=sz["n_db"], n_batched=sz["n_batched"], n_single=sz["n_single"])
        r["torch_batched_fraction_of_matmul"] = frac(r["torch_batched_gflops"])
        details["search"] = r
        metrics.update(search_qps=r["search_qps"], search_single_qps=r["torch_single_qps"],
                       search_n_db=r["n_db"], search_dim=r["dim"], search_k=r["k"],
                       search_faiss_qps=r.get("faiss_batched_qps"),
                       search_fraction_of_matmul=r["torch_batched_fraction_of_matmul"])

    def profile():
        steps = 1 if args.quick else 3
        details["profile"] = [profiling.pretrain_step_profile(rule, device, steps=steps) for rule in ("hpca", "swta")]
        details["profile"].append(profiling.pretrain_step_profile("softhebb", device, steps=steps * 10, arch="wide3",
                                                                  batch=10))  # its reference batch

    section("rules", rules_)
    section("pretrain", pretrain_)
    section("reference", reference_)
    section("finetune", finetune_)
    section("probe", probe_)
    section("extract", extract)
    section("decode", decode)
    section("search", search)
    section("profile", profile)


REQUIRED_METRICS = ("hpca_epoch_s", "swta_epoch_s", "finetune_run_s", "extract_img_per_s", "search_qps")


def format_summary(result: dict) -> str:
    m, d = result["metrics"], result["details"]

    def f(x, spec=".3g"):
        return "-" if x is None else (format(x, spec) if isinstance(x, (int, float)) else str(x))

    lines = [f"device {result['device']} | load {result['load']} | {result['date']} | data: {result.get('data')}",
             f"limits: matmul {f(m.get('matmul_gflops'))} GFLOP/s, copy {f(m.get('copy_gbs'))} GB/s",
             f"{'metric':<22} {'value':>10} {'baseline':>10} {'speed-up':>8} {'of mm':>6}  notes"]

    def row(name, value, base=None, speedup=None, fraction=None, note=""):
        lines.append(f"{name:<22} {f(value):>10} {f(base):>10} {f(speedup):>8} "
                     f"{f(fraction, '.1%') if fraction is not None else '-':>6}  {note}")

    for rule, _ in PRETRAIN:
        if m.get(f"{rule}_epoch_s") is not None:
            row(f"{rule}_epoch_s", m[f"{rule}_epoch_s"], m.get(f"{rule}_unfused_epoch_s"),
                m.get(f"{rule}_speedup_vs_unfused"), m.get(f"{rule}_fraction_of_matmul"),
                f"n={m[f'{rule}_n_images']}, {f(m[f'{rule}_images_per_s'])} img/s; baseline unfused loop")
    for c in d.get("reference", {}).get("cases", []):
        row(f"{c['rule']}_s_per_batch", c["hebbir_s_per_batch"], c["reference_s_per_batch"], c["speedup"],
            c.get("hebbir_fraction_of_matmul"),
            f"batch {c['batch']}, {c['batches']} batches interleaved; baseline FastHebb code; ceiling at the "
            f"matmul rate {f(c.get('speedup_ceiling_at_matmul_rate'))}x; update diff "
            f"{f(max(c['first_update_rel_diff_per_layer']), '.1e')}")
    if m.get("finetune_run_s") is not None:
        c = m["finetune_config"]
        row("finetune_run_s", m["finetune_run_s"], m.get("finetune_plain_loop_s"),
            None if not m.get("finetune_overhead_vs_plain") else 1 / m["finetune_overhead_vs_plain"], None,
            f"{c['train_images']} train / {c['val_images']} val, {c['epochs']} epochs; baseline bare loop")
    if m.get("probe_run_s") is not None:
        c = m["probe_config"]
        row("probe_run_s", m["probe_run_s"], m.get("probe_plain_loop_s"),
            None if not m.get("probe_overhead_vs_plain") else 1 / m["probe_overhead_vs_plain"], None,
            f"{c['train_images']} train / {c['val_images']} val, {c['epochs']} epochs; baseline bare loop")
    if m.get("extract_img_per_s") is not None:
        row("extract_img_per_s", m["extract_img_per_s"], m.get("extract_bare_forward_img_per_s"), None,
            m.get("extract_forward_fraction_of_matmul"), f"n={m['extract_n_images']}, layer 5; baseline bare forward")
    if m.get("decode_img_per_s") is not None:
        row("decode_img_per_s", m["decode_img_per_s"], m.get("decode_pil_img_per_s"), None, None,
            "load_image, 1 thread; baseline bare PIL")
    if m.get("search_qps") is not None:
        row("search_qps", m["search_qps"], m.get("search_faiss_qps"), None, m.get("search_fraction_of_matmul"),
            f"{m['search_n_db']}x{m['search_dim']}, k={m['search_k']}, batched; single "
            f"{f(m.get('search_single_qps'))} q/s; baseline faiss Flat")
    for c in d.get("rules", []):
        t = c["times_s"]
        row(f"rule {c['rule']} L{c['layer']} B{c['batch']}", t["fast"], t["unfused"], c["speedup_vs_unfused"],
            c.get("fast_fraction_of_matmul"),
            f"rules-on-unfold {f(t['rules'])} s; {f(c['speedup_vs_reference'])}x vs per-sample reference "
            f"(B{c['reference_batch']}); err {f(c['rel_err_vs_reference']['fast'], '.1e')}"
            + (f"; candidate prefix {f(t['candidate_prefix'])} s" if "candidate_prefix" in t else ""))
    for p in d.get("profile", []):
        lines.append(profiling.format_profile(p))
    for name, err in d.get("errors", {}).items():
        lines.append(f"ERROR in {name}: {err}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = timing.pick_device(args.device)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"bench: unknown sections {sorted(unknown)} (choose from {SECTIONS})")
    sz = sizes(args, device)
    now = datetime.now(timezone.utc)
    result = {"device": timing.device_name(device), "device_type": device.type,
              "date": now.isoformat(timespec="seconds"),
              "command": " ".join(["python", "bench/run.py"] + (sys.argv[1:] if argv is None else list(argv))),
              "git_commit": timing.git_commit(str(REPO)) or args.git_commit, "load": timing.load_average(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick,
              "sizes": sz, "metrics": {}, "details": {}}
    started = time.perf_counter()
    try:
        run_sections(args, device, sz, sections, result, lambda s: print(s, file=sys.stderr, flush=True))
    finally:
        for path in TEMP_DIRS:
            shutil.rmtree(path, ignore_errors=True)
    for key in REQUIRED_METRICS:
        result["metrics"].setdefault(key, None)
    result["load_after"] = timing.load_average()
    result["bench_wall_s"] = time.perf_counter() - started
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{now:%Y-%m-%d-%H%M}-{device.type}-{slug(result['device'])}{'-quick' if args.quick else ''}.json"
    path = args.out_dir / name
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(format_summary(result))
    print(f"wrote {path}")
    return 1 if result["details"].get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
