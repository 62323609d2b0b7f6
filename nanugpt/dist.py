"""One code path for every launcher: plain `python`, `torchrun`, or a Slurm task started by submitit."""

from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from nanugpt.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger("nanugpt.dist")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _submitit_env() -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) inside a Slurm job that submitit started, else None."""
    if "SUBMITIT_EXECUTOR" not in os.environ and "SUBMITIT_FOLDER" not in os.environ:
        return None
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return None
    if env.num_tasks > 1:
        # Rank 0's host is the rendezvous; the port is derived from the job's own id
        # (SLURM_JOB_ID differs per array task, unlike submitit's "<array id>_<index>"; local
        # jobs use their pid), so that the jobs of one sweep sharing a node do not collide.
        job_id = os.environ.get("SLURM_JOB_ID") or "".join(c for c in str(env.job_id) if c.isdigit()) or "0"
        os.environ.setdefault("MASTER_ADDR", env.hostnames[0])
        os.environ.setdefault("MASTER_PORT", str(20000 + int(job_id) % 20000))
    return env.global_rank, env.local_rank, env.num_tasks


def check_device(key: str, name: str) -> None:
    """`key`=cuda where torch sees no GPU: one paragraph saying what torch sees and the fix."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{key}=cuda, but torch sees no CUDA device on this machine (torch {torch.__version__}, "
            f"{'built for CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU-only build'}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Pass {key}=auto (or cpu) "
            "to run on the CPU, or run where a GPU is visible."
        )


def resolve_device(name: str, local_rank: int, key: str = "training.device") -> torch.device:
    check_device(key, name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto", group_of_one: bool = False) -> DistInfo:
    """Join the process group the launcher set up. `group_of_one`: a single process gets a
    one-rank group too (FSDP shards over a device mesh even on one device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun (or any launcher that sets the env)
        rank, local_rank, world_size = (
            int(os.environ["RANK"]),
            int(os.environ["LOCAL_RANK"]),
            int(os.environ["WORLD_SIZE"]),
        )
    else:
        rank, local_rank, world_size = _submitit_env() or (0, 0, 1)
    torch_device = resolve_device(device, local_rank)
    if (world_size > 1 or group_of_one) and not dist.is_initialized():
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        # One process has no launcher's rendezvous: an in-process store serves its group of one.
        alone = {"store": dist.HashStore()} if world_size == 1 else {}
        dist.init_process_group(
            backend="nccl" if torch_device.type == "cuda" else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=10),
            **alone,
        )
    return DistInfo(rank, local_rank, world_size, torch_device)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's `obj` on every rank (picklable objects)."""
    if not info.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(failed: bool = False) -> None:
    """Leave the process group: together after a run that finished, at once after an error.

    After an error on this rank, do not wait for the others in a collective goodbye:
    destroy_process_group drains pending work (NCCL) that peers blocked in an all-reduce this rank
    never joins will not complete. Abort the group instead (the ProcessGroup's own, non-collective
    abort), so this process exits at once and its peers' pending collectives fail with a connection
    error rather than hang until the timeout.

    After a run that finished, every rank first waits in a barrier until all have finished their
    last collective and rank 0 its last checkpoint write (the wait a mid-run checkpoint already
    costs); then it leaves the group. Without the barrier a rank done first tore down and exited
    at once, and could die at exit in std::terminate ("terminate called without an active
    exception", SIGABRT) though training was done: destroy_process_group does not stop gloo's
    worker threads while references taken when the run was built keep the group alive (they still
    run at exit, torch 2.13), and a thread still holding the last collective's tensors (ZeRO-1's
    state gather, the RNG gather) releases them, which takes the GIL, during interpreter shutdown
    (pytorch/pytorch#179291). After the barrier, the last work those threads held is the
    barrier's own, which holds no Python tensor. A peer that fails at that point aborts the
    group, and the barrier fails at once.
    """
    if not dist.is_initialized():
        return
    if failed:
        _abort()
        return
    try:
        dist.barrier()
    except RuntimeError as err:  # DistBackendError: a peer aborted the group
        _abort()
        raise RuntimeError(
            f"This rank finished training, but another rank failed before the end ({err}); its error is above."
        ) from None
    dist.destroy_process_group()


def _abort() -> None:
    try:
        dist.group.WORLD.abort()
    except Exception:  # a backend without abort: exiting closes the sockets anyway
        pass


def sum_over_ranks(info: DistInfo, **values: torch.Tensor) -> dict[str, float]:
    """Scalars summed over all ranks in one all-reduce, returned by name as Python floats (one
    host sync for all of them)."""
    totals = all_reduce_sum(torch.stack([v.double() for v in values.values()]), info)
    return dict(zip(values, totals.tolist(), strict=True))


def is_dtensor(tensor: object) -> bool:
    """Whether `tensor` is a DTensor (an FSDP parameter shard, its gradient or optimizer state).
    torch.distributed.tensor takes 1.7 s to import, and no DTensor exists before it is imported."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of `tensors` together, whole over ranks: under FSDP they are DTensor shards,
    whose norm get_total_norm returns as a partial value that full_tensor() completes (as
    torchtitan's clip does). Every rank must call it."""
    norm = torch.nn.utils.get_total_norm(tensors)
    return norm.full_tensor() if is_dtensor(norm) else norm
