"""`python -m nanugpt.bench loader`: the CPU side of the training loader alone, in tokens/s.

Random windows of a multi-GB memmapped shard set gathered into (pinned, where CUDA is there)
host memory by the trainer's own `RandomWindowBatches`, against the ~0.5M tokens/s that one
H100 trains GPT-2 124M at (45% MFU): the loader should keep at least 10x ahead.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
import torch
from omegaconf import DictConfig

from nanugpt.bench.common import Result
from nanugpt.data.contract import BatchSpec
from nanugpt.data.loader import RandomWindowBatches, TokenWindows
from nanugpt.data.shards import ShardFiles, shard_header

H100_GPT2_TOKENS_PER_S = 0.5e6  # GPT-2 124M at 45% MFU on one H100 (docs/benchmarks.md)
SHARD_TOKENS = 100_000_000


def write_random_shards(where: Path, gigabytes: float, vocab_size: int = 50257) -> None:
    """uint16 llm.c shards of random ids, `gigabytes` in all, plus one val shard."""
    rng = np.random.default_rng(0)
    total = int(gigabytes * 1e9 / 2)
    for i, start in enumerate(range(0, total, SHARD_TOKENS)):
        tokens = rng.integers(0, vocab_size, min(SHARD_TOKENS, total - start), dtype=np.uint16)
        with open(where / f"bench_train_{i:06d}.bin", "wb") as f:
            f.write(shard_header(np.dtype(np.uint16), len(tokens)))
            f.write(tokens.tobytes())
    with open(where / "bench_val_000000.bin", "wb") as f:
        f.write(shard_header(np.dtype(np.uint16), 10_000))
        f.write(rng.integers(0, vocab_size, 10_000, dtype=np.uint16).tobytes())


def bench_loader(cfg: DictConfig) -> Result:
    bench = cfg.bench
    context, batch = cfg.model.context_length, cfg.training.device_batch_size
    pin = torch.cuda.is_available()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nanugpt-bench-loader-") as tmp:
        write_random_shards(Path(tmp), bench.loader_gb)
        splits = ShardFiles(tmp, 50257).load().splits
        windows = TokenWindows(splits["train"], context, vocab_size=50257)
        spec = BatchSpec(context, batch * bench.steps, batch)  # one step: bench.steps micro-batches
        batches = RandomWindowBatches(windows, spec, prefetch=False)
        batches.pin = pin  # the host side of a CUDA run: gather, then pin
        batches._gather_next()  # warm-up
        times = []
        for _ in range(bench.repeats):
            start = time.perf_counter()
            batches._gather_next()
            times.append(time.perf_counter() - start)
        tokens = spec.global_batch_size * context
        tokens_per_s = tokens / median(times)
        rows.append(
            {
                "shards": len(splits["train"]),
                "gb": bench.loader_gb,
                "batch": f"{bench.steps}x{batch}x{context}",
                "pinned": pin,
                "tokens_per_s": tokens_per_s,
                "x_h100_gpt2": tokens_per_s / H100_GPT2_TOKENS_PER_S,
            }
        )
    return Result(torch.device("cpu"), rows)
