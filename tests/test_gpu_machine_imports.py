"""The GPU machine has torch but neither faiss nor streamlit: training, evaluation and the bench must run there.

Each check runs in a fresh interpreter where `import faiss` and `import streamlit` fail, as on that machine,
so that a device session is never lost to an import error. scipy is blocked too: nobody has checked that the
machine has it, and without it the evaluation report is written without confidence intervals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = "import sys; sys.modules['faiss'] = None; sys.modules['streamlit'] = None; sys.modules['scipy'] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", BLOCK + code], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_blocking_itself_works():
    proc = subprocess.run([sys.executable, "-c", BLOCK + "import faiss"], capture_output=True, text=True)
    assert proc.returncode != 0 and "faiss" in proc.stderr


def test_pretrain_finetune_and_evaluate_run_without_faiss_and_streamlit(cifar_data_dir):
    with tempfile.TemporaryDirectory(prefix="hebbir-nofaiss-") as tmp:
        common = f"'--data-dir', {str(cifar_data_dir)!r}, '--device', 'cpu'"
        _run(f"""
from retrieval.cli import main
assert main(['pretrain', '--rule', 'hpca', '--limit', '128', '--epochs', '1', '--out', '{tmp}/p.pt', {common}]) == 0
assert main(['finetune', '--init', '{tmp}/p.pt', '--classifier', 'hebbian', '--limit', '100', '--layer', '2',
             '--out', '{tmp}/h.pt', {common}]) == 0
assert main(['evaluate', '--methods', 'sgd', '--regimes', '100', '--layers', '1', '--seeds', '1',
             '--finetune-epochs', '1', '--limit', '100', '--pooling', 'avg', '--projection', 'none',
             '--out', '{tmp}/rep', {common}]) == 0
""")
        results = json.loads(Path(tmp, "rep", "results.json").read_text())
        assert list(results["runs"]) == ["sgd/r100/l1/s0"]
        summary = Path(tmp, "rep", "summary.md").read_text()
        assert "confidence intervals: omitted, scipy is not installed" in summary


def test_the_bench_runs_without_faiss():
    with tempfile.TemporaryDirectory(prefix="hebbir-nofaiss-bench-") as out:
        proc = _run(f"""
import runpy
sys.argv = ['bench/run.py', '--quick', '--device', 'cpu', '--sections', 'limits,search', '--out-dir', {out!r}]
runpy.run_path('bench/run.py', run_name='__main__')
""")
        result = json.loads(next(Path(out).glob("*.json")).read_text())
        assert result["metrics"]["search_qps"] > 0
        assert "search_qps" in proc.stdout
