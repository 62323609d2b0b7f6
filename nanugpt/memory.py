"""How much memory one rank needs, before a run starts: parameters, gradients, optimizer state,
communication buffers and activations for the chosen model, batch, context, precision and
parallel mode. `train` logs it at start-up; `python -m nanugpt.bench memory` prints it beside the
measured peak.

Parameters, gradients and optimizer state are exact arithmetic on the model's tensors (a model
built on the meta device costs nothing), per rank:

- ddp: every rank holds everything; DDP's reducer adds one flat copy of the gradients (its
  buckets, `comm`).
- zero1: as ddp, but the optimizer state only of this rank's parameters, partitioned as
  ZeroRedundancyOptimizer does (largest first, each to the least-loaded rank).
- fsdp (FSDP2 `fully_shard` per block and the root): each parameter is cut along dim 0 into
  world-size chunks of ceil(rows / world size) rows; every rank stores a chunk padded to that
  size, and so are its gradients (views into the padded reduce-scatter output). The optimizer
  state is `zeros_like` of the unpadded local shard. `comm` is an estimate: the root's
  parameters and gradients unsharded through the step, and four blocks' worth of unsharded
  parameters and gradients in flight.

Activations are what autograd saves for the backward, counted rather than modelled: the model and
its loss run forward on fake tensors (torch's FakeTensorMode: the CPU kernels' real choices and
output shapes, no data, no compute) at the real batch and length under the run's autocast dtype,
while a saved-tensors hook adds up the distinct storages kept. That covers every block type and
SDPA path (flash and memory-efficient kernels keep O(T) per head, the math path the T x T
weights), the autocast copies of the weights, and the logits and their float32 log-softmax. To it
come the backward's first large tensors: cross-entropy's float32 gradients with respect to the
log-probabilities and to the logits, made while the log-probabilities are still saved. With activation
checkpointing each block keeps only its input, and one block's activations exist during its
recompute. On a GPU the kernels differ a little (the trace uses the CPU's); `bench memory`
compares with the measured peak. The total adds what is held between steps and the step's peak:
the larger of gradients and activations for one micro-step (the backward frees a block's
activations as it makes its gradients), both with gradient accumulation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.autograd.graph import saved_tensors_hooks

from nanugpt.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

PARALLEL_MODES = ("single", "ddp", "zero1", "fsdp")
MiB = 2**20


@dataclass
class MemoryEstimate:
    """Bytes on one rank; None where there is no formula (an optimizer not known here; activation
    checkpointing of a block that is not called as `block(x)`)."""

    parallel: str
    world_size: int
    rank: int
    params: int  # parameters, each once (a tied head is the embedding)
    buffers: int  # non-parameter tensors (rotary tables); never sharded
    grads: int
    optimizer: int | None
    comm: int  # ddp/zero1: the reducer's gradient buckets; fsdp: unsharded parameters and gradients in flight
    activations: int | None
    accumulating: bool = False  # gradient accumulation: the gradients live through the next forward

    @property
    def step_peak(self) -> int:
        """What a step adds over the memory held between steps: the backward frees each block's
        activations as it makes that block's gradients, so one micro-step peaks at the larger of
        the two; with accumulation the gradients of the earlier micro-steps stay."""
        act = self.activations or 0
        return self.grads + act if self.accumulating else max(self.grads, act)

    @property
    def total(self) -> int:
        return self.params + self.buffers + self.comm + (self.optimizer or 0) + self.step_peak

    def table(self) -> str:
        """A compact block for the start-up log."""
        comm = {"ddp": "DDP grad buckets", "zero1": "DDP grad buckets", "fsdp": "FSDP gathered (est.)"}
        rows = [
            ("parameters", self.params + self.buffers),
            ("gradients", self.grads),
            ("optimizer state", self.optimizer),
            *([(comm[self.parallel], self.comm)] if self.parallel in comm else []),
            ("activations", self.activations),
            ("peak total", self.total),
        ]
        lines = [f"memory per rank (rank {self.rank} of {self.world_size}, {self.parallel}):"]
        lines += [f"  {name:<22}{'n/a' if b is None else f'{b / MiB:>10,.1f} MiB'}" for name, b in rows]
        return "\n".join(lines)


def check_parallel(parallel: str) -> None:
    if parallel not in PARALLEL_MODES:
        raise ConfigError(
            f"The memory estimate has no parallel mode {parallel!r}; use one of {', '.join(PARALLEL_MODES)}."
        )


def unique_params(model: nn.Module) -> list[nn.Parameter]:
    return list(dict.fromkeys(model.parameters()))  # tied weights once, in the model's order


def fsdp_chunk_rows(rows: int, world_size: int) -> int:
    """The rows of each rank's padded dim-0 chunk (torch.chunk's size, as fully_shard cuts)."""
    return math.ceil(rows / world_size)


def shard_numel(p: torch.Tensor, parallel: str, world_size: int, rank: int, padded: bool) -> int:
    """Elements of `p` that `rank` stores: all of it, or under fsdp its dim-0 chunk (padded to the
    full chunk size, or the unpadded rows the local tensor shows)."""
    if parallel != "fsdp" or p.dim() == 0:
        return p.numel()
    rows = fsdp_chunk_rows(p.shape[0], world_size)
    if not padded:
        rows = max(0, min(rows, p.shape[0] - rank * rows))
    return rows * (p.numel() // p.shape[0] if p.shape[0] else 0)


def zero1_partition(optimizer: torch.optim.Optimizer, world_size: int) -> list[set[int]]:
    """The ids of each rank's parameters, as ZeroRedundancyOptimizer partitions them: per param
    group, largest first, each to the rank with the fewest elements so far (ties: the lowest)."""
    sizes, owned = [0] * world_size, [set() for _ in range(world_size)]
    for group in optimizer.param_groups:
        for p in sorted(group["params"], key=lambda t: t.numel(), reverse=True):
            rank = sizes.index(min(sizes))
            owned[rank].add(id(p))
            sizes[rank] += p.numel()
    return owned


def state_layout(optimizer: torch.optim.Optimizer) -> list[tuple[nn.Parameter, int, int]] | None:
    """(parameter, parameter-shaped state tensors, bytes of scalar state) for each parameter, as
    our optimizers allocate on their first step; None for an optimizer with no formula here."""
    from nanugpt.optim.muon import MuonWithAdamW

    if isinstance(optimizer, MuonWithAdamW):
        muon, adamw = state_layout(optimizer.muon), state_layout(optimizer.adamw)
        return None if muon is None or adamw is None else muon + adamw
    layout = []
    for group in optimizer.param_groups:
        if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            # exp_avg, exp_avg_sq (and max_exp_avg_sq), and `step`: a float32 scalar tensor
            states, scalar = 3 if group.get("amsgrad") else 2, 4
        elif isinstance(optimizer, torch.optim.Muon):
            states, scalar = 1, 0  # momentum_buffer; our `step` is a Python int
        elif isinstance(optimizer, torch.optim.SGD):
            states, scalar = (1 if group["momentum"] > 0 else 0), 0  # momentum_buffer (None without momentum)
        else:
            return None
        layout += [(p, states, scalar) for p in group["params"] if p.requires_grad]
    return layout


def optimizer_bytes(optimizer: torch.optim.Optimizer, parallel: str, world_size: int, rank: int) -> int | None:
    layout = state_layout(optimizer)
    if layout is None:
        return None
    owned = zero1_partition(optimizer, world_size)[rank] if parallel == "zero1" else None
    total = 0
    for p, states, scalar in layout:
        if owned is None or id(p) in owned:
            total += states * shard_numel(p, parallel, world_size, rank, padded=False) * p.element_size() + scalar
    return total


def saved_bytes(fn: Callable[[], Any], exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for the backward while `fn()` runs, leaving
    out those of `exclude` (the parameters and buffers themselves)."""
    skip = {id(t.untyped_storage()) for t in exclude}
    seen: dict[int, Any] = {}  # id -> storage, held so that an id is not reused while counting

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if id(storage) not in skip:
            seen[id(storage)] = storage
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storage.nbytes() for storage in seen.values())


def traced_saved_bytes(
    model: nn.Module, loss_fn: Any, batch: int, length: int, amp_dtype: torch.dtype, checkpointing: bool
) -> int | None:
    """What autograd saves in the forward of `model` (on the meta device) and its loss on
    (batch, length) tokens, under CPU autocast to `amp_dtype`, traced on fake tensors: every
    kernel's real choice and output shapes, no data and no compute. With `checkpointing` each
    block keeps only its float32 input, and one block's activations exist during its recompute
    (None if a block cannot be called as `block(x)`, as the transformers-built layers)."""
    meta_model = copy.deepcopy(model)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = meta_model.to_empty(device="cpu").train()
        exclude = [p for _, p in fake.named_parameters(remove_duplicate=False)] + list(fake.buffers())
        tokens = torch.zeros(batch, length, dtype=torch.long)
        with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            whole = saved_bytes(lambda: loss_fn(fake.logits(fake(tokens)), tokens), exclude)
            if not checkpointing:
                return whole
            x = torch.zeros(batch, length, model.n_embd, requires_grad=True)
            try:
                block = saved_bytes(lambda: fake.blocks[0](x), exclude)
            except TypeError:
                return None
    n_layer = len(model.blocks)
    return whole - n_layer * block + n_layer * batch * length * model.n_embd * 4 + block


def logits_grad_bytes(model: nn.Module, batch: int, length: int) -> int:
    """The backward's first large tensors, alive beside the saved activations: cross-entropy's
    float32 gradients with respect to the log-probabilities and to the logits (padded vocab rows
    included), made while the log-probabilities are still saved."""
    vocab = getattr(getattr(model, "lm_head", None), "out_features", model.vocab_size)
    return 2 * batch * length * vocab * 4


def fsdp_gathered_bytes(model: nn.Module, world_size: int) -> int:
    """Unsharded (padded) parameters and gradients in flight: the root group's (embeddings, head,
    final norm: not resharded between forward and backward) through the step, plus four of the
    largest block's (the block running, the one prefetched, and in the backward a block's
    unsharded gradients and its reduce-scatter input)."""

    def padded(params: list[torch.Tensor]) -> int:
        return sum(
            fsdp_chunk_rows(p.shape[0], world_size) * world_size * (p.numel() // p.shape[0]) * p.element_size()
            for p in params
            if p.dim() > 0 and p.shape[0]
        )

    in_blocks = {id(p) for p in model.blocks.parameters()}
    root = padded([p for p in unique_params(model) if id(p) not in in_blocks])
    largest_block = max(padded(list(dict.fromkeys(b.parameters()))) for b in model.blocks)
    return 2 * root + 4 * largest_block


def estimate_memory(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Any,
    parallel: str,
    world_size: int,
    batch: int,
    length: int,
    amp_dtype: torch.dtype,
    checkpointing: bool = False,
    rank: int = 0,
    accumulating: bool = False,
) -> MemoryEstimate:
    """Bytes on `rank` for `model` (built on the meta device) trained by `optimizer` (the
    unsharded one, built over the model's parameters) on `loss_fn` with `parallel` over `world_size` ranks,
    `batch` sequences of `length` tokens per forward, autocast to `amp_dtype`. Under fsdp rank 0
    holds the most (its chunks are full); under zero1 the ranks' optimizer shares differ a little."""
    check_parallel(parallel)
    params = unique_params(model)
    trained = [p for p in params if p.requires_grad]

    def nbytes(ps: list[torch.Tensor]) -> int:
        return sum(shard_numel(p, parallel, world_size, rank, padded=True) * p.element_size() for p in ps)

    grads = nbytes(trained)
    saved = traced_saved_bytes(model, loss_fn, batch, length, amp_dtype, checkpointing)
    comm = {"ddp": grads, "zero1": grads, "fsdp": fsdp_gathered_bytes(model, world_size), "single": 0}[parallel]
    return MemoryEstimate(
        parallel=parallel,
        world_size=world_size,
        rank=rank,
        params=nbytes(params),
        buffers=sum(b.numel() * b.element_size() for b in model.buffers()),
        grads=grads,
        optimizer=optimizer_bytes(optimizer, parallel, world_size, rank),
        comm=comm if world_size > 1 or parallel == "fsdp" else 0,
        activations=None if saved is None else saved + logits_grad_bytes(model, batch, length),
        accumulating=accumulating,
    )


def estimate_for_config(cfg: DictConfig, parallel: str, world_size: int, amp_dtype: torch.dtype) -> MemoryEstimate:
    """`estimate_memory` for a training config (model.vocab_size set): the model and its
    optimizer built on the meta device, `training.device_batch_size` x `model.context_length`,
    `training.activation_checkpointing`."""
    from hydra.utils import instantiate

    from nanugpt.train import build_optimizer

    tcfg = cfg.training
    with torch.device("meta"):
        model = instantiate(cfg.model)
        optimizer = build_optimizer(cfg, model)
    return estimate_memory(
        model,
        optimizer,
        instantiate(cfg.loss),
        parallel,
        world_size,
        tcfg.device_batch_size,
        cfg.model.context_length,
        amp_dtype,
        checkpointing=tcfg.activation_checkpointing,
        accumulating=tcfg.global_batch_size > tcfg.device_batch_size * world_size,
    )
