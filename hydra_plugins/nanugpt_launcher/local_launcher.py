"""`hydra/launcher=local`: hydra-submitit-launcher's local launcher, with a GPU slot per concurrent job.

The plugin's own LocalLauncher hands every job of a sweep the same CUDA_VISIBLE_DEVICES (GPUs
0..gpus_per_node-1), so on an 8-GPU machine all jobs would train on GPU 0. This one splits the
visible GPUs into slots of `gpus_per_node` (null: `tasks_per_node`, one GPU per DDP rank), starts
a job whenever a slot is free, and sets that job's CUDA_VISIBLE_DEVICES to its slot. Without GPUs
every job starts at once with none, as before. Everything else (submitit's executor, the job
function, requeueing) is the plugin's.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as SubmititLocalLauncher

from nanugpt.errors import ConfigError

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a full machine is checked for a finished job


def visible_gpus(declared: Sequence[int] | None) -> list[int]:
    """The GPUs a sweep may use: `hydra.launcher.visible_gpus` when set, else this process's
    CUDA_VISIBLE_DEVICES (so a restriction from outside holds), else every GPU torch sees."""
    if declared is not None:
        return [int(g) for g in declared]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        import torch

        return list(range(torch.cuda.device_count()))
    ids = [g.strip() for g in env.split(",") if g.strip()]
    if not all(g.isdigit() for g in ids):
        raise ConfigError(
            f"CUDA_VISIBLE_DEVICES={env} names GPUs by UUID; hydra/launcher=local hands out GPU indices. Pass "
            "them as hydra.launcher.visible_gpus=[0,1,...] (indices as nvidia-smi lists them)."
        )
    return [int(g) for g in ids]


def gpu_slots(gpus: list[int], per_job: int) -> list[list[int]] | None:
    """The GPU sets concurrent jobs get, or None when jobs get no GPU (and need not wait for one)."""
    if per_job == 0:
        return None
    if per_job > len(gpus):
        raise ConfigError(
            f"hydra.launcher.gpus_per_node={per_job} GPUs per job, but {len(gpus)} are visible ({gpus}). Lower "
            "gpus_per_node (or tasks_per_node), or set hydra.launcher.gpus_per_node=0 to run the jobs on CPUs."
        )
    return [gpus[i * per_job : (i + 1) * per_job] for i in range(len(gpus) // per_job)]


class LocalLauncher(SubmititLocalLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        params = {k: v for k, v in self.params.items() if v is not None}
        folder = params.pop("submitit_folder")
        gpus = visible_gpus(params.pop("visible_gpus", None))
        per_job = params.pop("gpus_per_node", params.get("tasks_per_node", 1) if gpus else 0)
        slots = gpu_slots(gpus, per_job)
        # LocalExecutor rather than the plugin's AutoExecutor: only it takes visible_gpus.
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(**params)

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:  # as the plugin does
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit 'local' sweep output dir : {sweep_dir}")
        pending = [
            (
                initial_job_idx + i,
                (list(o), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}"),
            )
            for i, o in enumerate(job_overrides)
        ]
        # Start jobs while slots are free; when none is, wait for a running job to end and take its slot.
        jobs: dict[int, Any] = {}
        free = list(slots) if slots is not None else None
        running: dict[int, list[int]] = {}  # job index -> its GPUs
        while pending or running:
            for idx, slot in list(running.items()):
                if jobs[idx].done():
                    free.append(slot)
                    del running[idx]
            while pending and (free is None or free):
                idx, args = pending.pop(0)
                slot = free.pop(0) if free is not None else []
                executor.update_parameters(gpus_per_node=len(slot), visible_gpus=tuple(slot))
                log.info(f"\t#{idx} : {' '.join(filter_overrides(args[0]))} (GPUs: {slot or 'none'})")
                jobs[idx] = executor.submit(self, *args, Singleton.get_state())
                if free is not None:
                    running[idx] = slot
            if running:
                time.sleep(POLL_S)
        return [jobs[idx].results()[0] for idx in sorted(jobs)]
