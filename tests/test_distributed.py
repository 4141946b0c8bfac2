"""Data-parallel training (hebb.distributed) with 2 gloo processes on the CPU, against one process.

The workers run in processes started by torch.multiprocessing (the library) or by torchrun (the command line);
they write what they learned to files that the test compares. Small nets, a few random images.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with the gloo backend is not available in this torch build",
                allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

from hebb import distributed  # noqa: E402
from hebb.data import ArraySet  # noqa: E402
from hebb.errors import UserError  # noqa: E402
from hebb.finetune import extract_features, finetune, probe  # noqa: E402
from hebb.network import build_network  # noqa: E402
from hebb.pretrain import pretrain  # noqa: E402
from retrieval.cli import main  # noqa: E402

# (rule, arch, cut layer, batch size): 40 images in batches of 15 split 8/7 and a last one of 10 split 5/5.
# hpca up to layer 4 learns from the output of a BN* layer; wide3 normalises its input with BN.
# (wta up to layer 5 takes the fully connected WTA path, which has moments of its own)
PRETRAIN_CASES = [("hpca", "cifar6", 4, 15), ("swta", "cifar6", 3, 15), ("wta", "cifar6", 3, 15),
                  ("wta", "cifar6", 5, 15), ("softhebb", "wide3", 2, 15)]
LR = {"softhebb": 1.0, "hpca": 1e-2, "swta": 1e-2, "wta": 1e-2}


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _labelled(n: int, seed: int) -> ArraySet:
    labels = torch.arange(n) % 3
    return ArraySet(_images(n, seed), labels, [f"{i}.png" for i in range(n)], ["a", "b", "c"])


def _pretrained(rule: str, arch: str, cut: int, batch_size: int):
    torch.manual_seed(0)
    net = build_network(arch, rule=rule, cut_layer=cut, zca=False)
    pretrain(net, _images(40), epochs=1, batch_size=batch_size, lr=LR[rule], progress=False,
             bn_calibration_images=37)
    return net


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _pretrain_worker(rank: int, world: int, port: int, out: str) -> None:
    _join(rank, world, port)
    with distributed.process_group():
        states = {(rule, cut): _pretrained(rule, arch, cut, bs).state_dict() for rule, arch, cut, bs in PRETRAIN_CASES}
    torch.save(states, f"{out}/{rank}.pt")


def _readout_worker(rank: int, world: int, port: int, out: str) -> None:
    _join(rank, world, port)
    with distributed.process_group():
        # One DDP step over uneven shards (4 and 3 rows) is one step on the whole batch's mean loss.
        torch.manual_seed(0)
        x, y = torch.randn(7, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0])
        linear = torch.nn.Linear(5, 3)
        solo = torch.nn.Linear(5, 3)
        solo.load_state_dict(linear.state_dict())
        torch.nn.functional.cross_entropy(solo(x), y).backward()
        model = distributed.data_parallel(linear, torch.device("cpu"))
        from hebb.finetune import _backward

        part = distributed.shard(torch.arange(7))
        _backward(torch.nn.functional.cross_entropy(model(x[part]), y[part]), len(part), 7, world)
        step = {"ddp": linear.weight.grad.clone(), "solo": solo.weight.grad.clone()}

        train, val = _labelled(30, seed=2), _labelled(12, seed=3)
        torch.manual_seed(0)
        net = build_network("cifar6", rule="hpca", cut_layer=2)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        tuned, tuned_stats = finetune(net, train, val, layer=2, epochs=2, batch_size=8, lr=1e-2, progress=False)
        torch.manual_seed(0)
        trunk = build_network("cifar6", rule="hpca", cut_layer=2)
        feats = distributed.gather_rows(extract_features(trunk, distributed.shard(train.images), 2))
        probed, probe_stats = probe(trunk, train, val, layer=2, epochs=3, batch_size=8, progress=False)
    torch.save({"step": step, "before": before, "finetune": tuned.state_dict(), "finetune_stats": tuned_stats,
                "features": feats, "probe": probed.classifier.state_dict(), "probe_stats": probe_stats},
               f"{out}/{rank}.pt")


def _spawn(worker, out: Path, world: int = 2) -> list[dict]:
    """Run `worker(rank, world, port, out)` in `world` processes; what each saved in out/RANK.pt."""
    mp.spawn(worker, args=(world, _free_port(), str(out)), nprocs=world)
    return [torch.load(out / f"{rank}.pt", weights_only=False) for rank in range(world)]


def _assert_close(state: dict, reference: dict, what: str) -> None:
    """Equal up to float32 rounding: every float tensor within 1e-5 of its largest entry; counters exactly."""
    for key, ref in reference.items():
        got = state[key]
        if not ref.is_floating_point():
            assert torch.equal(got, ref), f"{what}: {key}"
        elif ref.numel():
            err = (got - ref).abs().max().item()
            assert err <= 1e-5 * max(1.0, ref.abs().max().item()), f"{what}: {key} differs by {err:.3g}"


def test_two_processes_pretrain_to_the_weights_of_one(tmp_path, one_thread):
    ranks = _spawn(_pretrain_worker, tmp_path)
    for rule, arch, cut, bs in PRETRAIN_CASES:
        reference = _pretrained(rule, arch, cut, bs).state_dict()
        _assert_close(ranks[0][rule, cut], reference, f"{rule} on {arch} up to layer {cut}")
        # BN running statistics were pooled too (they are part of the state): the processes agree bit for bit
        assert all(torch.equal(ranks[1][rule, cut][k], v) for k, v in ranks[0][rule, cut].items()), rule


def test_fine_tuning_and_probes_train_one_model_across_processes(tmp_path, one_thread):
    ranks = _spawn(_readout_worker, tmp_path)
    step = ranks[0]["step"]
    assert torch.allclose(step["ddp"], step["solo"], atol=1e-7), "DDP step does not weigh the uneven shards"
    for key in ("finetune", "probe"):
        assert all(torch.equal(ranks[1][key][k], v) for k, v in ranks[0][key].items()), key
    for key in ("finetune_stats", "probe_stats"):
        assert ranks[0][key]["history"] == ranks[1][key]["history"], key
    tuned, before = ranks[0]["finetune"], ranks[0]["before"]
    assert not torch.equal(tuned["layers.0.conv.weight"], before["layers.0.conv.weight"])  # backprop reached it
    assert len(ranks[0]["finetune_stats"]["history"]) == 2
    torch.manual_seed(0)
    trunk = build_network("cifar6", rule="hpca", cut_layer=2)
    whole = extract_features(trunk, _labelled(30, seed=2).images, 2)
    assert torch.allclose(ranks[0]["features"], whole, atol=1e-5)  # the shards gathered back in order


def test_one_process_group_refuses_what_is_not_data_parallel(tmp_path, one_thread):
    from hebb.recipes import pretrained_network, read_out

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        t = torch.arange(5)
        assert torch.equal(distributed.shard(t), t) and torch.equal(distributed.gather_rows(t), t)
        with pytest.raises(UserError, match="VAE pre-training does not run data-parallel"):
            pretrained_network("vae", "cifar6", _images(4), 3, epochs=1, progress=False)
        net = build_network("cifar6", rule="hpca", cut_layer=1)
        with pytest.raises(UserError, match="Hebbian classifier does not run data-parallel"):
            read_out(net, "hebbian", _labelled(6, 2), None, layer=1, progress=False)
    finally:
        dist.destroy_process_group()
    assert not distributed.active() and distributed.world_size() == 1


def test_distributed_without_torchrun_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out.pt"
    assert main(["pretrain", "--rule", "hpca", "--distributed", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hebbir: error: --distributed needs the environment torchrun sets") and "\n" not in err
    assert "torchrun --nproc-per-node" in err and not out.exists()


def _torchrun() -> list[str]:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    hebbir = shutil.which("hebbir", path=str(Path(sys.executable).parent)) or shutil.which("hebbir")
    if not found or not hebbir:
        pytest.skip("torchrun or the hebbir script is not installed")
    return [found, "--standalone", "--nproc-per-node", "2", hebbir]


def _failure(stderr: str) -> str:
    """What a failed torchrun said: the ranks' own error lines (torchrun's summary hides them) and the tail."""
    lines = [line for line in stderr.splitlines()
             if any(word in line for word in ("Error", "error:", "abort", "terminate", "Exception", "Killed"))]
    return "\n".join(lines[:40]) + "\n...\n" + stderr[-1500:]


def test_torchrun_pretrain_and_probe_commands(cifar_data_dir, tmp_path, capsys, one_thread):
    from hebb.checkpoint import load_checkpoint

    launch = _torchrun()
    common = ["--data-dir", str(cifar_data_dir), "--device", "cpu", "--seed", "3"]
    pretrain_args = ["pretrain", "--rule", "hpca", "--spec", "HHGGGG", "--limit", "50", "--epochs", "1",
                     "--batch-size", "16", *common]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    two = subprocess.run([*launch, *pretrain_args, "--distributed", "--out", str(tmp_path / "two.pt")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, _failure(two.stderr)
    assert two.stdout.count("pretrained hpca") == 1  # rank 0 alone speaks
    assert main([*pretrain_args, "--out", str(tmp_path / "one.pt")]) == 0
    capsys.readouterr()
    net2, meta2 = load_checkpoint(tmp_path / "two.pt")
    net1, meta1 = load_checkpoint(tmp_path / "one.pt")
    assert meta2["training"]["processes"] == 2 and meta1["training"]["processes"] == 1
    _assert_close(net2.state_dict(), net1.state_dict(), "torchrun pretrain")

    probe_args = ["finetune", "--init", str(tmp_path / "two.pt"), "--readout", "probe", "--layer", "2",
                  "--regime", "2", "--limit", "40", "--epochs", "2", *common, "--distributed"]
    run = subprocess.run([*launch, *probe_args, "--out", str(tmp_path / "probe.pt")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, _failure(run.stderr)
    assert run.stdout.count("trained a linear probe on hpca layer 2") == 1
    _, meta = load_checkpoint(tmp_path / "probe.pt")
    assert meta["training"]["processes"] == 2 and 0 <= meta["metrics"]["val_acc"] <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pt", "probe.pt", "two.pt"]  # no temporary left
