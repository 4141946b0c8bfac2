"""The evaluation sweep: methods x read-outs x label regimes x layers x seeds -> accuracy, retrieval, timings.

For each method and seed the network is pre-trained ONCE (cached as a checkpoint under `OUT/work/`) and reused
for every read-out, regime and layer (`hebb.recipes`, the one training recipe). Each cell then reads the
network out on the regime's labelled subset and measures test accuracy and retrieval with the "seed" protocol
(docs/EVALUATION.md: database = the training split, queries = the test split):

- read-out "finetune": a copy cut after the layer is fine-tuned end to end; retrieval uses its features;
- read-out "probe": the trunk stays frozen; the layer's features of every split are computed once per
  (method, seed, layer) and shared by the regimes, which train only a linear head on them. Retrieval reads
  the frozen trunk, so it is the same for every regime of that (method, seed, layer) and measured once.

Protocol "transfer" (`--protocol transfer`) asks whether the features serve images unlike those they learned
from: pre-training and read-out see only the first half of the classes (their training-split images, their
labels, their validation and test images for the accuracy); retrieval runs among the other half (database =
their training-split images, queries = their test images), classes the network never saw.

Every finished cell is written at once to `OUT/results.json` (atomic replace), keyed by
method/[probe/]regime/layer/seed with the code version it ran with; a rerun skips what is there, so an
interrupted sweep continues where it stopped, and a sweep can be widened in the same folder. Settings that
change the numbers (epochs, data limit, dataset, ...) must match the folder's; otherwise the sweep refuses
to mix them.

The training procedures are reached only through `pretrain_method`, `finetune_run` and `probe_run` below.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hebb.architectures import ARCHITECTURES
from hebb.baselines import vae_progress
from hebb.errors import UserError
from hebb.recipes import UNTRAINED_METHODS, arch_for, canonical_method
from hebb.recipes import methods as recipe_methods
from hebb.runtime import code_version, device_description, utc_now, write_json_atomic

METHODS = tuple(m for m in recipe_methods() if m != "random") + ("random",)
#: Methods with an unsupervised pre-training stage (the others start from a fresh network).
PRETRAINED_METHODS = tuple(m for m in METHODS if m not in UNTRAINED_METHODS)
#: "finetune-aug": the fine-tuning recipe on randomly flipped and shifted batches (the augmentation a
#: practitioner would use; for sgd it is the "SGD with augmentation" baseline).
READOUTS = ("finetune", "finetune-aug", "probe", "probe-std", "probe-flip")
#: Read-outs on the frozen trunk's cached features ("probe-std": the head on standardised features;
#: "probe-flip": the head trained on random horizontal flips, the mirrored images' features cached too).
PROBE_READOUTS = ("probe", "probe-std", "probe-flip")
# The weight of the read-out head's class probabilities in the cells' second retrieval ("retrieval_head"): the
# quickstart index's `--head-weight`.
HEAD_WEIGHT = 1.0
RESULTS_FILE = "results.json"
RESULTS_FORMAT = "hebbir-evaluation"
RESULTS_VERSION = 1
#: Images of every split kept by `limit` are a seeded sample drawn with this seed (the same for all runs).
LIMIT_SEED = 12345
#: The input side of every image the sweep loads: architectures with another input size are not swept.
SWEEP_INPUT_SIZE = 32
#: Retrieval protocols: "seed" (database = training split, queries = test split, every class) and "transfer"
#: (network and read-out from the first half of the classes, retrieval among the other half).
PROTOCOLS = ("seed", "transfer")


def method_arch(method: str) -> str:
    """The architecture a method's networks are built on."""
    return arch_for(method)


def method_depth(method: str) -> int:
    """Feature layers of a method's architecture."""
    from hebb.architectures import architecture

    return architecture(method_arch(method)).depth


@dataclass
class SweepConfig:
    """What to run. `settings()` is the part that must match for results to be mixed in one folder."""

    out: Path
    dataset: str = "cifar10"
    methods: tuple[str, ...] = ("hpca", "swta", "vae", "sgd")
    regimes: tuple[float, ...] = (1, 5, 10, 100)
    layers: tuple[int, ...] | None = None  # None: each method's top layer (the papers' Table 2 setting)
    seeds: tuple[int, ...] = (0, 1, 2)
    readouts: tuple[str, ...] = ("finetune",)
    pretrain_epochs: int | None = None     # None: the training code's default
    finetune_epochs: int | None = None
    probe_epochs: int | None = None
    share_pretraining: bool = False        # one pre-training per method (seed 0) serves every label seed
    limit: int | None = None               # at most this many images per split (quick runs)
    device: str = "cpu"
    data_dir: Path | None = None
    split_seed: int = 0
    batch_size: int | None = None         # pre-training batch (None: each architecture's)
    pooling: str = "auto"                  # feature reduction, as FeatureExtractor takes it
    projection: str = "auto"
    dim: int | None = None
    protocol: str = "seed"
    command: str = field(default_factory=lambda: " ".join(shlex.quote(a) for a in sys.argv))

    def __post_init__(self):
        self.out = Path(self.out)
        bad = [m for m in self.methods if m.partition("@")[0] not in METHODS]
        if bad:
            raise UserError(f"unknown method(s) {', '.join(bad)} (choose from {', '.join(METHODS)})")
        self.methods = tuple(canonical_method(m) for m in self.methods)
        bad = [r for r in self.readouts if r not in READOUTS]
        if bad:
            raise UserError(f"unknown read-out(s) {', '.join(bad)} (choose from {', '.join(READOUTS)})")
        if not self.methods or not self.regimes or self.layers == () or not self.seeds or not self.readouts:
            raise UserError("methods, read-outs, regimes, layers and seeds must each name at least one value")
        for r in self.regimes:
            if not 0 < r <= 100:
                raise UserError(f"label regime must be a percentage in (0, 100], got {r}")
        from hebb.architectures import architecture

        for m in self.methods:  # an unknown architecture or one the method is not built for says so here
            if architecture(method_arch(m)).input_size != SWEEP_INPUT_SIZE:
                raise UserError(f"the sweep runs {SWEEP_INPUT_SIZE}x{SWEEP_INPUT_SIZE} networks; '{m}' is built "
                                f"on {method_arch(m)}")
        depth = max(method_depth(m) for m in self.methods)
        for layer in self.layers or ():
            if not 1 <= layer <= depth:
                raise UserError(f"layer must be 1..{depth} (the deepest network of these methods), got {layer}")
        if self.limit is not None and self.limit < 20:
            raise UserError(f"--limit must be at least 20 images, got {self.limit}")
        if self.protocol not in PROTOCOLS:
            raise UserError(f"unknown protocol '{self.protocol}' (choose from {', '.join(PROTOCOLS)})")

    def settings(self) -> dict:
        out = {"dataset": self.dataset, "pretrain_epochs": self.pretrain_epochs,
               "finetune_epochs": self.finetune_epochs, "limit": self.limit, "split_seed": self.split_seed,
               "batch_size": self.batch_size, "protocol": self.protocol,
               "features": {"pooling": self.pooling, "projection": self.projection, "dim": self.dim}}
        out["probe_epochs"] = self.probe_epochs  # a setting even when this call runs no probe: folders mix calls
        if self.share_pretraining:
            out["pretraining"] = "shared by the label seeds"
        if self.protocol == "transfer":
            out["classes"] = "first half seen (pre-training, read-out, accuracy), second half unseen (retrieval)"
        return out

    def pretrain_seed(self, seed: int) -> int:
        """The seed of the pre-training a cell of label seed `seed` reads."""
        return 0 if self.share_pretraining else seed

    def method_layers(self, method: str) -> tuple[int, ...]:
        """The layers swept for `method`: the asked-for ones its network has, or its top layer."""
        depth = method_depth(method)
        return (depth,) if self.layers is None else tuple(layer for layer in self.layers if layer <= depth)

    def runs(self) -> list[tuple[str, str, float, int, int]]:
        """(method, readout, regime, layer, seed) of every cell, grouped so that one pre-training (and, for
        probes, one feature pass per layer) serves consecutive cells."""
        return [(m, ro, r, layer, s) for m in self.methods for s in self.seeds for ro in self.readouts
                if not (m.partition("@")[0] == "sgd" and ro in PROBE_READOUTS)  # sgd has no trunk of its own to freeze
                for layer in self.method_layers(m) for r in self.regimes]


def run_key(method: str, regime: float, layer: int, seed: int, readout: str = "finetune") -> str:
    """The results.json key of one cell, e.g. 'hpca/r10/l5/s0' (fine-tuned) or 'softhebb/probe/r10/l3/s0'."""
    middle = "" if readout == "finetune" else f"{readout}/"
    return f"{method}/{middle}r{regime:g}/l{layer}/s{seed}"


# ------------------------------------------------------------------------------------------ results file


def load_json_file(path: Path, file_format: str, what: str) -> dict | None:
    """The JSON file at `path` whose "format" is `file_format`, or None when there is none; a clear error for
    a broken file or another kind of file (`what` names the expected kind)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); move it away to start afresh") from None
    if data.get("format") != file_format:
        raise UserError(f"{path}: not a hebbir {what} file")
    return data


def load_results(out: Path) -> dict | None:
    """The results.json of a sweep folder, or None when there is none."""
    data = load_json_file(Path(out) / RESULTS_FILE, RESULTS_FORMAT, "evaluation results")
    return None if data is None else _current_names(data)


def _current_names(data: dict) -> dict:
    """`data` with the methods of its cells and keys under the architectures' current names (a file written
    before a rename reads, and resumes, as one written now)."""
    def key(k: str) -> str:
        method, slash, rest = k.partition("/")
        return canonical_method(method) + slash + rest

    for section in ("runs", "pretraining"):
        if isinstance(data.get(section), dict):
            data[section] = {key(k): v for k, v in data[section].items()}
    for record in (data.get("runs") or {}).values():
        if isinstance(record, dict) and isinstance(record.get("method"), str):
            record["method"] = canonical_method(record["method"])
        if isinstance(record, dict) and isinstance(record.get("arch"), str):
            record["arch"] = ARCHITECTURES.resolve(record["arch"])
    return data


def write_results(out: Path, data: dict) -> None:
    """Write results.json atomically: a crash leaves the previous complete file."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RESULTS_FILE, data, indent=1)


def settings_diff(theirs: dict, ours: dict) -> str:
    """'key: X there, Y now' for every setting on which two sweep folders differ."""
    return ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in ours if theirs.get(k) != ours.get(k))


def _open_results(config: SweepConfig) -> dict:
    data = load_results(config.out)
    if data is None:
        return {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "settings": config.settings(),
                "created": utc_now(), "sessions": [], "pretraining": {}, "runs": {}}
    if data.get("settings") != config.settings():
        diff = settings_diff(data.get("settings", {}), config.settings())
        raise UserError(f"{config.out} holds results made with other settings ({diff}); "
                        f"use another --out or the same settings")
    return data


# ------------------------------------------------------------------------------------------ data


def _limit_split(split, limit: int | None, salt: int):
    if limit is None or len(split) <= limit:
        return split
    rng = np.random.default_rng([LIMIT_SEED, salt])
    return split.subset(np.sort(rng.permutation(len(split))[:limit]))


def class_subset(split, keep: list[int]):
    """The images of `split` whose class is in `keep`, relabelled 0..len(keep)-1 in that order."""
    from dataclasses import replace

    labels = split.labels.numpy()
    sub = split.subset(np.flatnonzero(np.isin(labels, keep)))
    relabel = torch.full((len(split.classes),), -1, dtype=torch.long)
    relabel[torch.as_tensor(keep)] = torch.arange(len(keep))
    return replace(sub, labels=relabel[sub.labels], classes=[split.classes[c] for c in keep])


def transfer_splits(splits: dict) -> dict:
    """The "transfer" protocol's sets: train / val / test of the first half of the classes (what the network
    and its read-out learn from, and the accuracy), db / queries from the other half (retrieval)."""
    n = len(splits["train"].classes)
    if n < 4:
        raise UserError(f"the transfer protocol needs at least 4 classes (2 seen, 2 unseen), this data set has {n}")
    seen, unseen = list(range(n // 2)), list(range(n // 2, n))
    out = {name: class_subset(splits[name], seen) for name in ("train", "val", "test")}
    out.update(db=class_subset(splits["train"], unseen), queries=class_subset(splits["test"], unseen))
    return out


_DATA_CACHE: dict[tuple, dict] = {}


def load_data(config: SweepConfig) -> dict:
    """{'train','val','test','db','queries'} ArraySets, each cut to `config.limit` images by a fixed seeded
    sample. Protocol "seed": db is train, queries is test; "transfer": see `transfer_splits`.

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
    data = _DATA_CACHE[key]
    if config.protocol == "transfer":
        return transfer_splits(data)
    return dict(data, db=data["train"], queries=data["test"])


# ------------------------------------------------------------------------------------------ training adapter


def pretrain_method(method: str, train, num_classes: int, config: SweepConfig, seed: int,
                    device: torch.device, resume: Path | None = None) -> tuple[torch.nn.Module, dict]:
    """A network for `method`, pre-trained without labels on the training images when the method has a stage.

    resume: the VAE's progress file (its pre-training is the one that runs for hours).
    Returns (net on the CPU, stats) with stats holding at least epochs, epoch_time_s and time_s.
    """
    from hebb.recipes import pretrained_network

    start = time.perf_counter()
    net, stats = pretrained_network(method, None, train.images, num_classes, epochs=config.pretrain_epochs,
                                    batch_size=config.batch_size, device=device, seed=seed, progress=True,
                                    resume=resume)
    wall = time.perf_counter() - start
    stats = _jsonable(dict(stats or {}))
    # wall_s also counts what the training code leaves out of time_s (input/ZCA fitting); after a resume, the
    # earlier sessions' epochs count by their training time (their fitting is not known)
    if stats.get("resumed_at_epoch"):
        wall += sum((stats.get("epoch_times_s") or [])[:stats["resumed_at_epoch"]])
    stats["wall_s"] = wall
    epochs = int(stats.get("epochs", 0) or 0)
    stats["epochs"] = epochs
    per_epoch = stats.get("epoch_times_s") or []
    stats.setdefault("epoch_time_s", float(np.mean(per_epoch)) if per_epoch
                     else (stats["time_s"] / epochs if epochs else 0.0))
    return net.cpu(), stats


def finetune_run(net, labelled, val, layer: int, config: SweepConfig, seed: int,
                 device: torch.device, augment: bool = False) -> tuple[torch.nn.Module, dict]:
    """Fine-tune `net` (a private copy) cut after `layer` on the labelled subset (`augment`: on flipped and
    shifted batches); (net, stats with time_s)."""
    from hebb.recipes import read_out

    start = time.perf_counter()
    net, stats = read_out(net, "finetune", labelled, val, layer, device=device, seed=seed, progress=False,
                          epochs=config.finetune_epochs, augment=augment)
    stats = _jsonable(dict(stats or {}))
    stats.setdefault("time_s", time.perf_counter() - start)
    return net, stats


def probe_run(features: "LayerFeatures", labelled_idx: np.ndarray, data: dict, config: SweepConfig, seed: int,
              device: torch.device, readout: str = "probe") -> tuple[dict, dict, torch.nn.Module]:
    """Train the probe head of `readout` on the cached features of the labelled images; (test accuracy,
    stats, the head). "probe-flip" needs `features.train_mirrored`."""
    from hebb.finetune import fit_linear_head, head_accuracy

    train, val, test = data["train"], data["val"], data["test"]
    idx = torch.from_numpy(np.asarray(labelled_idx))
    start = time.perf_counter()
    options = {"epochs": config.probe_epochs} if config.probe_epochs else {}
    if readout == "probe-flip":
        options["mirrored"] = _rows(features.train_mirrored, idx)
    head, stats = fit_linear_head(_rows(features.train, idx), train.labels[idx], features.val, val.labels,
                                  len(train.classes), device=device, seed=seed, standardize=readout == "probe-std",
                                  progress=False, **options)
    acc = head_accuracy(head, features.test, test.labels, topk=(1, 5))
    stats = _jsonable(dict(stats, time_s=time.perf_counter() - start, readout=readout,
                            standardize=readout == "probe-std", mirrored=readout == "probe-flip"))
    return {"top1": acc["top1"], "top5": acc["top5"]}, stats, head


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The rows `idx` of `t`; `t` itself when `idx` is every row in order (100% of the labels: SoftHebb's top-block
    features of 40,000 images are 3.9 GB, and a copy of them and of their mirrors ran the machine out of memory)."""
    if len(idx) == len(t) and torch.equal(idx, torch.arange(len(t), dtype=idx.dtype)):
        return t
    return t[idx]


def score_accuracy(net, test, device: torch.device, batch_size: int = 500) -> dict:
    """{'top1', 'top5'} fractions of the test split classified correctly by `net` (in eval mode, no autograd:
    a fine-tuned net's graph of 10,000 images of the wide SoftHebb net would need some 40 GB)."""
    from hebb.finetune import accuracy

    return accuracy(net.to(device), test.images, test.labels, device, topk=(1, 5), batch_size=batch_size)


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


def retrieval_scores(net, layer: int, train, test, device: torch.device, config: SweepConfig,
                     head: bool = False) -> dict:
    """mAP@100, mAP@R, mAP@all, P@k and PR curves of the queries `test` against the database `train` (the
    protocol's db and queries sets), plus feature timings. With `head` (the classifier's layer), also under
    "with_head": the same with the net's class probabilities appended (`HEAD_WEIGHT`), from the same pass."""
    from retrieval.features import FeatureExtractor
    from retrieval.evaluation.metrics import rank_database

    start = time.perf_counter()
    ext = FeatureExtractor(net, layer, pooling=config.pooling, projection=config.projection, dim=config.dim,
                           device=device)
    ext.fit(train.images)
    if head:
        (db, db_probs), (queries, query_probs) = ext.transform_with_probs(train.images), \
            ext.transform_with_probs(test.images)
    else:
        db, queries = ext.transform(train.images), ext.transform(test.images)
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    ranking = rank_database(queries, db, test.labels.numpy(), train.labels.numpy(), device=device)
    out = ranking.summary()
    out.update(features=ext.config(), features_s=features_s, ranking_s=time.perf_counter() - start,
               database=len(db))
    if head:
        out["with_head"] = head_retrieval(db, queries, db_probs, query_probs, test.labels, train.labels, device)
    return out


def head_retrieval(db, queries, db_probs, query_probs, query_labels, db_labels, device: torch.device) -> dict:
    """The retrieval scores of database and query vectors with the read-out head's class probabilities
    appended (`append_head`, weight `HEAD_WEIGHT`): what `hebbir index build --head-weight` indexes."""
    from retrieval.features import append_head
    from retrieval.evaluation.metrics import rank_database

    start = time.perf_counter()
    db, queries = append_head(db, db_probs, HEAD_WEIGHT), append_head(queries, query_probs, HEAD_WEIGHT)
    ranking = rank_database(queries, db, np.asarray(query_labels), np.asarray(db_labels), device=device)
    return dict(ranking.summary(), head_weight=HEAD_WEIGHT, database=len(db), ranking_s=time.perf_counter() - start)


def _pretrained(method: str, seed: int, data: dict, config: SweepConfig, device: torch.device,
                results: dict) -> tuple[torch.nn.Module, dict]:
    """The pre-trained net of (method, seed): from the work-folder cache, else trained now and cached."""
    from hebb.checkpoint import load_checkpoint, save_checkpoint

    ckpt = pretraining_checkpoint(config.out, f"{method}/s{seed}")
    key = f"{method}/s{seed}"
    if ckpt.is_file() and key in results["pretraining"]:
        net, _ = load_checkpoint(ckpt)
        return net, results["pretraining"][key]
    train = data["train"]
    resume = pretraining_progress(config.out, key) if method.partition("@")[0] == "vae" else None
    net, stats = pretrain_method(method, train, len(train.classes), config, seed, device, resume=resume)
    stats["device"] = device_description(device)
    stats["code"] = CODE_VERSION
    save_checkpoint(ckpt, net, {"stage": "pretrain", "dataset": config.dataset, "classes": train.classes,
                                "split_seed": config.split_seed, "training": {"seed": seed, "method": method},
                                "timings": stats})
    results["pretraining"][key] = stats
    write_results(config.out, results)
    return net, stats


def evaluate_run(pretrained, method: str, regime: float, layer: int, seed: int, data: dict,
                 config: SweepConfig, device: torch.device, pretrain_stats: dict, readout: str = "finetune") -> dict:
    """Fine-tune a copy of `pretrained` for one (regime, layer) with the end-to-end `readout` and measure
    everything; returns the record."""
    from hebb.data import regime_indices

    train, val, test = data["train"], data["val"], data["test"]
    labelled = train.subset(regime_indices(train.labels, regime, seed))
    net = copy.deepcopy(pretrained)
    net, ft_stats = finetune_run(net, labelled, val, layer, config, seed, device, augment=readout == "finetune-aug")
    net = net.to(device).eval()
    acc = score_accuracy(net, test, device)
    head = config.protocol == "seed" and layer == getattr(net, "num_feature_layers", None)
    retrieval = retrieval_scores(net, layer, data["db"], data["queries"], device, config, head=head)
    extra = {"retrieval_head": retrieval.pop("with_head")} if head else {}
    return _record(method, readout, regime, layer, seed, len(labelled), acc, ft_stats, retrieval,
                   {"finetune_s": ft_stats.get("time_s"), "finetune_epochs": ft_stats.get("epochs"),
                    "features_s": retrieval.pop("features_s"), "ranking_s": retrieval.pop("ranking_s")},
                   pretrain_stats, device, finetune=ft_stats, **extra)


def _record(method, readout, regime, layer, seed, labelled, acc, stats, retrieval, timings, pretrain_stats,
            device, **extra) -> dict:
    """One results.json cell."""
    return {
        "method": method, "readout": readout, "regime": regime, "layer": layer, "seed": seed,
        "arch": method_arch(method), "labelled": labelled, "accuracy": acc, "val_accuracy": stats.get("val_acc"),
        "retrieval": retrieval,
        "timings": {"pretrain_epoch_s": pretrain_stats.get("epoch_time_s"),
                    "pretrain_epochs": pretrain_stats.get("epochs"),
                    "pretrain_s": pretrain_stats.get("time_s"), **timings},
        **extra,
        "device": device_description(device),
        "code": CODE_VERSION,
        "finished": utc_now(),
    }


@dataclass
class LayerFeatures:
    """The flattened features of one layer of one frozen network for the read-out's splits, and the frozen
    trunk's retrieval scores (they do not depend on the labels)."""

    key: tuple
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    retrieval: dict
    features_s: float
    vectors: tuple | None = None   # the reduced (database, query) vectors of that retrieval ("seed" protocol)
    train_mirrored: torch.Tensor | None = None   # the training images mirrored left-right ("probe-flip")
    mirrored_s: float = 0.0


def add_mirrored(features: LayerFeatures, net, layer: int, data: dict, device: torch.device) -> None:
    """Cache the features of the mirrored training images in `features` (once: "probe-flip" reads them)."""
    from hebb.finetune import extract_features

    if features.train_mirrored is not None:
        return
    start = time.perf_counter()
    net = copy.deepcopy(net).to(device).eval()
    features.train_mirrored = extract_features(net, data["train"].images.flip(-1), layer, device, batch_size=250,
                                               progress=True).cpu()
    features.mirrored_s = time.perf_counter() - start


def layer_features(key: tuple, net, layer: int, data: dict, config: SweepConfig,
                   device: torch.device) -> LayerFeatures:
    """Features of `layer` of the frozen `net` for train / val / test, computed once, and the retrieval of
    the protocol's queries against its database (the train and test features themselves for "seed")."""
    from hebb.finetune import extract_features
    from retrieval.features import FeatureExtractor
    from retrieval.evaluation.metrics import rank_database

    start = time.perf_counter()
    net = copy.deepcopy(net).to(device).eval()
    names = ("train", "val", "test") + tuple(n for n, same in (("db", "train"), ("queries", "test"))
                                              if data[n] is not data[same])
    feats = {name: extract_features(net, data[name].images, layer, device, batch_size=250, progress=True).cpu()
             for name in names}
    feats.setdefault("db", feats["train"])
    feats.setdefault("queries", feats["test"])
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    ext = FeatureExtractor(net, layer, pooling=config.pooling, projection=config.projection, dim=config.dim,
                           device=device)
    ext.fit_activations(feats["db"])
    db, queries = ext.transform_activations(feats.pop("db")), ext.transform_activations(feats.pop("queries"))
    ranking = rank_database(queries, db, data["queries"].labels.numpy(), data["db"].labels.numpy(), device=device)
    retrieval = ranking.summary()
    retrieval.update(features=ext.config(), database=len(db), ranking_s=time.perf_counter() - start,
                     frozen_trunk=True)
    vectors = (db, queries) if config.protocol == "seed" else None
    return LayerFeatures(key, feats["train"], feats["val"], feats["test"], retrieval, features_s, vectors)


def probe_cell(features: LayerFeatures, method: str, regime: float, layer: int, seed: int, data: dict,
               config: SweepConfig, device: torch.device, pretrain_stats: dict, readout: str = "probe") -> dict:
    """One probe cell: a head on the labelled subset's cached features; retrieval is the frozen trunk's, and
    (protocol "seed") the frozen trunk's with the head's class probabilities appended ("retrieval_head")."""
    from hebb.data import regime_indices

    idx = regime_indices(data["train"].labels, regime, seed)
    acc, stats, head = probe_run(features, idx, data, config, seed, device, readout=readout)
    extra = {}
    if features.vectors is not None:
        db, queries = features.vectors
        extra["retrieval_head"] = head_retrieval(db, queries, head_probs(head, features.train),
                                                 head_probs(head, features.test), data["queries"].labels,
                                                 data["db"].labels, device)
    mirrored = {"mirrored_features_s": features.mirrored_s} if readout == "probe-flip" else {}
    return _record(method, readout, regime, layer, seed, len(idx), acc, stats, copy.deepcopy(features.retrieval),
                   {"probe_s": stats.get("time_s"), "probe_epochs": stats.get("epochs"),
                    "features_s": features.features_s, **mirrored}, pretrain_stats, device, probe=stats, **extra)


def head_probs(head: torch.nn.Module, feats: torch.Tensor) -> np.ndarray:
    """Class probabilities (N, classes) of a probe head on cached features."""
    from hebb.finetune import head_logits

    return head_logits(head.eval(), feats).float().softmax(1).cpu().numpy()


CODE_VERSION = code_version()


@contextlib.contextmanager
def folder_lock(out: Path, name: str = ".lock"):
    """Hold the sweep folder for this process: a second sweep (or merge) into it would overwrite its cells.
    `name`: the lock file (another one lets another kind of writer, e.g. the pre-training curves, share the folder)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / name, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise UserError(f"{out} is being written by {owner}; wait for it to finish or use another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"hebbir evaluate (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pretraining_checkpoint(out: Path, key: str) -> Path:
    """The cached network of pre-training `key` ('method/sSEED') in the sweep folder `out`."""
    method, _, seed = key.rpartition("/s")
    return Path(out) / "work" / f"pretrain-{method}-s{seed}.pt"


def pretraining_progress(out: Path, key: str) -> Path:
    """The progress file of an unfinished (resumable) pre-training `key` in the sweep folder `out`."""
    return pretraining_checkpoint(out, key).with_suffix(".progress.pt")


def same_pretraining(key: str, ours: dict, theirs: dict, our_dir: Path, their_dir: Path) -> bool:
    """Whether two folders' records of pre-training `key` describe one network: the same recipe (`settings`)
    and cached weights that agree (float tolerance: a rerun of the same recipe and seed may differ in the last
    bits); without both caches, only an untrained network (a seeded initialisation) counts. Timings never do."""
    from hebb.architectures import ARCHITECTURES
    from hebb.checkpoint import load_checkpoint

    def recipe(record: dict) -> dict | None:   # an architecture recorded under an older name is the same one
        settings = record.get("settings")
        return settings and dict(settings, arch=ARCHITECTURES.resolve(settings.get("arch", "")))

    if recipe(ours) != recipe(theirs):
        return False
    paths = [pretraining_checkpoint(d, key) for d in (our_dir, their_dir)]
    if all(p.is_file() for p in paths):
        a, b = (load_checkpoint(p)[0].state_dict() for p in paths)
        return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6)
                                            for k in a)
    # without both networks at hand, only an untrained one (a seeded initialisation of one recipe) is known
    return ours.get("settings") is not None and ours.get("epochs") == 0 == theirs.get("epochs")


def merge_results(out: Path, source: Path) -> tuple[int, int]:
    """Copy the finished cells of the sweep folder `source` that `out` lacks into `out` (same settings only);
    returns (cells added, cells already there). Lets pieces of one sweep run in separate folders or machines."""
    theirs = load_results(source)
    if theirs is None:
        raise UserError(f"{source} holds no {RESULTS_FILE}")
    with folder_lock(out):
        ours = load_results(out)
        if ours is None:
            raise UserError(f"{out} holds no {RESULTS_FILE}: copy {source} there instead")
        if theirs.get("settings") != ours.get("settings"):
            diff = settings_diff(theirs.get("settings", {}), ours.get("settings", {}))
            raise UserError(f"{source} was run with other settings than {out} ({diff}); its cells cannot join")
        new = {k: v for k, v in theirs["runs"].items() if k not in ours["runs"]}
        needed = {f"{r['method']}/s{r.get('pretrain_seed', r['seed'])}" for r in new.values()}
        clash = sorted(k for k in needed if k in ours["pretraining"] and k in theirs["pretraining"]
                       and not same_pretraining(k, ours["pretraining"][k], theirs["pretraining"][k], out, source))
        if clash:
            raise UserError(f"{source} and {out} hold different pre-trainings under {', '.join(clash)}: their cells "
                            f"come from different networks and cannot share a table")
        if not new:
            return 0, len(theirs["runs"])  # nothing joins: the report, its sessions included, stays as it was
        ours["runs"].update(new)
        for k in needed:
            if k in theirs["pretraining"]:
                ours["pretraining"].setdefault(k, theirs["pretraining"][k])
        # a piece started from a copy of `out` (to skip its cells) repeats `out`'s sessions: list each once
        known = {(s.get("started"), s.get("command")) for s in ours["sessions"]}
        ours["sessions"].extend(dict(s, merged_from=str(source)) for s in theirs.get("sessions", [])
                                if (s.get("started"), s.get("command")) not in known)
        write_results(out, ours)
    return len(new), len(theirs["runs"]) - len(new)


def run_sweep(config: SweepConfig, progress: bool = True) -> dict:
    """Run every missing (method, readout, regime, layer, seed) cell of `config`; return the results dict
    (also on disk). The folder is locked meanwhile: a second sweep into it stops with a clear error."""
    with folder_lock(config.out):
        return _run_sweep(config, progress)


def _run_sweep(config: SweepConfig, progress: bool) -> dict:
    device = torch.device(config.device)
    results = _open_results(config)
    todo = [r for r in config.runs() if _key(r) not in results["runs"]]
    results["sessions"].append({"started": utc_now(), "command": config.command, "device": device_description(device),
                                "torch": torch.__version__, "python": platform.python_version(),
                                "code": CODE_VERSION, "runs_requested": len(config.runs()),
                                "runs_to_do": len(todo)})
    write_results(config.out, results)
    if not todo:
        return results
    data = load_data(config)
    bar = tqdm(total=len(todo), desc="evaluation runs", unit="run", disable=not progress)
    current, pretrained, pre_stats, features = None, None, None, None
    for cell in todo:
        method, readout, regime, layer, seed = cell
        pseed = config.pretrain_seed(seed)
        bar.set_postfix_str(_key(cell))
        if current != (method, pseed):
            pretrained, pre_stats = _pretrained(method, pseed, data, config, device, results)
            current, features = (method, pseed), None
        if readout in PROBE_READOUTS:
            if features is None or features.key != (method, pseed, layer):
                features = None  # free the previous layer's features first
                features = layer_features((method, pseed, layer), pretrained, layer, data, config, device)
            if readout == "probe-flip":
                add_mirrored(features, pretrained, layer, data, device)
            record = probe_cell(features, method, regime, layer, seed, data, config, device, pre_stats, readout)
        else:
            record = evaluate_run(pretrained, method, regime, layer, seed, data, config, device, pre_stats, readout)
        record["pretrain_seed"] = pseed
        if config.protocol == "transfer":
            record["classes"] = {"seen": list(data["train"].classes), "unseen": list(data["db"].classes)}
        results["runs"][_key(cell)] = record
        write_results(config.out, results)
        bar.update(1)
    bar.close()
    return results


def _key(cell: tuple) -> str:
    method, readout, regime, layer, seed = cell
    return run_key(method, regime, layer, seed, readout)


def _cell_cost(record: dict, readout: str) -> float:
    """Seconds a finished cell spent on its own work: the read-out, and for a fine-tuned network its retrieval
    features and ranking (a probe's features are extracted once per network and layer, counted apart)."""
    t = record.get("timings", {})
    own = ("probe_s",) if readout in PROBE_READOUTS else ("finetune_s", "features_s", "ranking_s")
    return float(sum(t.get(k) or 0.0 for k in own))


def _estimate(costs: dict, key: tuple, regime: float) -> float | None:
    """Seconds for a cell of `regime` from the measured (regime, seconds) pairs under `key`: the mean at that
    regime, else a straight line in the regime through the measured ones (cost grows with the labelled images),
    else the mean of one measured regime; None when nothing under `key` is measured."""
    pairs = costs.get(key)
    if not pairs:
        return None
    at = [s for r, s in pairs if r == regime]
    if at:
        return float(np.mean(at))
    regimes = {r for r, _ in pairs}
    if len(regimes) == 1:
        return float(np.mean([s for _, s in pairs]))
    slope, intercept = np.polyfit([r for r, _ in pairs], [s for _, s in pairs], 1)
    return float(max(intercept + slope * regime, 0.0))


def sweep_status(config: SweepConfig) -> dict:
    """What is done and left of `config` in its folder, with an estimate of the time left from the cells done.

    A left cell is priced by the finished cells of the same method and read-out, else by those of any method
    on the same network and read-out (a read-out's cost is the network's and the labels', not the
    pre-training's); within them by regime (measured, else a straight line in the regime). Probe features
    are counted once per network and layer, pre-training once per method and seed whose network is not in
    the work folder (a recorded pre-training whose checkpoint is gone is trained again; an interrupted VAE
    pre-training, listed under `resumable`, by its remaining epochs). What no finished cell prices is listed
    under `unknown_cost`."""
    results = load_results(config.out) or {"runs": {}, "pretraining": {}}
    cells = config.runs()
    done = [c for c in cells if _key(c) in results["runs"]]
    left = [c for c in cells if _key(c) not in results["runs"]]
    by_method, by_arch, features_s = {}, {}, {}
    for key, rec in results["runs"].items():
        method, readout, regime, layer = rec["method"], rec.get("readout", "finetune"), rec["regime"], rec["layer"]
        cost = (regime, _cell_cost(rec, readout))
        by_method.setdefault((method, readout), []).append(cost)
        by_arch.setdefault((method_arch(method), readout), []).append(cost)
        if readout in PROBE_READOUTS and rec.get("timings", {}).get("features_s"):
            features_s.setdefault((method_arch(method), layer), []).append(rec["timings"]["features_s"])
    estimate, unknown = 0.0, set()
    for method, readout, regime, layer, seed in left:
        cost = _estimate(by_method, (method, readout), regime)
        if cost is None:
            cost = _estimate(by_arch, (method_arch(method), readout), regime)
        if cost is None:
            unknown.add(f"{method}/{readout}")
        else:
            estimate += cost
    for method, pseed, layer in {(c[0], config.pretrain_seed(c[4]), c[3]) for c in left if c[1] in PROBE_READOUTS}:
        known = features_s.get((method_arch(method), layer))
        if known:
            estimate += float(np.mean(known))
        else:
            unknown.add(f"{method} layer {layer} features")
    pretraining = results.get("pretraining", {})
    resumable = {}
    for method, seed in {(c[0], config.pretrain_seed(c[4])) for c in left}:
        key = f"{method}/s{seed}"
        if key in pretraining and pretraining_checkpoint(config.out, key).is_file():
            continue  # cached: loaded, not trained
        partial = vae_progress(pretraining_progress(config.out, key))
        if partial is not None:  # an interrupted VAE pre-training: its own epochs price the rest
            resumable[key] = f"{partial['epoch']} of {partial['epochs']} epochs done"
            estimate += float(np.mean(partial["epoch_times_s"])) * (partial["epochs"] - partial["epoch"])
            continue
        costs = [v.get("wall_s") or v.get("time_s") or 0.0 for k, v in pretraining.items()
                 if k.startswith(f"{method}/")]
        if costs:
            estimate += float(np.mean(costs))
        elif method.partition("@")[0] in PRETRAINED_METHODS:
            unknown.add(f"{method} pre-training")
    return {"cells": len(cells), "done": len(done), "left": [_key(c) for c in left],
            "estimate_s": estimate, "unknown_cost": sorted(unknown), "resumable": resumable}
