"""`python -m nanugpt.bench eval`: seconds per evaluation pass (`nanugpt.train.evaluate` over the
run's fixed val batches)."""

from __future__ import annotations

import time
from statistics import median

from omegaconf import DictConfig

from nanugpt import train
from nanugpt.bench.common import Result, build_run, sync


def bench_eval(cfg: DictConfig) -> Result:
    run, info = build_run(cfg)
    bench = cfg.bench
    for _ in range(max(1, bench.warmup // 3)):
        train.evaluate(run.net, run.data.val, run.autocast, info)
    times = []
    for _ in range(bench.repeats):
        sync(info.device)
        t = time.perf_counter()
        train.evaluate(run.net, run.data.val, run.autocast, info)
        sync(info.device)
        times.append(time.perf_counter() - t)
    tokens = sum(x.numel() for x, _ in run.data.val)
    sec = median(times)
    row = {
        "eval_iters": len(run.data.val),  # val batches per pass (example data: its whole val split)
        "batch": cfg.training.device_batch_size,
        "tokens": tokens,
        "sec_per_eval": sec,
        "tokens_per_s": tokens / sec,
    }
    return Result(info.device, [row])
