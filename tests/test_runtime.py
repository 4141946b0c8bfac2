"""The shared helpers of hebb.runtime: device resolution, atomic writes, UTC timestamps, machine description."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest
import torch

from hebb.errors import UserError
from hebb.runtime import (atomic_write, code_version, device_description, resolve_device, utc_now,
                          write_json_atomic)
from retrieval.index.directory import is_replaceable


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_write_puts_the_file_in_place_with_plain_permissions(tmp_path, umask_022):
    path = tmp_path / "out.bin"
    with atomic_write(path, "wb") as f:
        f.write(b"new")
        assert not path.exists()  # nothing at the target until the block ends
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_failed_atomic_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1}, indent=1)
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as f:
            f.write('{"a": ')
            raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_write_json_atomic_writes_what_json_dumps_writes(tmp_path):
    data = {"b": [1, 2.5, None], "a": "x"}
    for indent in (None, 1, 2):
        write_json_atomic(tmp_path / "d.json", data, indent=indent)
        assert (tmp_path / "d.json").read_text() == json.dumps(data, indent=indent)


def test_a_leftover_temporary_file_still_counts_as_an_index_file(tmp_path):
    (tmp_path / "manifest.json").write_text("{damaged")
    (tmp_path / ".vectors.npy.k2x_9a1b.tmp").write_bytes(b"half")
    assert is_replaceable(tmp_path)
    (tmp_path / ".holiday.jpg.k2x_9a1b.tmp").write_bytes(b"")
    assert not is_replaceable(tmp_path)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")
    with pytest.raises(UserError, match="device cuda: no CUDA GPU is visible to torch"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_utc_now_is_iso_utc_to_the_second():
    now = datetime.fromisoformat(utc_now())
    assert now.utcoffset() == timedelta(0) and now.microsecond == 0
    assert abs(now - datetime.now(timezone.utc)) < timedelta(seconds=5)


def test_machine_and_code_descriptions():
    assert device_description("cpu").startswith("CPU: ") and "logical cores visible" in device_description("cpu")
    version = code_version()
    assert version == "unknown" or len(version.removesuffix("-dirty")) == 12
