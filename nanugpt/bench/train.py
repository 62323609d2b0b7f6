"""`python -m nanugpt.bench train`: the trainer's own step (`nanugpt.train.train_step` on the run
that `nanugpt.train.build_run` builds) against the minimal plain-torch loop on the same model,
in tokens/s, MFU and time waiting on data."""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import median

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from nanugpt import train
from nanugpt.bench.common import Result, build_run, sync
from nanugpt.data.loader import RandomWindowBatches
from nanugpt.errors import ConfigError
from nanugpt.observe import peak_flops


def bench_train(cfg: DictConfig) -> Result:
    run, info = build_run(cfg)
    tcfg = cfg.training
    tokens_per_step = tcfg.global_batch_size * cfg.model.context_length
    # MFU's denominator as the trainer takes it: logging.peak_tflops, else the known-GPU table
    peak = cfg.logging.peak_tflops * 1e12 if cfg.logging.peak_tflops else peak_flops(info.device, run.amp_dtype)

    def nanugpt_step() -> float:
        """The trainer's own step; returns seconds waiting on data. Looked up on `nanugpt.train` at
        each call, so what the benchmark times is whatever the trainer calls."""
        return train.train_step(run, info, tcfg.grad_clip).data_s

    loops: dict[str, Callable[[], float]] = {"nanugpt": nanugpt_step}
    if cfg.bench.plain_loop:
        loops["plain torch loop"] = plain_loop(cfg, run, info.device)
    rows = time_train_steps(loops, cfg.bench, info.device, tokens_per_step, run.model.flops_per_token(), peak)
    if info.device.type == "cuda":  # the process's peak over every loop timed
        for row in rows:
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(info.device) / 2**30
    return Result(info.device, rows)


def plain_loop(cfg: DictConfig, run: train.Run, device: torch.device) -> Callable[[], float]:
    """The minimal loop everyone writes first: the same model and optimizer, a fresh copy, no
    wrappers, windows sliced from the same tokens. Returns its step (seconds waiting on data)."""
    if not isinstance(run.data.train, RandomWindowBatches):
        raise ConfigError(
            f"bench.plain_loop=true slices windows from a token stream, but this data ({cfg.data._target_}) brings "
            "its own example batches; pass bench.plain_loop=false to time the trainer's step alone."
        )
    tokens = max(run.data.train.windows.shards, key=len)  # one token array: the largest train shard
    tcfg, context_length, accum = cfg.training, cfg.model.context_length, run.spec.grad_accum_steps
    model = instantiate(cfg.model).to(device)
    optimizer = train.build_optimizer(cfg, model)
    step_model: Callable = torch.compile(model) if tcfg.compile else model
    tokens_t = torch.from_numpy(np.asarray(tokens).astype(np.int64))

    def plain_step() -> float:
        t = time.perf_counter()
        ix = torch.randint(len(tokens_t) - context_length - 1, (tcfg.global_batch_size,))
        xy = torch.stack([tokens_t[i : i + context_length + 1] for i in ix.tolist()]).to(device)
        data_s = time.perf_counter() - t
        for x, y in zip(xy[:, :-1].chunk(accum), xy[:, 1:].chunk(accum), strict=False):
            with run.autocast:
                logits = model.logits(step_model(x))
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        return data_s

    return plain_step


def time_train_steps(
    loops: dict[str, Callable[[], float]],
    bench: DictConfig,
    device: torch.device,
    tokens_per_step: int,
    flops_per_token: int,
    peak: float | None,
) -> list[dict]:
    """Warm each loop up, then time `bench.steps` steps of each in turn per repeat (interleaved,
    so a load change on a shared machine hits every loop alike); figures are medians."""
    warmup_s = {}
    for name, step in loops.items():
        t = time.perf_counter()
        for _ in range(bench.warmup):
            step()
        sync(device)
        warmup_s[name] = time.perf_counter() - t  # with training.compile=true: mostly compilation
    step_s: dict[str, list[float]] = {n: [] for n in loops}
    cpu_s: dict[str, list[float]] = {n: [] for n in loops}
    data_share: dict[str, list[float]] = {n: [] for n in loops}
    for repeat in range(bench.repeats):
        order = list(loops) if repeat % 2 == 0 else list(reversed(loops))
        for name in order:
            sync(device)
            t, c, waited = time.perf_counter(), time.process_time(), 0.0
            for _ in range(bench.steps):
                waited += loops[name]()
            sync(device)
            elapsed = time.perf_counter() - t
            step_s[name].append(elapsed / bench.steps)
            cpu_s[name].append((time.process_time() - c) / bench.steps)
            data_share[name].append(waited / elapsed)
    rows = []
    for name in loops:
        sec = median(step_s[name])
        achieved = flops_per_token * tokens_per_step / sec
        rows.append(
            {
                "loop": name,
                "step_ms": sec * 1e3,
                "cpu_ms_per_step": median(cpu_s[name]) * 1e3,
                "tokens_per_s": tokens_per_step / sec,
                "data_wait_pct": 100 * median(data_share[name]),
                "tflops": achieved / 1e12,
                "mfu_pct": 100 * achieved / peak if peak else None,
                "warmup_s": warmup_s[name],
                "step_ms_all": [round(x * 1e3, 3) for x in step_s[name]],
            }
        )
    if len(rows) == 2:
        rows[0]["x_vs_plain"] = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    return rows
