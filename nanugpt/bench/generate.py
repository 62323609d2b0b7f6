"""`python -m nanugpt.bench generate`: tokens/s of `nanugpt.sampling.generate` with the KV cache
against recomputing the context, per batch size (random weights unless bench.ckpt)."""

from __future__ import annotations

import time
from pathlib import Path
from statistics import median

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from nanugpt import train
from nanugpt.bench.common import Result, single_process, sync
from nanugpt.checkpoint import load_checkpoint
from nanugpt.generate import build_from_checkpoint
from nanugpt.sampling import generate


def bench_generate(cfg: DictConfig) -> Result:
    bench, info = cfg.bench, single_process(cfg)
    device = info.device
    train.set_up_process(cfg, info)
    if bench.ckpt:
        model, _ = build_from_checkpoint(load_checkpoint(Path(bench.ckpt), map_location=device), device)
    else:
        train.set_vocab_size(cfg, instantiate(cfg.tokenizer).vocab_size)
        model = instantiate(cfg.model).to(device).eval()
    L = model.context_length
    variants: list[tuple[str, dict]] = [
        ("recompute, slide by one", {"use_cache": False, "window_keep": L}),
        ("recompute, half-window", {"use_cache": False}),
        ("KV cache, half-window", {"use_cache": True}),
    ]
    if bench.compile_decode:
        variants.append(
            ("KV cache + compiled decode", {"use_cache": True, "decode_step": torch.compile(model, dynamic=True)})
        )
    rows = []
    for batch in bench.batch_sizes:
        prompt = torch.randint(0, model.vocab_size, (batch, bench.prompt_tokens), device=device)
        baseline = None
        for name, kw in variants:

            def run(prompt: torch.Tensor = prompt, kw: dict = kw) -> torch.Tensor:
                return generate(model, prompt, bench.new_tokens, temperature=0, **kw)

            for _ in range(max(1, bench.warmup // 3)):
                out = run()
            times, cpu = [], []
            for _ in range(bench.repeats):
                sync(device)
                t, c = time.perf_counter(), time.process_time()
                out = run()
                sync(device)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            tps = batch * bench.new_tokens / median(times)
            baseline = baseline or tps
            rows.append(
                {
                    "batch": batch,
                    "path": name,
                    "new_tokens": bench.new_tokens,
                    "sec": median(times),
                    "cpu_sec": median(cpu),
                    "tokens_per_s": tps,
                    "x_vs_slide": tps / baseline,
                    "greedy_tokens": out[0, -8:].tolist(),
                }
            )
    return Result(device, rows)
