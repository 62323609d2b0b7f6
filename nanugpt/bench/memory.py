"""`python -m nanugpt.bench memory`: the memory estimate (`nanugpt.memory`) against the measured
peak of the trainer's own steps in this one process, and the estimate for each parallel mode on
`bench.world_size` ranks.

Measured on a GPU: `torch.cuda.memory_allocated` / `max_memory_allocated`. On a CPU: the
process's resident memory (Linux /proc/self/status), with glibc's mmap threshold pinned low so a
freed tensor's pages go back to the system at once, and the high-water mark (VmHWM) reset
before the timed steps (/proc/self/clear_refs). The first step (which creates the optimizer
state) is a warm-up; the figures are:

- held between steps: model parameters and buffers plus optimizer state (gradients are freed);
- step peak: what a step adds at its peak over that (activations or gradients, temporaries);
- peak total: both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from nanugpt import train
from nanugpt.bench.common import Result, single_process, synthetic_data
from nanugpt.data.build import build_data
from nanugpt.memory import MiB, estimate_for_config

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def pin_mmap_threshold() -> None:
    """Serve every allocation over 64 KiB with its own mmap, returned on free: otherwise glibc
    raises the threshold as big blocks are freed and keeps later ones in its heap."""
    if sys.platform.startswith("linux") and (libc := ctypes.util.find_library("c")):
        ctypes.CDLL(libc).mallopt(M_MMAP_THRESHOLD, 64 * 1024)


class MemoryMeter:
    """Current and peak bytes of the device's memory: the CUDA allocator's, or this process's RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type != "cuda" and not Path("/proc/self/clear_refs").exists():
            raise SystemExit("bench memory measures CPU memory through /proc (Linux); run it on Linux or a GPU.")

    def _status_kb(self, key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {key} in /proc/self/status")

    def current(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        return self._status_kb("VmRSS")

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return self._status_kb("VmHWM")


def bench_memory(cfg: DictConfig) -> Result:
    pin_mmap_threshold()
    info = single_process(cfg)
    spec, amp_dtype = train.set_up_process(cfg, info)
    data = synthetic_data(cfg, spec) if cfg.bench.synthetic else build_data(cfg, spec)
    meter = MemoryMeter(info.device)
    start = meter.current()  # after the data: only the model, its optimizer and the steps count
    run = train.build_run(cfg, info, spec, amp_dtype, data)
    estimate = estimate_for_config(cfg, "single", 1, amp_dtype)
    for _ in range(max(1, cfg.bench.warmup)):  # the first step creates the optimizer state
        train.train_step(run, info, cfg.training.grad_clip)
    held = meter.current() - start
    meter.reset_peak()
    for _ in range(cfg.bench.steps):
        train.train_step(run, info, cfg.training.grad_clip)
    peak = meter.peak() - start

    def row(what: str, estimated: int | None, measured: int | None) -> dict:
        return {
            "what": what,
            "estimate_mib": None if estimated is None else estimated / MiB,
            "measured_mib": None if measured is None else measured / MiB,
            "measured_over_estimate": measured / estimated if estimated and measured is not None else None,
        }

    held_est = estimate.params + estimate.buffers + (estimate.optimizer or 0)
    rows = [
        row("held between steps (params + optimizer state)", held_est, held),
        row("step peak over that (activations or grads)", estimate.step_peak, peak - held),
        row("  of which activations (est.)", estimate.activations, None),
        row("  of which gradients", estimate.grads, None),
        row("peak total", estimate.total, peak),
    ]
    world = cfg.bench.world_size
    for mode in ("ddp", "zero1", "fsdp"):
        other = estimate_for_config(cfg, mode, world, amp_dtype)
        rows.append(row(f"{mode} on {world} ranks, per rank", other.total, None))
    batch = f"batch {cfg.training.device_batch_size} x {cfg.model.context_length}, {str(amp_dtype).split('.')[-1]}"
    return Result(info.device, rows, title=f"{info.device} | {batch} | {run.model.num_params():,} params")
