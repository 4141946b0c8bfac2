"""The model side of an index: loading checkpoints, checking them against a manifest, the index's extractor."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from hebb.errors import UserError
from retrieval.features import FeatureExtractor
from retrieval.index.directory import PROJECTION_FILE, REBUILD, reading
from retrieval.index.manifest import Manifest

DEFAULT_LAYER = 3


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def load_model(path: Path | str, device="cpu"):
    """(net, meta, checksum) of a checkpoint file."""
    from hebb.checkpoint import file_checksum, load_checkpoint

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a model checkpoint (a .pt file from hebbir pretrain/finetune)")
    if not path.is_file():
        raise UserError(f"{path}: no such model checkpoint")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; anything else cannot be a checkpoint
        what = "an empty file" if path.stat().st_size == 0 else (
            "a text file" if _looks_like_text(path) else "not a torch checkpoint")
        raise UserError(f"{path}: not a hebbir model checkpoint ({what}); give the .pt file written by "
                        f"hebbir pretrain or hebbir finetune")
    net, meta = load_checkpoint(path, device=device)
    return net, dict(meta or {}), file_checksum(path)


def architecture_of(net, meta: dict) -> str:
    """The registry name of a checkpoint's architecture (an older name reads as its current one)."""
    from hebb.architectures import ARCHITECTURES

    network = meta.get("network") if isinstance(meta.get("network"), dict) else {}
    return ARCHITECTURES.resolve(str(network.get("arch") or getattr(net, "arch", None) or type(net).__name__))


def default_layer(net, meta: dict) -> int:
    """The top layer of a fine-tuned (cut) network, else its architecture's default feature layer (the
    registry's `feature_layer`; DEFAULT_LAYER for a net the registry does not know)."""
    n_layers = getattr(net, "num_feature_layers", 5)
    if meta.get("stage") == "finetune":
        return n_layers
    try:
        from hebb.architectures import architecture

        layer = architecture(net.arch).feature_layer
    except (AttributeError, UserError):
        layer = DEFAULT_LAYER
    return min(layer, n_layers)


def check_model(manifest: Manifest, checksum: str, arch: str, where: str = "") -> None:
    """Raise a `UserError` when a model does not match the one an index was built with."""
    if checksum != manifest.model_checksum:
        raise UserError(f"{where}model checksum {checksum[:12]} does not match the index's model "
                        f"{manifest.model_checksum[:12]} ({manifest.model_source or '?'}): the vectors were "
                        f"computed with another model; rebuild the index or use its own model copy")
    from hebb.architectures import ARCHITECTURES

    if ARCHITECTURES.resolve(arch) != ARCHITECTURES.resolve(manifest.architecture):  # an index from before a rename
        raise UserError(f"{where}model architecture {arch} does not match the index's {manifest.architecture}")


def load_projection(index_dir: Path) -> dict | None:
    """The fitted projection arrays of an index (None when its features use none); damage is a `UserError`."""
    path = Path(index_dir) / PROJECTION_FILE
    if not path.is_file():
        return None
    with reading(path, REBUILD):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def index_extractor(index_dir, manifest: Manifest, device, model=None, batch_size: int = 256) -> FeatureExtractor:
    """The feature extractor of an index: its model copy (checked against the manifest) and projection.

    `model`: optionally a checkpoint the caller expects the index to have been built with; a different one
    is a `UserError`.
    """
    index_dir = Path(index_dir)
    model_path = index_dir / manifest.model_file
    if not model_path.is_file():
        raise UserError(f"{model_path}: the index's model copy is missing; {REBUILD}")
    try:
        net, meta, checksum = load_model(model_path, device)
    except UserError as exc:
        why = str(exc).removeprefix(f"{model_path}: ").split(";")[0]
        raise UserError(f"{model_path}: the index's model copy is damaged: {why}; {REBUILD}") from None
    check_model(manifest, checksum, architecture_of(net, meta), where=f"{model_path}: ")
    if model is not None:
        from hebb.checkpoint import file_checksum

        check_model(manifest, file_checksum(model), manifest.architecture, where=f"{model}: ")
    state = load_projection(index_dir)
    config = manifest.features
    if state is None and config.get("projection", "none") != "none":
        raise UserError(f"{index_dir / PROJECTION_FILE}: missing from the index (its features use a "
                        f"{config.get('projection')} projection); {REBUILD}")
    try:
        return FeatureExtractor.from_config(net, config, state, device=device, batch_size=batch_size)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{index_dir / PROJECTION_FILE}: does not fit the manifest's features "
                        f"({str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__}); "
                        f"{REBUILD}") from None
