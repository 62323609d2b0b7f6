"""What it takes to run a run again, saved in its run dir at the start (rank 0):

    command.sh   cd, the environment variables that change what runs, and the command, quoted:
                 `sh command.sh` runs it again (resumes it when the command names its run dir)
    env.json     versions (python, torch, CUDA, nanugpt and its main dependencies), GPUs, host, the
                 launcher's variables (Slurm, torchrun, CUDA_VISIBLE_DEVICES, W&B; no secrets), the
                 code's git commit and dirty flag, or the installed package version
    code.diff    a dirty checkout's `git diff HEAD`, headed by the list of untracked files

Nothing here may fail a run: a missing git, a read-only checkout or an odd launcher leaves a
field null, never an exception.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
# Variables that change what a rerun does; command.sh exports the ones set.
RERUN_ENV = re.compile(
    r"^(NANUGPT_|WANDB_|HF_|NCCL_|TORCH_|PYTORCH_|CUDA_VISIBLE_DEVICES$|OMP_NUM_THREADS$|PYTHONPATH$)"
)
# Recorded in env.json only: they describe this job or launch, and a rerun gets its own.
LAUNCH_ENV = re.compile(r"^(SLURM_|SUBMITIT_|TORCHELASTIC_|RANK$|LOCAL_RANK$|WORLD_SIZE$|LOCAL_WORLD_SIZE$|MASTER_)")
SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)
PACKAGES = ("nanugpt", "torch", "numpy", "hydra-core", "omegaconf", "wandb")


def git(*args: str, cwd: Path = PACKAGE_DIR) -> str | None:
    """`git args` run in `cwd`, its stdout; None when git is missing, fails or hangs."""
    try:
        out = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    # rstrip only: a diff's last context line may be a lone space
    return out.stdout.rstrip("\n") if out.returncode == 0 else None


def git_state(path: Path = PACKAGE_DIR) -> dict[str, Any]:
    """Commit and dirty flag of the checkout that holds `path` (None outside a git checkout)."""
    commit = git("rev-parse", "HEAD", cwd=path)
    status = git("status", "--porcelain", "--untracked-files=no", cwd=path) if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def env_vars(pattern: re.Pattern[str]) -> dict[str, str]:
    """The set environment variables whose names match, secrets (API keys, tokens) left out."""
    return {k: v for k, v in sorted(os.environ.items()) if pattern.match(k) and not SECRET.search(k)}


def launch_command(argv: list[str]) -> list[str] | None:
    """The command that runs this process's training again. `python -m nanugpt.train`: this
    interpreter with the same arguments; under torchrun the same launch on this node. A job of a
    sweep (`-m`, possibly on Slurm) runs again alone: its own overrides, as a single run. None
    when `train()` was called from Python (a test, a notebook): no command line started it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    train = [sys.executable, "-m", "nanugpt.train"]
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return [*train, *HydraConfig.get().overrides.task]
    if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun
        nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
        where = ["--standalone"] if nodes == 1 else [f"--nnodes={nodes}", "--rdzv-endpoint=<host:port>"]
        per_node = f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', '1')}"
        return [sys.executable, "-m", "torch.distributed.run", *where, per_node, "-m", "nanugpt.train", *argv[1:]]
    if argv and Path(argv[0]).resolve() == PACKAGE_DIR / "train.py":
        return [*train, *argv[1:]]
    return None


def command_script(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    lines = [
        "#!/bin/sh",
        "# Runs this run again: a new run, or with hydra.run.dir=<its run dir> in the command, a resume.",
        "set -e",
    ]
    lines.append(f"cd {shlex.quote(str(cwd))}")
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append(f"exec {shlex.join(command)}")
    return "\n".join(lines) + "\n"


def gpus() -> list[str]:
    return (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )


def code_diff(path: Path = PACKAGE_DIR) -> str | None:
    """The changes of the checkout holding `path`: the untracked files by name (in a header
    `git apply` skips), then `git diff HEAD`. None for a clean checkout or outside one."""
    diff = git("diff", "HEAD", "--no-color", cwd=path)
    untracked = git("ls-files", "--others", "--exclude-standard", cwd=path)
    if not diff and not untracked:
        return None
    head = [f"# untracked: {name}" for name in (untracked or "").splitlines()]
    return "\n".join([*head, diff or ""]).rstrip("\n") + "\n"


def environment(git_info: dict[str, Any], has_diff: bool) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "argv": sys.argv,
        "packages": {name: package_version(name) for name in PACKAGES},
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": gpus(),
        "code": {
            "dir": str(PACKAGE_DIR.parent),
            "git_commit": git_info["commit"],
            "git_dirty": git_info["dirty"],
            "diff": "code.diff" if has_diff else None,
        },
        "env": {**env_vars(RERUN_ENV), **env_vars(LAUNCH_ENV)},
    }


def write_run_artifacts(run_dir: Path) -> tuple[list[Path], dict[str, Any]]:
    """command.sh (when a command line started the run), env.json and (a dirty checkout)
    code.diff in `run_dir`; returns the files written and env.json's content. A resumed run rewrites them: they say how
    its latest process ran."""
    git_info = git_state()
    diff = code_diff() if git_info["commit"] else None
    (run_dir / "code.diff").unlink(missing_ok=True)  # a resume from a now clean checkout
    written = []
    command = launch_command(sys.argv)
    if command is not None:
        script = run_dir / "command.sh"
        script.write_text(command_script(command, Path.cwd(), env_vars(RERUN_ENV)))
        script.chmod(0o755)
        written.append(script)
    env_file = run_dir / "env.json"
    env = environment(git_info, diff is not None)
    env_file.write_text(json.dumps(env, indent=2) + "\n")
    written.append(env_file)
    if diff is not None:
        (run_dir / "code.diff").write_text(diff)
        written.append(run_dir / "code.diff")
    return written, env
