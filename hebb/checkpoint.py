"""Safe checkpoints: plain tensors + JSON metadata, loaded with `torch.load(weights_only=True)`.

A checkpoint file holds {"format": "hebbir-checkpoint", "format_version": 1, "meta": JSON text,
"state": state_dict}. Nothing in it can run code when loaded. `meta` always has:

    format_version  int
    network         dict: arch, num_classes, rule, spec, cut_layer, zca, temperature (`HebbNet.config()`)
    input_size      int (the architecture's input side, e.g. 32 or 210)
    created         ISO time (UTC)

and, by convention of the training code: classes (list of class names or None), dataset, split_seed,
stage ("pretrain" | "finetune"), training (settings dict), timings (dict), metrics (dict).
Writes are atomic (`hebb.runtime.atomic_write`), so a crash never leaves half a checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from hebb.errors import UserError
from hebb.network import HebbNet, build_network
from hebb.runtime import atomic_write, utc_now

FORMAT = "hebbir-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, net: HebbNet, meta: dict | None = None) -> dict:
    """Write `net` and JSON-able `meta` to `path` atomically; return the full metadata written."""
    path = Path(path)
    full = dict(meta or {})
    full.update(format_version=FORMAT_VERSION, network=net.config(), input_size=net.input_size, created=utc_now())
    full.setdefault("classes", None)
    try:
        meta_text = json.dumps(full)
    except (TypeError, ValueError) as exc:
        raise UserError(f"checkpoint metadata is not JSON-able: {exc}") from None
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta_text, "state": state}, f)
    return full


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """The metadata of a checkpoint, without building the network."""
    return _read(path)[0]


def _read(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        text = str(exc)
        reason = ("corrupt, or holds objects other than plain tensors, which are refused for safety"
                  if "weights only" in text.lower() or not text.strip() else text.strip().splitlines()[0][:200])
        raise UserError(f"{path}: not a readable hebbir checkpoint ({reason})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path}: not a hebbir checkpoint (no '{FORMAT}' header)")
    version = blob.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {version} is newer than this hebbir "
                        f"understands ({FORMAT_VERSION}); upgrade hebbir")
    try:
        meta = json.loads(blob["meta"])
        state = blob["state"]
        assert isinstance(meta, dict) and isinstance(meta.get("network"), dict) and isinstance(state, dict)
    except (KeyError, TypeError, ValueError, AssertionError):
        raise UserError(f"{path}: damaged hebbir checkpoint (metadata or weights missing)") from None
    return meta, state


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[HebbNet, dict]:
    """Load a checkpoint written by `save_checkpoint`: (network in eval mode on `device`, metadata).

    A missing, corrupt or foreign file raises `UserError` with the path and the reason.
    """
    meta, state = _read(path, device)
    try:
        net = build_network(**meta["network"])
    except TypeError as exc:
        raise UserError(f"{path}: checkpoint describes an unknown network ({exc})") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(f"{path}: weights do not match the network they claim to be "
                        f"({' '.join(first[:2])[:200]})") from None
    return net.to(device).eval(), meta


def file_checksum(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file (identifies the model an index was built with)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return h.hexdigest()
