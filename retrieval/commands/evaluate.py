"""`hebbir evaluate`: the accuracy + retrieval sweep over methods, label regimes, layers and seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

from hebb.errors import UserError
from hebb.recipes import arch_for
from hebb.recipes import methods as _recipe_methods
from hebb.runtime import resolve_device
from retrieval.commands.common import add_options, positive_int
from retrieval.evaluation.sweep import PROTOCOLS

METHODS = _recipe_methods()
_DEFAULT_REGIMES = (1, 5, 10, 100)


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got '{text}'") from None
    return parse


def _seeds(text: str) -> tuple[int, ...]:
    """'N' -> seeds 0..N-1; 'A-B' -> seeds A..B; 'a,b,...' -> those seeds (a piece of a sweep run elsewhere)."""
    text = text.strip()
    try:
        if "," in text:
            seeds = tuple(int(x) for x in text.split(",") if x.strip())
        elif "-" in text.lstrip("-"):
            first, _, last = text.partition("-")
            seeds = tuple(range(int(first), int(last) + 1))
        else:
            seeds = tuple(range(positive_int(text)))
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected a count N (seeds 0..N-1), a range A-B or a list a,b of "
                                         f"distinct seeds >= 0, got '{text}'")
    return seeds


def _seeds_text(seeds: tuple[int, ...]) -> str:
    """The shortest `--seeds` value for these seeds."""
    if seeds == tuple(range(len(seeds))):
        return str(len(seeds))
    if seeds == tuple(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def _layers(text: str):
    return "best" if text.strip().lower() == "best" else _csv(int)(text)


def _networks() -> str:
    """The network each method runs on, for the help text: 'hpca, swta, ... on ARCH; ...'."""
    on: dict[str, list[str]] = {}
    for method in METHODS:
        on.setdefault(arch_for(method), []).append(method)
    return "; ".join(f"{', '.join(methods)} on {arch}" for arch, methods in on.items())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="accuracy and retrieval mAP across methods, label regimes, layers and seeds",
        description="For each method and seed: one unsupervised pre-training (cached under OUT/work), then for "
                    "each read-out, label regime and layer: the read-out trained on the labelled subset "
                    "(finetune: end to end; finetune-aug: the same on randomly flipped and shifted batches, which for "
                    "sgd is the SGD-with-augmentation baseline; probe: a linear head on the frozen trunk's cached "
                    "features; probe-std: the same head on features standardised per dimension; probe-flip: the "
                    "head trained on random horizontal flips of the labelled images), test "
                    "accuracy, and retrieval mAP@100 / mAP@R / mAP@all (database = training split, queries = "
                    f"test split). Each method runs on its own network ({_networks()}; METHOD@ARCH for another). "
                    "Finished cells go to OUT/results.json at once, with the code version; rerunning skips "
                    "them, so an interrupted sweep continues. OUT/summary.md and plots are written at the end. "
                    "--status says what is done and left, with an estimate of the time left. --curves measures how many "
                    "pre-training epochs each method needs; --protocol transfer asks whether the features serve "
                    "classes the network never saw.",
        epilog="examples: hebbir evaluate --methods hpca,sgd --regimes 1,10,100 --seeds 3 --out reports/cifar10\n"
               "          hebbir evaluate --methods softhebb,random --readouts probe --out reports/cifar10\n"
               "          hebbir evaluate --methods softhebb,random --readouts probe --out reports/cifar10 --status\n"
               "          hebbir evaluate --methods hpca,swta --pretrain-epochs 5 --curves --out reports/cifar10\n"
               f"          hebbir evaluate --methods softhebb,random@{arch_for('softhebb')} --readouts probe --regimes 10 "
               "--protocol transfer --out reports/cifar10-transfer",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, "dataset")
    p.add_argument("--methods", type=_csv(str), default=("hpca", "swta", "vae", "sgd"),
                   help="comma-separated, from " + ", ".join(METHODS) + " (default: hpca,swta,vae,sgd)")
    p.add_argument("--readouts", type=_csv(str), default=("finetune",),
                   help="comma-separated, from finetune, finetune-aug, probe, probe-std, probe-flip (default: "
                        "finetune); sgd "
                        "trains end to end only")
    p.add_argument("--regimes", type=_csv(float), default=_DEFAULT_REGIMES,
                   help="label regimes in %% of the training split (default: 1,5,10,100)")
    p.add_argument("--layers", type=_layers, default="best",
                   help="'best' (each network's top layer, the whole trunk as in the papers' Table 2) or a list "
                        "such as 1,2,3,4,5 (a network takes the layers it has)")
    p.add_argument("--seeds", type=_seeds, default=(0, 1, 2),
                   help="label seeds: N for seeds 0..N-1 (default: 3), A-B for seeds A..B or a list a,b (a piece "
                        "of a sweep to run beside another and join with --merge-from)")
    p.add_argument("--pretrain-epochs", type=positive_int, default=None,
                   help="pre-training epochs (default: the training code's default)")
    p.add_argument("--finetune-epochs", type=positive_int, default=None,
                   help="fine-tuning epochs (default: the training code's default)")
    p.add_argument("--probe-epochs", type=positive_int, default=None,
                   help="probe head epochs (default: the probe's, 50)")
    add_options(p, "batch_size",
                batch_size={"default": None, "help": "pre-training batch (default: each architecture's)"})
    p.add_argument("--share-pretraining", action="store_true",
                   help="one pre-training per method (seed 0) for every label seed: the cheaper protocol, stated "
                        "in the report (seeds then vary the labelled subset and the read-out only)")
    add_options(p, "limit", "pooling", "projection", "dim", limit={
        "help": "use at most N images of each split (a fixed random sample): quick, not comparable runs"})
    p.add_argument("--protocol", choices=PROTOCOLS, default="seed",
                   help="seed: database = training split, queries = test split (default); transfer: pre-training "
                        "and read-out on the first half of the classes only, retrieval among the other half "
                        "(classes the network never saw; regimes are %% of the seen classes' training images)")
    p.add_argument("--out", type=Path, required=True, help="report folder (results.json, summary.md, plots)")
    p.add_argument("--report-only", action="store_true", help="only regenerate summary.md and plots from results.json")
    p.add_argument("--merge-from", type=Path, default=None, metavar="DIR",
                   help="copy the finished cells of another sweep folder with the same settings (a piece run "
                        "elsewhere) into --out, and its finished pre-training curves (those --out lacks or has "
                        "fewer epochs of, same curve settings), then rewrite the report; runs nothing")
    p.add_argument("--curves", action="store_true",
                   help="measure pre-training curves instead of cells: after each of --pretrain-epochs (default 3) "
                        "unsupervised epochs, the probe's validation accuracy on the top layer, trained on the labels "
                        "of the one --regimes value (default 10), seed 0; written to OUT/curves.json and "
                        "OUT/pretraining_curves.png, and shown in the report; an interrupted VAE curve "
                        "continues after its last point, a Hebbian one starts again")
    p.add_argument("--status", action="store_true",
                   help="print what of this sweep is done and left (and the estimated time left), run nothing")
    p.add_argument("--pr-regime", type=float, default=None,
                   help="regime of the precision-recall plot (default: 10 if run, else the smallest)")
    add_options(p, "device", "data_dir")
    p.set_defaults(func=_evaluate)


def command_line(args: argparse.Namespace) -> str:
    """The sweep as a `hebbir evaluate` command with every option spelled out (recorded in the report)."""
    def fmt(v):
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, tuple) else str(v)

    parts = ["hebbir evaluate"]
    for name in ("dataset", "methods", "readouts", "regimes", "layers", "seeds", "pretrain_epochs", "finetune_epochs",
                 "probe_epochs", "batch_size", "share_pretraining", "limit", "pooling", "projection", "dim", "protocol",
                 "device", "data_dir", "out"):
        value = getattr(args, name)
        if isinstance(value, bool):
            parts += [f"--{name.replace('_', '-')}"] if value else []
        elif name == "seeds":
            parts.append(f"--seeds {_seeds_text(value)}")
        elif value is not None:
            parts.append(f"--{name.replace('_', '-')} {fmt(value)}")
    return " ".join(parts)


def _write_report(out: Path, pr_regime: float | None) -> Path:
    """The folder's report: the transfer report for a "transfer" sweep, else the main one."""
    from retrieval.evaluation.report import write_report
    from retrieval.evaluation.sweep import load_results
    from retrieval.evaluation.transfer_report import write_transfer_summary

    results = load_results(out)
    if results and results["runs"] and results["settings"].get("protocol") == "transfer":
        return write_transfer_summary(out, results)
    return write_report(out, pr_regime=pr_regime)


def _curves(args: argparse.Namespace) -> int:
    from retrieval.evaluation.curves import CURVES_FILE, CurveConfig, run_curves

    regimes = (10.0,) if args.regimes is _DEFAULT_REGIMES else args.regimes
    if len(regimes) != 1:
        raise UserError(f"--curves reads one label regime (the probe's labels), got {len(regimes)}")
    config = CurveConfig(out=args.out, methods=tuple(m.lower() for m in args.methods), epochs=args.pretrain_epochs or 3,
                         regime=regimes[0], probe_epochs=args.probe_epochs, batch_size=args.batch_size,
                         dataset=args.dataset, data_dir=args.data_dir, limit=args.limit,
                         device=str(resolve_device(args.device)))
    config.command = " ".join(
        ["hebbir evaluate --curves", f"--dataset {args.dataset}", f"--methods {','.join(config.methods)}",
         f"--pretrain-epochs {config.epochs}", f"--regimes {config.regime:g}"]
        + [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in ("probe_epochs", "batch_size", "limit")
           if getattr(args, name) is not None]
        + [f"--device {config.device}"] + ([f"--data-dir {args.data_dir}"] if args.data_dir else [])
        + [f"--out {args.out}"])
    curves = run_curves(config)
    print(f"{len(curves['curves'])} curve(s) in {args.out / CURVES_FILE}")
    _plot_curves(args.out)
    if (args.out / "results.json").is_file():
        print(f"report: {_write_report(args.out, args.pr_regime)}")
    return 0


def _plot_curves(out: Path) -> None:
    from retrieval.evaluation.report import write_curves_plot

    try:
        print(f"plot: {write_curves_plot(out)}")
    except ImportError:
        print("matplotlib is not installed here: no plot")


def _merge(args: argparse.Namespace) -> int:
    from retrieval.evaluation.curves import CURVES_FILE, check_curves_join, merge_curves
    from retrieval.evaluation.report import SUMMARY_FILE
    from retrieval.evaluation.sweep import RESULTS_FILE, merge_results

    source = args.merge_from
    has_cells, has_curves = (source / RESULTS_FILE).is_file(), (source / CURVES_FILE).is_file()
    if not (has_cells or has_curves):
        raise UserError(f"{source} holds neither {RESULTS_FILE} nor {CURVES_FILE}: nothing to merge")
    if has_curves:
        check_curves_join(args.out, source)  # before any cell is copied: a refused merge changes nothing
    changed = False
    if has_cells:
        added, present = merge_results(args.out, source)
        changed = added > 0
        print(f"merged {added} cells from {source} into {args.out}"
              + (f" ({present} already there, kept as they were)" if present else ""))
    if has_curves:
        copied = merge_curves(args.out, source)
        print(f"merged the pre-training curves of {', '.join(copied)} from {source}" if copied
              else f"no curve of {source} is new or longer than those in {args.out}")
        if copied:
            changed = True
            _plot_curves(args.out)
    if (args.out / RESULTS_FILE).is_file():
        if changed or not (args.out / SUMMARY_FILE).is_file():
            print(f"report: {_write_report(args.out, args.pr_regime)}")
        else:  # a periodic merge of a piece still on its first cell must not touch the report (not even its date)
            print(f"nothing new: the report in {args.out} is left as it was")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from retrieval.evaluation.sweep import SweepConfig, run_sweep, sweep_status

    if args.merge_from is not None:
        return _merge(args)
    elif args.curves:
        return _curves(args)
    elif not args.report_only:
        layers = None if args.layers == "best" else args.layers
        if layers == ():
            raise UserError("--layers: give 'best' or layer numbers such as 1,3,5")
        config = SweepConfig(out=args.out, dataset=args.dataset, methods=tuple(m.lower() for m in args.methods),
                             readouts=tuple(r.lower() for r in args.readouts), regimes=args.regimes, layers=layers,
                             seeds=args.seeds, pretrain_epochs=args.pretrain_epochs,
                             finetune_epochs=args.finetune_epochs, probe_epochs=args.probe_epochs,
                             batch_size=args.batch_size, share_pretraining=args.share_pretraining,
                             limit=args.limit, pooling=args.pooling,
                             projection=args.projection, dim=args.dim, protocol=args.protocol,
                             device=str(resolve_device(args.device)),
                             data_dir=args.data_dir, command=command_line(args))
        if args.status:
            status = sweep_status(config)
            hours = status["estimate_s"] / 3600
            print(f"{status['done']} of {status['cells']} cells done in {args.out}; {len(status['left'])} left, "
                  f"about {hours:.1f} h" + (f" plus unmeasured: {', '.join(status['unknown_cost'])}"
                                            if status["unknown_cost"] else ""))
            for key, done in status["resumable"].items():
                print(f"  resumable: {key} pre-training, {done}")
            for key in status["left"][:20]:
                print(f"  left: {key}")
            if len(status["left"]) > 20:
                print(f"  ... and {len(status['left']) - 20} more")
            return 0
        results = run_sweep(config)
        print(f"{len(results['runs'])} runs in {args.out / 'results.json'}")
    path = _write_report(args.out, args.pr_regime)
    print(f"report: {path}")
    return 0
