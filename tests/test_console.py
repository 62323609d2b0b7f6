from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nanugpt.metrics import read_metrics
from nanugpt.observe import PEAK_FLOPS, peak_flops
from nanugpt.provenance import code_diff, git_state, write_run_artifacts

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


SECRETS = {"WANDB_API_KEY": "sekrit-wandb", "HF_TOKEN": "sekrit-hf"}


def git(*args: str, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_plain_output_log_file_provenance_and_mfu(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "training.max_steps=12", "eval.every=6", "logging.peak_tflops=0.001", f"hydra.run.dir={run_dir}"]
    env = {**SECRETS, "WANDB_MODE": "disabled", "NANUGPT_TEST_MARK": "a b'c"}
    out = run_cli("nanugpt.train", *args, cwd=tmp_path, env=env).stdout
    assert not ANSI.search(out)  # not a terminal: no bar, no colour codes
    assert "step 10/12" in out and "MFU " in out and "MFU n/a" not in out

    log = (run_dir / "log.txt").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO nanugpt.train: step 10/12 \| loss", log, re.M)

    # command.sh: cd, the variables that matter (no secrets), and the command as typed
    script = (run_dir / "command.sh").read_text()
    lines = script.splitlines()
    assert os.access(run_dir / "command.sh", os.X_OK) and f"cd {shlex.quote(str(tmp_path))}" in lines
    assert "export NANUGPT_TEST_MARK='a b'\"'\"'c'" in lines and "export WANDB_MODE=disabled" in lines
    assert not any(secret in script for secret in SECRETS.values())
    [command] = [line for line in lines if line.startswith("exec ")]
    assert shlex.split(command)[1:] == [sys.executable, "-m", "nanugpt.train", *args]
    # env.json: versions, machine, variables, and which code ran
    info = json.loads((run_dir / "env.json").read_text())
    assert info["packages"]["torch"] == torch.__version__ and info["packages"]["nanugpt"]
    assert info["env"]["NANUGPT_TEST_MARK"] == "a b'c" and not set(SECRETS) & set(info["env"])
    assert info["gpus"] == [] and info["argv"][1:] == args
    code = info["code"]
    assert code["git_commit"] == git_state(REPO)["commit"]
    assert code["git_dirty"] == git_state(REPO)["dirty"]
    assert code["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", code["git_commit"])
    changed = code["git_commit"] is not None and bool(git("status", "--porcelain", cwd=REPO).strip())
    assert (run_dir / "code.diff").is_file() == changed == (code["diff"] == "code.diff")
    assert json.loads((run_dir / "run_info.json").read_text())["start_step"] == 0
    resolved = OmegaConf.load(run_dir / "resolved_config.yaml")
    assert resolved.training.max_steps == 12 and "${" not in (run_dir / "resolved_config.yaml").read_text()

    flops_per_token = instantiate(resolved.model).flops_per_token()
    for row in read_metrics(run_dir / "metrics.jsonl"):
        assert row["train/mfu"] == pytest.approx(flops_per_token * row["train/tokens_per_sec"] / 1e9)

    # Rerunning command.sh (from anywhere) resumes the finished run: nothing left to train.
    proc = subprocess.run(["sh", str(run_dir / "command.sh")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "at step 12" in proc.stdout and len(read_metrics(run_dir / "metrics.jsonl")) == 12


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


def test_code_diff_lists_untracked_files_and_applies_to_the_commit(tmp_path):
    repo, clone = tmp_path / "repo", tmp_path / "clone"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "model.py").write_text("width = 32\n")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first", cwd=repo)
    assert code_diff(repo) is None  # clean
    git("clone", "-q", str(repo), str(clone), cwd=tmp_path)
    (repo / "model.py").write_text("width = 64\n")
    (repo / "notes.txt").write_text("untracked\n")
    diff = code_diff(repo)
    assert diff.startswith("# untracked: notes.txt\n") and "+width = 64" in diff
    (tmp_path / "code.diff").write_text(diff)
    git("apply", str(tmp_path / "code.diff"), cwd=clone)  # the header is skipped
    assert (clone / "model.py").read_text() == "width = 64\n"


def test_without_git_the_package_version_stands_in(tmp_path, monkeypatch):
    # A PATH with python but no git: the real lookup fails, as on a machine without git.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert shutil.which("git") is None
    assert git_state() == {"commit": None, "dirty": None}
    written, info = write_run_artifacts(tmp_path)
    assert [p.name for p in written] == ["env.json"]  # called from Python (pytest): no command to rerun
    assert info["code"] == {"dir": str(REPO), "git_commit": None, "git_dirty": None, "diff": None}
    assert info["packages"]["nanugpt"] == json.loads((tmp_path / "env.json").read_text())["packages"]["nanugpt"]
