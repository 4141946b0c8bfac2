"""The architecture registry: current names, and older names that keep reading as the current ones."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch

import hebb
from hebb.architectures import ARCHITECTURES, canonical_arch
from hebb.checkpoint import load_checkpoint, save_checkpoint
from hebb.errors import UserError
from hebb.network import build_network
from hebb.recipes import canonical_method
from retrieval.cli import build_parser
from retrieval.evaluation.report import row_key
from retrieval.evaluation.sweep import SweepConfig, load_results, write_results
from retrieval.index.manifest import Manifest
from retrieval.index.model import architecture_of, check_model

OLD_NAMES = {"cifar6": "conv6", "imagenet10": "conv10"}


def test_the_registry_lists_current_names_only():
    assert list(hebb.ARCHITECTURES) == ["conv6", "conv10", "wide3"]
    assert len(hebb.ARCHITECTURES) == 3
    assert hebb.ARCHITECTURES is ARCHITECTURES


@pytest.mark.parametrize("old, new", OLD_NAMES.items())
def test_an_old_name_resolves_to_the_same_entry(old, new):
    assert old in ARCHITECTURES
    assert hebb.ARCHITECTURES[old] is hebb.ARCHITECTURES[new]
    assert ARCHITECTURES.get(old) is ARCHITECTURES[new]
    assert canonical_arch(old) == new and ARCHITECTURES.resolve(old) == new
    assert old not in dict(ARCHITECTURES)  # a copy holds the current names


def test_an_unknown_name_is_a_key_error_or_a_user_error():
    assert "conv7" not in ARCHITECTURES and ARCHITECTURES.get("conv7") is None
    with pytest.raises(KeyError):
        ARCHITECTURES["conv7"]
    with pytest.raises(UserError, match="unknown architecture 'conv7' .known: conv6, conv10, wide3"):
        canonical_arch("conv7")


def test_a_checkpoint_written_with_an_old_name_loads(tmp_path, one_thread):
    net = build_network("cifar6", rule="hpca")
    assert net.arch == "conv6"
    path = tmp_path / "old.pt"
    save_checkpoint(path, net, {"stage": "pretrain"})
    blob = torch.load(path, weights_only=True)
    meta = json.loads(blob["meta"])
    meta["network"]["arch"] = "cifar6"  # what a checkpoint from before the rename carries
    blob["meta"] = json.dumps(meta)
    torch.save(blob, path)
    again, meta = load_checkpoint(path)
    assert meta["network"]["arch"] == "cifar6" and again.arch == "conv6"
    assert architecture_of(again, meta) == "conv6"
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def test_an_index_built_under_an_old_name_still_matches_its_model():
    manifest = Manifest(model_file="model.pt", model_checksum="sum0", architecture="cifar6", features={},
                        dimension=8, item_count=0)
    check_model(manifest, "sum0", "conv6")
    with pytest.raises(UserError, match="architecture wide3 does not match"):
        check_model(manifest, "sum0", "wide3")


@pytest.mark.parametrize("argv", [
    ["pretrain", "--rule", "hpca", "--arch", "cifar6", "--out", "x.pt"],
    ["finetune", "--from-scratch", "--arch", "imagenet10", "--out", "x.pt"],
])
def test_the_command_line_takes_old_names(argv):
    args = build_parser().parse_args(argv)
    assert args.arch == OLD_NAMES[argv[argv.index("--arch") + 1]]


def test_the_command_line_refuses_an_unknown_name(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--rule", "hpca", "--arch", "conv7", "--out", "x.pt"])
    assert "invalid choice: 'conv7'" in capsys.readouterr().err


def test_method_names_with_old_architecture_names():
    assert canonical_method("sgd@cifar6") == "sgd@conv6"
    assert canonical_method("random@wide3") == "random@wide3" and canonical_method("hpca") == "hpca"
    assert SweepConfig(out="x", methods=("sgd@cifar6", "random@wide3"), seeds=(0,)).methods == \
        ("sgd@conv6", "random@wide3")


def test_results_written_with_old_names_read_as_current_ones(tmp_path):
    record = {"method": "sgd@cifar6", "arch": "cifar6", "readout": "finetune", "regime": 10, "layer": 5, "seed": 0}
    write_results(tmp_path, {"format": "hebbir-evaluation", "version": 1, "settings": {},
                             "pretraining": {"sgd@cifar6/s0": {"epochs": 0}},
                             "runs": {"sgd@cifar6/r10/l5/s0": record,
                                      "random@wide3/probe/r10/l3/s0": dict(record, method="random@wide3",
                                                                           arch="wide3", readout="probe")}})
    data = load_results(tmp_path)
    assert set(data["runs"]) == {"sgd@conv6/r10/l5/s0", "random@wide3/probe/r10/l3/s0"}
    assert set(data["pretraining"]) == {"sgd@conv6/s0"}
    rec = data["runs"]["sgd@conv6/r10/l5/s0"]
    assert rec["method"] == "sgd@conv6" and rec["arch"] == "conv6" and row_key(rec) == "sgd@conv6"



ROOT = Path(__file__).resolve().parent.parent
REGISTRY = ROOT / "hebb" / "architectures.py"


def _sources() -> list[Path]:
    found = [ROOT / "app.py"]
    for folder in ("hebb", "retrieval", "index_data"):
        found += sorted((ROOT / folder).rglob("*.py"))
    return [p for p in found if p.is_file() and p != REGISTRY]


def architecture_names_in(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every string literal (docstrings and f-string parts included) of `path` that names a
    registered architecture, by its current or an older name."""
    names = sorted(set(ARCHITECTURES) | set(ARCHITECTURES.aliases), key=len, reverse=True)
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, names)) + r")(?![A-Za-z0-9_])")
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            hits += [(node.lineno + node.value[:m.start()].count("\n"), m.group(1))
                     for m in pattern.finditer(node.value)]
    return hits


def test_the_scan_finds_a_name(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('"""Doc of wide3."""\nx = f"on {y} conv6"\nz = "conv64 and cifar6x"  # conv10\n')
    assert architecture_names_in(path) == [(1, "wide3"), (2, "conv6")]


def test_no_module_outside_the_registry_names_an_architecture():
    found = {str(p.relative_to(ROOT)): hits for p in _sources() if (hits := architecture_names_in(p))}
    assert found == {}, "architecture names belong in hebb/architectures.py; ask the registry instead"
