"""What the benchmarks share: building the trainer's run in one process, timing, the table and
the JSON record."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nanugpt import dist, train
from nanugpt.data.build import token_stream_data
from nanugpt.data.contract import BatchSpec, Data, TokenSplits


class Result(NamedTuple):
    """What a benchmark hands back for the table and the JSON record."""

    device: torch.device
    rows: list[dict[str, Any]]
    title: str | None = None  # after "nanugpt bench <what> | torch <version> | "; None: device, threads, load


def single_process(cfg: DictConfig) -> dist.DistInfo:
    return dist.DistInfo(rank=0, local_rank=0, world_size=1, device=dist.resolve_device(cfg.training.device, 0))


def build_run(cfg: DictConfig) -> tuple[train.Run, dist.DistInfo]:
    """The trainer's own set-up and build phases in this one process, on the configured data or,
    with bench.synthetic=true, on random tokens."""
    info = single_process(cfg)
    spec, amp_dtype = train.set_up_process(cfg, info)
    data = synthetic_data(cfg, spec) if cfg.bench.synthetic else None
    return train.build_run(cfg, info, spec, amp_dtype, data), info


def synthetic_data(cfg: DictConfig, spec: BatchSpec) -> Data:
    """Uniformly random tokens over the model's (or else the tokenizer's) vocab, as a token
    stream of the trainer's data contract: no corpus to prepare, where the figures do not depend
    on the text."""
    vocab = cfg.model.get("vocab_size") or instantiate(cfg.tokenizer).vocab_size
    rng = np.random.default_rng(0)
    n = max(1_000_000, 4 * spec.global_batch_size * (spec.context_length + 1))
    splits = {
        "train": [rng.integers(0, vocab, n, dtype=np.int64).astype(np.uint32)],
        "val": [rng.integers(0, vocab, n // 10, dtype=np.int64).astype(np.uint32)],
    }
    return token_stream_data(TokenSplits(splits, vocab, {"source": "synthetic"}), spec, cfg.eval.iters)


def training_overrides() -> list[str]:
    """This command line's overrides but the bench.* ones: what speedrun and gpu pass on to the
    processes they start."""
    return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith("bench.")]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    rows = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows]  # lists stay in the JSON
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=False)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)))


def report(what: str, cfg: DictConfig, command: str, result: Result) -> Path:
    """Print the result's table and write its JSON record (bench.out, default bench-<what>.json)."""
    context = result.title or (
        f"{result.device} | threads {torch.get_num_threads()} | load avg {os.getloadavg()[0]:.1f}"
    )
    print_table(f"nanugpt bench {what} | torch {torch.__version__} | {context}", result.rows)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # Enum choices as their plain strings
    config.pop("bench")  # recorded as bench_options
    out = Path(cfg.bench.out or f"bench-{what}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "bench": what,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "machine": machine_info(result.device),
        "bench_options": OmegaConf.to_container(cfg.bench, resolve=True),
        "config": config,
        "results": result.rows,
    }
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"\nwrote {out}")
    return out
