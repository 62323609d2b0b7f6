"""A run dir says how to run it again: command.sh, env.json and a dirty checkout's code.diff
(nanugpt/provenance.py), from a real CLI run; the diff from a real git repository; a machine
without git still trains."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import torch

from nanugpt.metrics import read_metrics
from nanugpt.provenance import code_diff, git_state, write_run_artifacts

from .conftest import REPO, TINY, run_cli

SECRETS = {"WANDB_API_KEY": "sekrit-wandb", "HF_TOKEN": "sekrit-hf"}


def git(*args: str, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_command_sh_reruns_the_run_and_env_json_names_the_code_and_machine(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "training.max_steps=4", "eval.every=2", "eval.iters=1", f"hydra.run.dir={run_dir}"]
    env = {**SECRETS, "WANDB_MODE": "disabled", "NANUGPT_TEST_MARK": "a b'c"}
    run_cli("nanugpt.train", *args, cwd=tmp_path, env=env)

    script = (run_dir / "command.sh").read_text()
    assert os.access(run_dir / "command.sh", os.X_OK)
    lines = script.splitlines()
    assert f"cd {shlex.quote(str(tmp_path))}" in lines
    assert "export NANUGPT_TEST_MARK='a b'\"'\"'c'" in lines and "export WANDB_MODE=disabled" in lines
    assert not any(secret in script for secret in SECRETS.values())
    [command] = [line for line in lines if line.startswith("exec ")]
    assert shlex.split(command)[1:] == [sys.executable, "-m", "nanugpt.train", *args]

    info = json.loads((run_dir / "env.json").read_text())
    assert info["packages"]["torch"] == torch.__version__ and info["packages"]["nanugpt"]
    assert info["env"]["NANUGPT_TEST_MARK"] == "a b'c" and not set(SECRETS) & set(info["env"])
    assert info["gpus"] == [] and info["argv"][1:] == args
    assert info["code"]["git_commit"] == git_state(REPO)["commit"]
    has_changes = bool(git("status", "--porcelain", cwd=REPO).strip())
    assert (run_dir / "code.diff").is_file() == has_changes == (info["code"]["diff"] == "code.diff")

    # Rerunning the script in its run dir resumes the finished run: nothing left to train.
    proc = subprocess.run(["sh", str(run_dir / "command.sh")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "at step 4" in proc.stdout and len(read_metrics(run_dir / "metrics.jsonl")) == 4


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
