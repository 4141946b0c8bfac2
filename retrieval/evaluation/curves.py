"""Pre-training curves: how many unsupervised epochs each method needs, read from a measurement.

After every pre-training epoch the network's top layer is read out with the probe (frozen trunk, dropout 0.5 +
linear head, the sweep's probe) on one label regime's labelled images, and its best accuracy on the validation
split is recorded (the test split is never looked at). `OUT/curves.json` holds one curve per method, written
as each epoch's point is measured; `OUT/pretraining_curves.png` draws them. A Hebbian curve is one piece: a run
stopped mid-curve starts that method's curve again (the finished curves are kept and skipped). The VAE's curve
(hours of epochs) keeps its training state in `OUT/work/curve-vae-sSEED.progress.pt` after each point, and
continues from the last one.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hebb.baselines import vae_progress
from hebb.errors import UserError
from hebb.runtime import device_description, utc_now, write_json_atomic
from retrieval.evaluation.sweep import (CODE_VERSION, PRETRAINED_METHODS, SweepConfig, canonical_method,
                                        folder_lock, load_data, load_json_file, method_depth, settings_diff)

CURVES_FILE = "curves.json"
CURVES_PLOT = "pretraining_curves.png"
CURVES_FORMAT = "hebbir-pretraining-curves"


@dataclass
class CurveConfig:
    """Which curves to measure: methods, epochs, the regime whose labels the probe reads, and the data."""

    out: Path
    methods: tuple[str, ...]
    epochs: int = 3
    regime: float = 10
    seed: int = 0
    probe_epochs: int | None = None
    batch_size: int | None = None
    dataset: str = "cifar10"
    data_dir: Path | None = None
    limit: int | None = None
    device: str = "cpu"
    command: str = ""
    _sweep: SweepConfig = field(init=False, repr=False)

    def __post_init__(self):
        self.out = Path(self.out)
        self.methods = tuple(canonical_method(m) for m in self.methods)
        bad = [m for m in self.methods if m.partition("@")[0] not in PRETRAINED_METHODS]
        if bad:
            raise UserError(f"pre-training curves need a method with an unsupervised stage "
                            f"({', '.join(PRETRAINED_METHODS)}), not {', '.join(bad)}")
        if self.epochs < 1:
            raise UserError(f"a curve needs at least 1 epoch, got {self.epochs}")
        # the sweep's config checks the rest (methods, regime, limit) and loads the data the same way
        self._sweep = SweepConfig(out=self.out, dataset=self.dataset, methods=self.methods, regimes=(self.regime,),
                                  seeds=(self.seed,), limit=self.limit, device=self.device, data_dir=self.data_dir,
                                  batch_size=self.batch_size, probe_epochs=self.probe_epochs)

    def settings(self) -> dict:
        """What must match for curves to share a file (and a plot)."""
        return {"dataset": self.dataset, "regime": self.regime, "seed": self.seed, "limit": self.limit,
                "probe_epochs": self.probe_epochs, "batch_size": self.batch_size,
                "readout": "probe on the top layer, best validation accuracy"}


def load_curves(out: Path) -> dict | None:
    """The curves.json of a folder, or None."""
    return load_json_file(Path(out) / CURVES_FILE, CURVES_FORMAT, "pre-training curves")


def curve_point(net, epoch: int, stats: dict, data: dict, idx: torch.Tensor, layer: int, config: CurveConfig,
                device: torch.device) -> dict:
    """Probe the top layer of `net` (after `epoch` epochs): the best validation accuracy and what it cost."""
    from hebb.finetune import extract_features, fit_linear_head

    start = time.perf_counter()
    frozen = copy.deepcopy(net).to(device).eval()
    train, val = data["train"], data["val"]
    feats = extract_features(frozen, train.images[idx], layer, device, batch_size=250).cpu()
    val_feats = extract_features(frozen, val.images, layer, device, batch_size=250).cpu()
    features_s = time.perf_counter() - start
    options = {"epochs": config.probe_epochs} if config.probe_epochs else {}
    _, head = fit_linear_head(feats, train.labels[idx], val_feats, val.labels, len(train.classes), device=device,
                              seed=config.seed, progress=False, **options)
    times = stats.get("epoch_times_s") or []
    return {"epoch": epoch, "val_accuracy": head["val_acc"], "best_probe_epoch": head["best_epoch"],
            "epoch_s": times[-1] if times else None, "features_s": round(features_s, 3),
            "probe_s": round(time.perf_counter() - start - features_s, 3), "finished": utc_now()}


def run_curves(config: CurveConfig, progress: bool = True) -> dict:
    """Measure every missing curve of `config` into OUT/curves.json; returns the file's content."""
    from hebb.data import regime_indices
    from hebb.recipes import pretrained_network

    device = torch.device(config.device)
    with folder_lock(config.out, ".curves.lock"):
        curves = load_curves(config.out) or {"format": CURVES_FORMAT, "settings": config.settings(),
                                              "created": utc_now(), "sessions": [], "curves": {}}
        if curves["settings"] != config.settings():
            raise UserError(f"{config.out / CURVES_FILE} holds curves measured with other settings "
                            f"({settings_diff(curves['settings'], config.settings())}); use another --out")
        todo = [m for m in config.methods
                if len(curves["curves"].get(m, {}).get("points", [])) < config.epochs]
        curves["sessions"].append({"started": utc_now(), "command": config.command, "code": CODE_VERSION,
                                   "device": device_description(device), "methods": todo})
        write_json_atomic(config.out / CURVES_FILE, curves, indent=1)
        if not todo:
            return curves
        data = load_data(config._sweep)
        train = data["train"]
        idx = torch.from_numpy(regime_indices(train.labels, config.regime, config.seed))
        for method in todo:
            layer = method_depth(method)
            record = {"method": method, "layer": layer, "labelled": len(idx), "epochs": config.epochs,
                      "code": CODE_VERSION, "device": device_description(device), "points": []}
            resume = curve_progress(config.out, method, config.seed)
            partial = vae_progress(resume) if resume is not None else None
            earlier = curves["curves"].get(method, {})
            if (partial is not None and earlier.get("epochs") == config.epochs
                    and len(earlier.get("points", [])) >= partial["epoch"]):
                # the points up to the saved epoch go on; a point measured after it is measured again
                record = dict(earlier, points=earlier["points"][:partial["epoch"]])
            elif partial is not None:
                resume.unlink()  # its points are gone (or were for another length): start the curve again
            curves["curves"][method] = record

            def on_epoch_end(epoch, net, stats, record=record, layer=layer):
                record["points"].append(curve_point(net, epoch, stats, data, idx, layer, config, device))
                write_json_atomic(config.out / CURVES_FILE, curves, indent=1)
                if progress:
                    point = record["points"][-1]
                    print(f"{method} epoch {epoch}: probe validation accuracy {point['val_accuracy']:.2%}",
                          flush=True)

            pretrained_network(method, None, train.images, len(train.classes), epochs=config.epochs,
                               batch_size=config.batch_size, device=device, seed=config.seed, progress=progress,
                               on_epoch_end=on_epoch_end, resume=resume)
        return curves


def curve_progress(out: Path, method: str, seed: int) -> Path | None:
    """Where the curve of `method` keeps its training state between epochs (VAE only), else None."""
    if method.partition("@")[0] != "vae":
        return None
    return Path(out) / "work" / f"curve-{method}-s{seed}.progress.pt"


def needed_epochs(points: list[dict], tolerance: float = 0.005) -> int | None:
    """The first epoch whose validation accuracy is within `tolerance` (a fraction) of the curve's best."""
    accs = [p["val_accuracy"] for p in points if p.get("val_accuracy") is not None]
    if not accs:
        return None
    best = max(accs)
    return next(p["epoch"] for p in points if p.get("val_accuracy") is not None and p["val_accuracy"] >= best - tolerance)


def check_curves_join(out: Path, source: Path) -> dict:
    """The curves of the folder `source`, after checking that they may join `out`'s (same curve settings)."""
    theirs = load_curves(source)
    if theirs is None:
        raise UserError(f"{source} holds no {CURVES_FILE}")
    ours = load_curves(out)
    if ours is not None and ours["settings"] != theirs["settings"]:
        raise UserError(f"{Path(source) / CURVES_FILE} was measured with other settings than {Path(out) / CURVES_FILE} "
                        f"({settings_diff(theirs['settings'], ours['settings'])}); its curves cannot join")
    return theirs


def merge_curves(out: Path, source: Path) -> list[str]:
    """Copy the finished curves of the folder `source` into `out`'s curves.json (the same curve settings only):
    a method's curve joins when `out` has none of it or a shorter one (fewer epochs measured); returns the
    methods copied."""
    with folder_lock(out, ".curves.lock"):
        theirs = check_curves_join(out, source)
        ours = load_curves(out) or dict(theirs, sessions=[], curves={})
        copied = [m for m, c in theirs["curves"].items()
                  if len(c.get("points", [])) >= c.get("epochs", 0)
                  and len(c.get("points", [])) > len(ours["curves"].get(m, {}).get("points", []))]
        if not copied:
            return []
        ours["curves"].update({m: theirs["curves"][m] for m in copied})
        known = {(s.get("started"), s.get("command")) for s in ours["sessions"]}
        ours["sessions"].extend(dict(s, merged_from=str(source)) for s in theirs.get("sessions", [])
                                if (s.get("started"), s.get("command")) not in known
                                and set(s.get("methods", [])) & set(copied))
        write_json_atomic(Path(out) / CURVES_FILE, ours, indent=1)
    return copied
