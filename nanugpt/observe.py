"""Seeing a run while it trains: console lines and a progress bar, `metrics.jsonl`, the run's
provenance (resolved config; command.sh, env.json, code.diff from nanugpt/provenance.py), MFU,
weight norm and peak memory, and W&B.

`train.py` makes one `RunObserver` and calls `log_step(row, eta_s)` once per step and
`close()` at the end. Only rank 0 observes; other ranks get an observer that does nothing.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import netrc
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nanugpt.dist import total_norm
from nanugpt.metrics import MetricsFile, console_line
from nanugpt.provenance import write_run_artifacts
from nanugpt.utils import atomic_write_bytes

log = logging.getLogger("nanugpt.train")

RUN_ID_FILE = "wandb_run_id"  # in the run dir: a resumed run logs into the same W&B run

# Dense (no sparsity) peak FLOP/s per GPU by compute dtype, from NVIDIA's data sheets (SXM parts).
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12},
    "H100": {"bf16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}


def peak_flops(device: torch.device, amp_dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device at the dtype its matmuls run in, or None when unknown (CPUs,
    unlisted GPUs): MFU is then reported as n/a rather than against an invented peak."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if table is None:
        return None
    if amp_dtype in (torch.bfloat16, torch.float16):
        return table["bf16"]
    return table["tf32" if tf32_matmuls() else "fp32"]


def tf32_matmuls() -> bool:
    """Whether CUDA float32 matmuls run as TF32. torch >= 2.9 has one setting for it that both
    its APIs write, and its legacy getters raise once the new API was used (train.py uses it)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision == "tf32"
    return matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"


def weight_norm(model: torch.nn.Module) -> float:
    """The L2 norm of all parameters together, the full model's under FSDP. Every rank calls it."""
    with torch.no_grad():
        return float(total_norm(list(model.parameters())))


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak memory, named for what it is: on a GPU the tensors allocated
    (`run/peak_gpu_mem_gib`), on a CPU the process's resident set (`run/peak_rss_gib`)."""
    if device.type == "cuda":
        return {"run/peak_gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    import resource

    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"run/peak_rss_gib": max_rss * (1 if sys.platform == "darwin" else 1024) / 2**30}


def wandb_mode(mode: str | None) -> str:
    """`logging.wandb.mode` (a choice the schema has checked), or when null: WANDB_MODE if set,
    online when logged in, else disabled."""
    if mode is not None:
        return str(mode)  # a plain str for wandb, not the schema's enum member
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "disabled"


def default_run_name(run_dir: Path) -> tuple[str, str | None]:
    """(name, group) from the run dir: `<date>/<time>` for a run, `<date>/<time>/<job>` in a
    sweep, where the sweep `<date>/<time>` is the group. The default dirs' time has microseconds
    (`14-05-09-482913`), so runs started in the same second get names of their own."""
    run_dir = run_dir.resolve()
    # Hydra multirun: multirun/<date>/<time>/<job num>, beside the sweep's multirun.yaml (not
    # outputs/slurm/<job id>, whose name is digits too)
    if run_dir.name.isdigit() and (run_dir.parent / "multirun.yaml").is_file():
        group = f"{run_dir.parent.parent.name}/{run_dir.parent.name}"
        return f"{group}/{run_dir.name}", group
    return f"{run_dir.parent.name}/{run_dir.name}", None


def run_tags(cfg: DictConfig) -> list[str]:
    """The top-level `tags` list, or when null W&B's own WANDB_TAGS (comma-separated)."""
    tags = cfg.get("tags")
    if tags is None:
        tags = [t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip()]
    return [str(t) for t in tags]


def wandb_init_args(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Project, entity, name, group and tags for wandb.init: the command line / config, then W&B's
    own variables (so a W&B sweep agent's WANDB_PROJECT and WANDB_ENTITY hold), then nanugpt's
    defaults (project nanugpt; name and group from the run dir)."""
    wcfg, env = cfg.logging.wandb, os.environ.get
    name, group = default_run_name(run_dir)
    return {
        "project": wcfg.project or env("WANDB_PROJECT") or "nanugpt",
        "entity": wcfg.entity or env("WANDB_ENTITY") or None,
        "name": wcfg.name or env("WANDB_NAME") or name,
        "group": wcfg.group or env("WANDB_RUN_GROUP") or group,
        "tags": run_tags(cfg),
    }


class Progress:
    """A Rich progress bar on a terminal, with log lines printed above it; nothing when stdout
    is not a terminal (CI, files, Slurm), where the periodic log lines are the progress."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.bar = None
        self.swapped: list[tuple[logging.Handler, logging.Handler]] = []
        if not enabled:
            return
        from rich.console import Console
        from rich.highlighter import NullHighlighter
        from rich.logging import RichHandler
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=Console(file=sys.stdout),
            transient=True,
        )
        self.task = self.bar.add_task("train", total=total, completed=start, stats="", eta="?")
        root = logging.getLogger()
        for handler in list(root.handlers):  # the console handler prints through the bar
            if type(handler) is logging.StreamHandler and getattr(handler, "stream", None) in (sys.stdout, sys.stderr):
                rich_handler = RichHandler(
                    console=self.bar.console,
                    show_time=False,
                    show_level=False,
                    show_path=False,
                    markup=False,
                    highlighter=NullHighlighter(),
                )
                rich_handler.setFormatter(handler.formatter)
                rich_handler.setLevel(handler.level)
                root.removeHandler(handler)
                root.addHandler(rich_handler)
                self.swapped.append((handler, rich_handler))
        self.bar.start()

    def update(self, step: int, stats: str, eta: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, stats=stats, eta=eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        root = logging.getLogger()
        for original, rich_handler in self.swapped:
            root.removeHandler(rich_handler)
            root.addHandler(original)
        self.swapped = []


class WandbRun:
    """W&B for one run dir: config, summary, step metrics and artifacts; the run id is kept in
    the run dir so that a resumed run continues the same W&B run."""

    def __init__(self, cfg: DictConfig, run_dir: Path, summary: dict[str, Any], artifacts: list[Path]) -> None:
        import wandb

        wcfg = cfg.logging.wandb
        self.wandb, self.run_dir, self.log_checkpoints = wandb, run_dir, wcfg.log_checkpoints
        id_file = run_dir / RUN_ID_FILE
        # A resumed run keeps its id; a new one takes a W&B sweep agent's WANDB_RUN_ID when there is one.
        run_id = (
            (id_file.read_text().strip() if id_file.is_file() else "")
            or os.environ.get("WANDB_RUN_ID")
            or secrets.token_hex(4)
        )
        atomic_write_bytes(id_file, f"{run_id}\n".encode())  # a crash mid-write must not leave an empty id
        self.run = wandb.init(
            mode=wandb_mode(wcfg.mode),
            **wandb_init_args(cfg, run_dir),
            config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            id=run_id,
            resume="allow",
            dir=os.environ.get("WANDB_DIR") or str(run_dir),
            settings=wandb.Settings(console="off"),  # log.txt already has the console
        )
        self.run.define_metric("val/loss", summary="min")
        self.run.summary.update(summary)
        self.log_files("config", [run_dir / "resolved_config.yaml", run_dir / "run_info.json", *artifacts])

    def log_files(self, kind: str, paths: list[Path]) -> None:
        paths = [p for p in paths if p.is_file()]
        if paths:
            artifact = self.wandb.Artifact(f"{kind}-{self.run.id}", type=kind)
            for path in paths:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact)

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def finish(self, failed: bool = False) -> None:
        ckpt_dir = self.run_dir / "checkpoints"
        self.log_files("checkpoint-log", [ckpt_dir / "checkpoint_log.yaml"])
        if self.log_checkpoints:  # logging.wandb.log_checkpoints=true: the final weights, uploaded once
            self.log_files("checkpoint", [ckpt_dir / "last.pt", ckpt_dir / "best.pt"])
        self.run.finish(exit_code=1 if failed else 0)


class RunObserver:
    """Everything rank 0 records about a run. `log_step` adds `train/mfu` (when the device's
    peak is known), appends the row to metrics.jsonl, logs it to W&B, moves the progress bar,
    and every `logging.every` steps (and on eval steps) logs the console line."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        is_master: bool,
        start_step: int,
        flops_per_token: int,
        peak_flops_per_sec: float | None,  # one device's; None: unknown, MFU n/a
        summary: dict[str, Any],
    ) -> None:
        self.enabled = is_master
        self.every, self.max_steps = cfg.logging.every, cfg.training.max_steps
        self.flops_per_token = flops_per_token
        # MFU compares the global tokens/s with the peak of all devices together.
        peak = cfg.logging.peak_tflops * 1e12 if cfg.logging.peak_tflops else peak_flops_per_sec
        self.peak = peak * summary.get("world_size", 1) if peak else None
        self.metrics = self.wandb = None
        self.progress = Progress(self.max_steps, start_step, False)
        if not self.enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        info = {
            "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "start_step": start_step,
            "peak_flops_per_sec": self.peak,  # all devices
            "tags": run_tags(cfg),
            # which GPUs this job was given (hydra/launcher=local gives each concurrent job its own)
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            **summary,
        }
        (run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
        artifacts, env = write_run_artifacts(run_dir)  # command.sh, env.json, code.diff
        code = env["code"]
        dirty = " (dirty: code.diff)" if code["diff"] else ""
        log.info("Run dir %s | git %s%s", run_dir, (code["git_commit"] or "unknown")[:12], dirty)
        self.metrics = MetricsFile(run_dir / "metrics.jsonl", truncate_after_step=start_step)
        if wandb_mode(cfg.logging.wandb.mode) != "disabled":
            self.wandb = WandbRun(cfg, run_dir, summary, artifacts)
        show_bar = cfg.logging.progress if cfg.logging.progress is not None else sys.stdout.isatty()
        self.progress = Progress(self.max_steps, start_step, bool(show_bar))
        atexit.register(self.close, failed=True)  # a crash still stops the bar and marks the W&B run failed

    def mfu(self, tokens_per_sec: float) -> float | None:
        return self.flops_per_token * tokens_per_sec / self.peak if self.peak else None

    def log_step(self, row: dict[str, Any], eta_s: float) -> None:
        if not self.enabled:
            return
        mfu = self.mfu(row["train/tokens_per_sec"])
        if mfu is not None:
            row["train/mfu"] = mfu
        self.metrics.write(row)
        if self.wandb is not None:
            self.wandb.log(row)
        line = console_line(row, self.max_steps, eta_s)
        step = row["step"]
        if step % self.every == 0 or step == self.max_steps or "val/loss" in row:
            log.info(line)
        stats, eta = line.split(" | ", 1)[1].rsplit(" | ETA ", 1)
        self.progress.update(step, stats, eta)

    def close(self, failed: bool = False) -> None:
        self.progress.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.wandb is not None:
            self.wandb.finish(failed)
            self.wandb = None
