from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nanugpt.metrics import read_metrics
from nanugpt.observe import PEAK_FLOPS, peak_flops
from nanugpt.provenance import git_state

from .conftest import REPO, TINY, run_cli

ANSI = re.compile(r"\x1b\[")


def run_in_terminal(args: list[str], cwd) -> tuple[int, str]:
    """Run `python -m nanugpt.train args` with stdout and stderr on a pseudo-terminal."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanugpt.train", *args],
        cwd=cwd,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160"},
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_plain_output_log_file_provenance_and_mfu(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli(
        "nanugpt.train",
        *TINY,
        "training.max_steps=12",
        "eval.every=6",
        "logging.peak_tflops=0.001",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    ).stdout
    assert not ANSI.search(out)  # not a terminal: no bar, no colour codes
    assert "step 10/12" in out and "MFU " in out and "MFU n/a" not in out

    log = (run_dir / "log.txt").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO nanugpt.train: step 10/12 \| loss", log, re.M)

    code = json.loads((run_dir / "env.json").read_text())["code"]
    assert code["git_commit"] == git_state(REPO)["commit"]
    assert code["git_dirty"] == git_state(REPO)["dirty"]
    assert code["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", code["git_commit"])
    assert json.loads((run_dir / "run_info.json").read_text())["start_step"] == 0
    resolved = OmegaConf.load(run_dir / "resolved_config.yaml")
    assert resolved.training.max_steps == 12 and "${" not in (run_dir / "resolved_config.yaml").read_text()

    flops_per_token = instantiate(resolved.model).flops_per_token()
    for row in read_metrics(run_dir / "metrics.jsonl"):
        assert row["train/mfu"] == pytest.approx(flops_per_token * row["train/tokens_per_sec"] / 1e9)


def test_terminal_gets_a_progress_bar_and_mfu_is_na_on_cpu(tmp_path):
    run_dir = tmp_path / "run"
    code, out = run_in_terminal([*TINY, "training.max_steps=40", "eval.every=20", f"hydra.run.dir={run_dir}"], tmp_path)
    assert code == 0, out
    assert "━" in out and "40/40" in out and "ETA" in out  # the Rich bar
    assert "step 20/40" in out and "MFU n/a" in out
    assert "Done in " in out and "Sample from it" in out
    assert all("train/mfu" not in r for r in read_metrics(run_dir / "metrics.jsonl"))  # no invented peak
    log = (run_dir / "log.txt").read_text()
    assert not ANSI.search(log) and log.count("step 20/40") == 1  # the file log stays plain


@pytest.fixture
def fp32_precision():
    """Restore the process-wide CUDA float32 matmul setting a test changes."""
    saved = torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision = saved


@pytest.mark.parametrize(
    "name,row",
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("Tesla V100-SXM2-16GB", None),  # not in the table: MFU n/a, not an invented peak
    ],
)
def test_peak_flops_looks_up_the_gpu_by_name_and_compute_dtype(name, row, monkeypatch, fp32_precision):
    """This machine has no GPU: the device name is the one thing peak_flops asks CUDA for, so
    torch.cuda.get_device_name is replaced by one that returns what those GPUs report; the
    lookup, and the TF32 setting that picks the float32 row, run for real."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    gpu = torch.device("cuda", 0)
    peaks = PEAK_FLOPS.get(row, {})
    assert peak_flops(gpu, torch.bfloat16) == peaks.get("bf16")
    assert peak_flops(gpu, torch.float16) == peaks.get("bf16")  # the same tensor-core rate
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # as train.py sets it on CUDA (torch >= 2.9)
    assert peak_flops(gpu, torch.float32) == peaks.get("tf32")
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert peak_flops(gpu, torch.float32) == peaks.get("fp32")
    if row is not None:
        assert peaks["bf16"] > peaks["tf32"] > peaks["fp32"]
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None
