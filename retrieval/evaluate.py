"""The evaluation sweep: methods x label regimes x layers x seeds -> accuracy, retrieval metrics and timings.

For each method and seed the network is pre-trained ONCE (cached as a checkpoint under `OUT/work/`) and reused
for every regime and layer. Each run then fine-tunes a copy cut after its layer on the regime's labelled
subset, measures test accuracy, and evaluates retrieval with the "seed" protocol (DESIGN.md §6: database =
the training split, queries = the test split, features of the fine-tuned net at that layer).

Every finished run is written at once to `OUT/results.json` (atomic replace), keyed by
method/regime/layer/seed; a rerun skips what is there, so an interrupted sweep continues where it stopped, and
a sweep can be widened (more regimes, layers, seeds, methods) in the same folder. Settings that change the
numbers (epochs, data limit, dataset, ...) must match the folder's; otherwise the sweep refuses to mix them.

The training procedures are reached only through `pretrain_method` and `finetune_run` below, the one place
that knows the `hebb` training API. The sweep runs the cifar6 network (`ARCH`) only.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hebb.errors import UserError

#: The architecture the sweep builds; imagenet10 is not supported here (its data, layers and schedules differ).
ARCH = "cifar6"
METHODS = ("hpca", "swta", "wta", "vae", "sgd", "random")
#: Methods with an unsupervised pre-training stage (the others start from a fresh network).
PRETRAINED_METHODS = ("hpca", "swta", "wta", "vae")
#: Layer used for `--layers best`: the whole trunk, the configuration of the papers' Table 2.
BEST_LAYER = 5
RESULTS_FILE = "results.json"
RESULTS_FORMAT = "hebbir-evaluation"
RESULTS_VERSION = 1
#: Images of every split kept by `limit` are a seeded sample drawn with this seed (the same for all runs).
LIMIT_SEED = 12345


@dataclass
class SweepConfig:
    """What to run. `settings()` is the part that must match for results to be mixed in one folder."""

    out: Path
    dataset: str = "cifar10"
    methods: tuple[str, ...] = ("hpca", "swta", "vae", "sgd")
    regimes: tuple[float, ...] = (1, 5, 10, 100)
    layers: tuple[int, ...] = (BEST_LAYER,)
    seeds: tuple[int, ...] = (0, 1, 2)
    pretrain_epochs: int | None = None     # None: the training code's default
    finetune_epochs: int | None = None
    limit: int | None = None               # at most this many images per split (quick runs)
    device: str = "cpu"
    data_dir: Path | None = None
    split_seed: int = 0
    batch_size: int = 64
    pooling: str = "auto"                  # feature reduction, as FeatureExtractor takes it
    projection: str = "auto"
    dim: int | None = None
    command: str = field(default_factory=lambda: " ".join(shlex.quote(a) for a in sys.argv))

    def __post_init__(self):
        self.out = Path(self.out)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise UserError(f"unknown method(s) {', '.join(bad)} (choose from {', '.join(METHODS)})")
        if not self.methods or not self.regimes or not self.layers or not self.seeds:
            raise UserError("methods, regimes, layers and seeds must each name at least one value")
        for r in self.regimes:
            if not 0 < r <= 100:
                raise UserError(f"label regime must be a percentage in (0, 100], got {r}")
        from hebb.network import ARCHITECTURES

        depth = len(ARCHITECTURES[ARCH].layers)
        for layer in self.layers:
            if not 1 <= layer <= depth:
                raise UserError(f"layer must be 1..{depth} (the evaluation sweep runs the {ARCH} network), "
                                f"got {layer}")
        if self.limit is not None and self.limit < 20:
            raise UserError(f"--limit must be at least 20 images, got {self.limit}")

    def settings(self) -> dict:
        return {"dataset": self.dataset, "pretrain_epochs": self.pretrain_epochs,
                "finetune_epochs": self.finetune_epochs, "limit": self.limit, "split_seed": self.split_seed,
                "batch_size": self.batch_size, "protocol": "seed",
                "features": {"pooling": self.pooling, "projection": self.projection, "dim": self.dim}}

    def runs(self) -> list[tuple[str, float, int, int]]:
        """(method, regime, layer, seed) of every run, grouped so one pre-training serves consecutive runs."""
        return [(m, r, layer, s) for m in self.methods for s in self.seeds for r in self.regimes
                for layer in self.layers]


def run_key(method: str, regime: float, layer: int, seed: int) -> str:
    """The results.json key of one run, e.g. 'hpca/r10/l5/s0'."""
    return f"{method}/r{regime:g}/l{layer}/s{seed}"


def format_regime(regime: float) -> str:
    return f"{regime:g}"


# ------------------------------------------------------------------------------------------ results file


def device_description(device: torch.device | str) -> str:
    """A human description of the compute device, for the report header."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU: {cpu_model()}, {os.cpu_count()} logical cores visible"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_results(out: Path) -> dict | None:
    """The results.json of a sweep folder, or None when there is none."""
    path = Path(out) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); move it away to start afresh") from None
    if data.get("format") != RESULTS_FORMAT:
        raise UserError(f"{path}: not a hebbir evaluation results file")
    return data


def write_results(out: Path, data: dict) -> None:
    """Write results.json atomically: a crash leaves the previous complete file."""
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".tmp", dir=out)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a results file is for reading
        os.replace(tmp, out / RESULTS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open_results(config: SweepConfig, device: torch.device) -> dict:
    data = load_results(config.out)
    if data is None:
        return {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "settings": config.settings(),
                "created": _now(), "sessions": [], "pretraining": {}, "runs": {}}
    if data.get("settings") != config.settings():
        theirs, ours = data.get("settings", {}), config.settings()
        diff = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in ours
                         if theirs.get(k) != ours.get(k))
        raise UserError(f"{config.out} holds results made with other settings ({diff}); "
                        f"use another --out or the same settings")
    return data


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ data


def _limit_split(split, limit: int | None, salt: int):
    if limit is None or len(split) <= limit:
        return split
    rng = np.random.default_rng([LIMIT_SEED, salt])
    return split.subset(np.sort(rng.permutation(len(split))[:limit]))


_DATA_CACHE: dict[tuple, dict] = {}


def load_data(config: SweepConfig) -> dict:
    """{'train','val','test'} ArraySets, each cut to `config.limit` images by a fixed seeded sample.

    The last data set loaded is kept in memory, so that consecutive sweeps in one process load it once.
    """
    from hebb.data import load_splits

    key = (config.dataset, str(Path(config.data_dir).resolve()) if config.data_dir else None,
           config.split_seed, config.limit)
    if key not in _DATA_CACHE:
        splits = load_splits(config.dataset, config.data_dir, split_seed=config.split_seed)
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = {name: _limit_split(s, config.limit, i)
                            for i, (name, s) in enumerate(sorted(splits.items()))}
    return _DATA_CACHE[key]


# ------------------------------------------------------------------------------------------ training adapter


def pretrain_method(method: str, train, num_classes: int, config: SweepConfig, seed: int,
                    device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A network for `method`, pre-trained without labels on the training images when the method has a stage.

    Returns (net on the CPU, stats) with stats holding at least epochs, epoch_time_s and time_s.
    """
    from hebb.network import build_network
    from hebb.pretrain import recalibrate_batchnorm

    torch.manual_seed(seed)
    net = build_network(ARCH, num_classes=num_classes, rule=method)
    if method not in PRETRAINED_METHODS:
        # sgd: a fresh net; random: frozen random layers whose BN statistics are measured once (as
        # hebb.baselines.random_frozen does). Both fit the input normalisation on the unlabelled images.
        net.to(device).fit_input(train.images, seed=seed)
        if method == "random":
            recalibrate_batchnorm(net, train.images, device, seed=seed)
        return net.cpu(), {"epochs": 0, "epoch_time_s": 0.0, "time_s": 0.0}
    kwargs = {"device": device, "seed": seed, "progress": True, "batch_size": config.batch_size}
    if config.pretrain_epochs is not None:
        kwargs["epochs"] = config.pretrain_epochs
    start = time.perf_counter()
    if method == "vae":
        from hebb.baselines import vae_pretrain

        stats = vae_pretrain(net, train.images, **kwargs)
    else:
        from hebb.pretrain import pretrain

        stats = pretrain(net, train.images, **kwargs)
    wall = time.perf_counter() - start
    stats = _jsonable(dict(stats or {}))
    stats.setdefault("time_s", wall)
    stats["wall_s"] = wall      # also counts what the training code leaves out of time_s (input/ZCA fitting)
    epochs = int(stats.get("epochs", config.pretrain_epochs or 0) or 0)
    stats["epochs"] = epochs
    per_epoch = stats.get("epoch_times_s") or []
    stats.setdefault("epoch_time_s", float(np.mean(per_epoch)) if per_epoch
                     else (stats["time_s"] / epochs if epochs else 0.0))
    return net.cpu(), stats


def finetune_run(net, labelled, val, layer: int, config: SweepConfig, seed: int,
                 device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Fine-tune `net` (a private copy) cut after `layer` on the labelled subset; (net, stats with time_s)."""
    from hebb.finetune import finetune

    kwargs = {"layer": layer, "device": device, "seed": seed, "progress": False}
    if config.finetune_epochs is not None:
        kwargs["epochs"] = config.finetune_epochs
    start = time.perf_counter()
    net, stats = finetune(net, labelled, val, **kwargs)
    stats = _jsonable(dict(stats or {}))
    stats.setdefault("time_s", time.perf_counter() - start)
    return net, stats


@torch.inference_mode()
def score_accuracy(net, test, device: torch.device, batch_size: int = 500) -> dict:
    """{'top1', 'top5'} fractions of the test split classified correctly by `net` (in eval mode)."""
    from hebb.data import to_float
    from retrieval.metrics import topk_accuracy

    net = net.to(device).eval()
    logits = [net(to_float(test.images[s:s + batch_size], device)).float().cpu()
              for s in range(0, len(test), batch_size)]
    acc = topk_accuracy(torch.cat(logits), test.labels, ks=(1, 5))
    return {"top1": acc[1], "top5": acc[5]}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if torch.is_tensor(obj):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


# ------------------------------------------------------------------------------------------ one run


def retrieval_scores(net, layer: int, train, test, device: torch.device, config: SweepConfig) -> dict:
    """mAP@100, mAP@R, mAP@all, P@k and PR curves with the 'seed' protocol, plus feature timings."""
    from retrieval.features import FeatureExtractor
    from retrieval.metrics import rank_database

    start = time.perf_counter()
    ext = FeatureExtractor(net, layer, pooling=config.pooling, projection=config.projection, dim=config.dim,
                           device=device)
    ext.fit(train.images)
    db = ext.transform(train.images)
    queries = ext.transform(test.images)
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    ranking = rank_database(queries, db, test.labels.numpy(), train.labels.numpy(), device=device)
    out = ranking.summary()
    out.update(features=ext.config(), features_s=features_s, ranking_s=time.perf_counter() - start,
               database=len(db))
    return out


def _pretrained(method: str, seed: int, data: dict, config: SweepConfig, device: torch.device,
                results: dict) -> tuple[torch.nn.Module, dict]:
    """The pre-trained net of (method, seed): from the work-folder cache, else trained now and cached."""
    from hebb.checkpoint import load_checkpoint, save_checkpoint

    ckpt = config.out / "work" / f"pretrain-{method}-s{seed}.pt"
    key = f"{method}/s{seed}"
    if ckpt.is_file() and key in results["pretraining"]:
        net, _ = load_checkpoint(ckpt)
        return net, results["pretraining"][key]
    train = data["train"]
    net, stats = pretrain_method(method, train, len(train.classes), config, seed, device)
    stats["device"] = device_description(device)
    save_checkpoint(ckpt, net, {"stage": "pretrain", "dataset": config.dataset, "classes": train.classes,
                                "split_seed": config.split_seed, "training": {"seed": seed, "method": method},
                                "timings": stats})
    results["pretraining"][key] = stats
    write_results(config.out, results)
    return net, stats


def evaluate_run(pretrained, method: str, regime: float, layer: int, seed: int, data: dict,
                 config: SweepConfig, device: torch.device, pretrain_stats: dict) -> dict:
    """Fine-tune a copy of `pretrained` for one (regime, layer) and measure everything; returns the record."""
    from hebb.data import regime_indices

    train, val, test = data["train"], data["val"], data["test"]
    labelled = train.subset(regime_indices(train.labels, regime, seed))
    net = copy.deepcopy(pretrained)
    net, ft_stats = finetune_run(net, labelled, val, layer, config, seed, device)
    net = net.to(device).eval()
    acc = score_accuracy(net, test, device)
    retrieval = retrieval_scores(net, layer, train, test, device, config)
    return {
        "method": method, "regime": regime, "layer": layer, "seed": seed,
        "labelled": len(labelled), "accuracy": acc,
        "val_accuracy": ft_stats.get("val_acc"),
        "retrieval": retrieval,
        "timings": {"pretrain_epoch_s": pretrain_stats.get("epoch_time_s"),
                    "pretrain_epochs": pretrain_stats.get("epochs"),
                    "pretrain_s": pretrain_stats.get("time_s"),
                    "finetune_s": ft_stats.get("time_s"),
                    "finetune_epochs": ft_stats.get("epochs"),
                    "features_s": retrieval.pop("features_s"),
                    "ranking_s": retrieval.pop("ranking_s")},
        "finetune": ft_stats,
        "device": device_description(device),
        "finished": _now(),
    }


def run_sweep(config: SweepConfig, progress: bool = True) -> dict:
    """Run every missing (method, regime, layer, seed) of `config`; return the results dict (also on disk)."""
    device = torch.device(config.device)
    results = _open_results(config, device)
    todo = [r for r in config.runs() if run_key(*r) not in results["runs"]]
    results["sessions"].append({"started": _now(), "command": config.command, "device": device_description(device),
                                "torch": torch.__version__, "python": platform.python_version(),
                                "runs_requested": len(config.runs()), "runs_to_do": len(todo)})
    write_results(config.out, results)
    if not todo:
        return results
    data = load_data(config)
    bar = tqdm(total=len(todo), desc="evaluation runs", unit="run", disable=not progress)
    current, pretrained, pre_stats = None, None, None
    for method, regime, layer, seed in todo:
        bar.set_postfix_str(run_key(method, regime, layer, seed))
        if current != (method, seed):
            pretrained, pre_stats = _pretrained(method, seed, data, config, device, results)
            current = (method, seed)
        record = evaluate_run(pretrained, method, regime, layer, seed, data, config, device, pre_stats)
        results["runs"][run_key(method, regime, layer, seed)] = record
        write_results(config.out, results)
        bar.update(1)
    bar.close()
    return results
