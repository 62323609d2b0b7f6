"""Typed schemas for the plain config sections, registered with Hydra's ConfigStore.

`nanugpt/conf/train.yaml` lists `nanugpt_train_schema` first in its defaults, so a mistyped key
(`training.max_stpes=5`) or a wrongly typed value (`training.max_steps=abc`) fails at
composition with Hydra's own message, before anything runs. Plugin groups (`model`, `data`,
...) stay free-form: their keys are the plugin's constructor arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TrainingConfig:
    max_steps: int = 600
    global_batch_size: int = 32  # sequences per optimizer step, summed over ranks and micro-steps
    device_batch_size: int = 32  # sequences per forward pass on one device
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still logged)
    dtype: str = "auto"  # auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    compile: bool = False
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads; null keeps torch's default
    skip_nonfinite: bool = False  # a NaN/inf loss skips that optimizer step instead of stopping the run
    zero1: bool = False  # DDP only: shard optimizer state across ranks (ZeroRedundancyOptimizer)


@dataclass
class EvalConfig:
    every: int = 100  # evaluate (and checkpoint) every this many steps, and at the last step
    iters: int = 20  # val batches per evaluation; the same batches every time
    test_iters: int = 100  # test batches, evaluated once at the end (data sets with a test split); 0 skips it
    checkpoint: str = "best_and_last"  # best_and_last | last | none
    keep_last: int = 2  # step-numbered checkpoints kept besides last.pt/best.pt (hard links, no extra disk)


@dataclass
class WandbConfig:
    mode: str | None = None  # online | offline | disabled; null: WANDB_MODE, else online if logged in, else disabled
    project: str = "nanugpt"
    entity: str | None = None
    name: str | None = None  # null: from the run dir (<date>/<time>-<us>, or <date>/<time>-<us>/<job> in a sweep)
    group: str | None = None  # null: the sweep (<date>/<time>-<us>) for sweep jobs
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    every: int = 10  # console line every this many steps; metrics.jsonl gets every step
    progress: bool | None = None  # progress bar; null: only when stdout is a terminal
    peak_tflops: float | None = None  # one device's peak for MFU; null: from the GPU table (CPU: n/a)
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class PathsConfig:
    data_dir: str = "${oc.env:NANUGPT_DATA,data}"  # prepared-data cache root


@dataclass
class TrainConfig:
    model: Any = MISSING
    data: Any = MISSING
    tokenizer: Any = MISSING
    optim: Any = MISSING
    sched: Any = MISSING
    loss: Any = MISSING
    scaler: Any = MISSING
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    resume: str = "auto"  # auto: continue from <run dir>/checkpoints/last.pt if present | never | <path>


def register_configs() -> None:
    ConfigStore.instance().store(name="nanugpt_train_schema", node=TrainConfig)
