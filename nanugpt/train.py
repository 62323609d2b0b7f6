"""Train a GPT: `python -m nanugpt.train [overrides]`.

`train` checks every value, joins the process group, checks the machine and holds the run dir;
`_train` then tells the run in phases, each a function below it: set up the process; build the
run (every plugin checked before any data is prepared, then data, model, the data-parallel wrap
with its optimizer, schedule: one `build_*` each); resume; the loop (one `train_step`, its
metrics row, evaluate, checkpoint, stop on a signal); finish, saying how to sample from what
was trained.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:  # torch.distributed.optim costs 1.2 s of import time; only ZeRO-1 runs need it
    from torch.distributed.optim import ZeroRedundancyOptimizer

from nanugpt import dist
from nanugpt.checkpoint import (
    all_rng_states,
    find_resume_checkpoint,
    load_model_state,
    load_sharded,
    pointer,
    read_log,
    restore_rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
)
from nanugpt.config import check_train_environment, register_configs, validate_train
from nanugpt.data.build import build_data
from nanugpt.data.contract import BatchSpec, Data
from nanugpt.data.loader import RepeatedBatches
from nanugpt.errors import CheckpointError, ConfigError, NonFiniteLossError, report_user_errors
from nanugpt.memory import estimate_for_config
from nanugpt.metrics import format_duration
from nanugpt.models.with_loss import ModelWithLoss
from nanugpt.observe import RunObserver, peak_flops, peak_memory, weight_norm
from nanugpt.optim import state_bytes
from nanugpt.preemption import StopSignal
from nanugpt.resume import log_config_changes, restore_optimizer_and_schedule, restore_scaler
from nanugpt.rundir import RunDirInUseError, hold_run_dir, move_file_logs
from nanugpt.utils import CONF_DIR, seed_everything

log = logging.getLogger("nanugpt.train")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"training.dtype={name} is not one of auto, {', '.join(DTYPES)}; pick one of those.")
    if name == "float16" and device.type != "cuda":
        raise ConfigError(
            "training.dtype=float16 needs a CUDA device (float16 autocast with a grad scaler); on "
            f"{device.type} use training.dtype=float32 or bfloat16."
        )
    return DTYPES[name]


def configure_matmul_precision(device: torch.device) -> None:
    """TF32 for the float32 matmuls and convolutions autocast leaves (optimizer maths, fp32 runs)
    on CUDA: ~8x the fp32 tensor-core rate for a 10-bit mantissa, which training tolerates."""
    if device.type != "cuda":
        return
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, amp_dtype: torch.dtype) -> torch.autocast:
    """The forward passes' mixed-precision context (a no-op for float32)."""
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)


# ---------------------------------------------------------------- the run


def train(cfg: DictConfig, run_dir: Path) -> float:
    validate_train(cfg)  # every value, before any work
    info = dist.init_distributed(cfg.training.device, group_of_one=cfg.training.parallel == "fsdp")
    stop = StopSignal()  # SIGTERM/SIGUSR2/SIGINT: checkpoint at the end of the step, then exit
    failed = True
    try:
        check_train_environment(cfg, run_dir)  # the device, data dir and run dir, before any work
        run_dir = use_master_run_dir(run_dir, info)
        with hold_run_dir(run_dir, info):  # refused while another process trains in this dir
            best = _train(cfg, run_dir, info, stop)
        failed = False
        return best
    except BaseException as e:
        # A preempted run is not a failed one; a refused one never started (log.txt is the other run's).
        if not (isinstance(e, SystemExit) and stop.requested) and not isinstance(e, RunDirInUseError):
            log.error("Run failed: %s: %s", type(e).__name__, e)  # the line `nanugpt.report` reads as failed
        raise
    finally:
        stop.restore()
        dist.shutdown(failed=failed)  # an error on one rank must not leave the others hanging


def use_master_run_dir(run_dir: Path, info: dist.DistInfo) -> Path:
    """Under torchrun every rank composes its own config, and `${now:...}` in hydra.run.dir
    resolves to a different microsecond in each: all ranks use rank 0's run dir (for resume=auto
    too), and a rank's own dir, if different, is removed when Hydra's files are all it holds."""
    master_dir = Path(dist.broadcast_object(str(run_dir), info))
    if master_dir != run_dir and {p.name for p in run_dir.iterdir()} <= {".hydra", "log.txt"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        move_file_logs(run_dir, master_dir)  # this rank's warnings go to rank 0's log.txt
    return master_dir


def _train(cfg: DictConfig, run_dir: Path, info: dist.DistInfo, stop: StopSignal) -> float:
    tcfg = cfg.training
    # ---- set up the process, build the run, resume it
    spec, amp_dtype = set_up_process(cfg, info)
    run = build_run(cfg, info, spec, amp_dtype)
    start_step, val_losses = resume(cfg, run_dir, run, info)
    observer = build_observer(cfg, run_dir, run, info, start_step)
    ckpt_dir, tokens_per_step = run_dir / "checkpoints", tcfg.global_batch_size * cfg.model.context_length
    clock, preempted = StepClock(), False
    ckpt_clock = CheckpointClock(cfg.eval.checkpoint_every_minutes, cfg.eval.checkpoint_not_before_step)
    checkpointing, time_phases_every = cfg.eval.checkpoint != "none", cfg.logging.time_phases_every

    # ---- the loop; `step` counts completed optimizer steps
    for step in range(start_step + 1, tcfg.max_steps + 1):
        step_start = time.perf_counter()
        time_phases = bool(time_phases_every) and step % time_phases_every == 0
        # Ranks' clocks differ and a save is collective: rank 0's clock decides, its vote rides
        # the step's all-reduce as the stop flag does, and every rank saves at the end of the step.
        checkpoint_due = info.is_master and ckpt_clock.due(step)
        stats = train_step(run, info, tcfg.grad_clip, stop.requested, checkpoint_due, time_phases)
        preempted = stats.stop  # a rank got SIGTERM/SIGUSR2/SIGINT: all finish this step, checkpoint, stop
        check_finite(stats, step, tcfg.skip_nonfinite, ckpt_dir)
        if step == start_step + 1:  # optimizers create their state on the first step
            log_optimizer_state(run)
        step_s, eta_s = clock.lap(step_start, steps_left=tcfg.max_steps - step)
        row = train_row(stats, step, step_s, eta_s, tokens_per_step, time_phases)
        row.update(
            {"run/elapsed_hr": ckpt_clock.elapsed_s() / 3600, "run/checkpoint_age_hr": ckpt_clock.age_s() / 3600}
        )

        # evaluate every eval.every steps, at the last step, and before stopping on a signal
        is_last = step == tcfg.max_steps
        evaluating = step % cfg.eval.every == 0 or is_last or preempted
        if evaluating or step % cfg.logging.every == 0:  # the console's steps; every rank (FSDP: collective)
            row.update({"train/weight_norm": weight_norm(run.model), **peak_memory(info.device)})
        if evaluating:
            row.update(validate(run, info, stats.loss, step, ckpt_dir))
            is_best = val_losses.record(row["val/loss"], step)
            row.update({"run/best_val_loss": val_losses.best, "run/best_val_step": val_losses.best_step})
        if is_last and run.data.test is not None:  # once, in the final row: eval.test_iters batches
            row.update(evaluate(run.net, run.data.test, run.autocast, info, "test"))

        # The row before the checkpoint: a run killed in between redoes this step and rewrites
        # its row; the other order would resume after a step whose row was never written.
        observer.log_step(row, eta_s)  # metrics.jsonl, W&B, progress bar, console line
        if checkpointing and (evaluating or stats.checkpoint_due):
            # a time-based save between evals has no val loss and never becomes best.pt
            val_loss, best = (val_losses.last, is_best) if evaluating else (None, False)
            save_state(cfg, run, info, ckpt_dir, step, val_losses, val_loss, best)
            ckpt_clock.saved()
        if preempted:
            if info.is_master:  # the signal's own message: preempted, or Ctrl-C
                log.warning(stop.message(step, run_dir, checkpointed=checkpointing))
            break

    # ---- finish
    observer.close()
    if preempted:
        stop.forward()  # on to submitit's handler (requeue on a time limit) or the default action
    if info.is_master:
        finish_message(run_dir, ckpt_dir, val_losses, clock.loop_start)
    return val_losses.best


# ---------------------------------------------------------------- set up the process


def set_up_process(cfg: DictConfig, info: dist.DistInfo) -> tuple[BatchSpec, torch.dtype]:
    """Logging, threads, matmul precision and the seed; checks the batch split and dtype before
    any work. Returns how the global batch is cut up and the autocast dtype."""
    tcfg = cfg.training
    if not info.is_master:  # only rank 0 talks; warnings and errors of any rank still show
        root = logging.getLogger()
        for logger_or_handler in (root, *root.handlers):  # handlers too: other loggers propagate to them
            logger_or_handler.setLevel(logging.WARNING)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    # An indivisible global batch fails here, before anything is loaded.
    spec = BatchSpec.from_config(cfg, info.rank, info.world_size, info.device)
    amp_dtype = autocast_dtype(tcfg.dtype, info.device)
    configure_matmul_precision(info.device)
    seed_everything(tcfg.seed)
    # debug=anomaly: the first NaN in backward raises, naming its op and the forward line (slow);
    # set either way, so a run after an anomaly run in the same process is not slowed down.
    torch.autograd.set_detect_anomaly(tcfg.detect_anomaly)
    return spec, amp_dtype


# ---------------------------------------------------------------- build the run


def set_vocab_size(cfg: DictConfig, data_vocab_size: int) -> None:
    """The model's vocab comes from the prepared data unless the config pins a (larger) one."""
    if cfg.model.get("vocab_size") is None:
        cfg.model.vocab_size = data_vocab_size
    elif cfg.model.vocab_size < data_vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the data's vocab of "
            f"{data_vocab_size} ({cfg.tokenizer.get('_target_')}); drop the override (model.vocab_size=null) "
            "to take it from the data."
        )


STAND_IN_VOCAB = 256  # the model's vocab in the argument check below, until the data says what it is


def check_model_optimizer_schedule(cfg: DictConfig) -> None:
    """Build the model, its optimizer and schedule on the meta device (no memory, no init work,
    no random numbers drawn) and drop them, so a bad argument of any of them fails before data is
    prepared. A stand-in takes the place of a model.vocab_size that the data will fill in."""
    vocab = {"vocab_size": STAND_IN_VOCAB} if cfg.model.get("vocab_size") is None else {}
    with torch.device("meta"):
        build_scheduler(cfg, build_optimizer(cfg, instantiate(cfg.model, **vocab)))


def build_model(cfg: DictConfig, loss_fn: Any, device: torch.device) -> tuple[Any, ModelWithLoss]:
    """The model, and the model with its loss: the module the loop calls (so compile fuses both)."""
    model = instantiate(cfg.model)
    return model, ModelWithLoss(model, loss_fn).to(device)


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    return instantiate(cfg.optim)(model)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> Any:
    return instantiate(cfg.sched)(optimizer)


def build_scaler(cfg: DictConfig, device: torch.device, amp_dtype: torch.dtype) -> Any:
    return instantiate(cfg.scaler)(device.type, float16=amp_dtype == torch.float16)


def parallel_mode(cfg: DictConfig, info: dist.DistInfo) -> str:
    """How the run is spread over ranks: training.parallel (ddp, zero1: DDP with the optimizer
    state sharded, fsdp), or "single" for one process that is not FSDP (no wrapper at all)."""
    if cfg.training.parallel != "fsdp" and not info.is_distributed:
        return "single"
    return str(cfg.training.parallel)


def parallelize(
    cfg: DictConfig,
    model: torch.nn.Module,
    net: torch.nn.Module,
    info: dist.DistInfo,
    mode: str,
    amp_dtype: torch.dtype,
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The wrap phase, the one place that applies the parallel mode: activation checkpointing per
    block; then for FSDP per-block compile and `fully_shard` (see `shard_model`), otherwise
    compile (fuses model + loss) and DDP; then the optimizer, over the parameters as wrapped
    (FSDP's are DTensor shards), its state sharded for ZeRO-1."""
    if cfg.training.activation_checkpointing:
        checkpoint_activations(model)
    if cfg.training.compile:
        check_compile_works(info.device)
    if mode == "fsdp":
        shard_model(model, net, amp_dtype, cfg.training.compile)
    elif cfg.training.compile:
        net = torch.compile(net)
    if mode in ("ddp", "zero1"):
        net = DistributedDataParallel(net, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    optimizer = build_optimizer(cfg, model)
    if mode == "zero1":
        optimizer = shard_optimizer_state(optimizer)
    return net, optimizer


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Activation checkpointing: each block keeps only its input and recomputes the rest in
    backward (torch.utils.checkpoint, non-reentrant; the RNG state is replayed, so dropout masks
    match). The block's forward is replaced in place, so parameter names and checkpoints stay as
    they are; FSDP's hooks, outside the checkpointed forward, gather the block's shards for the
    recomputation as they do for its backward."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def shard_model(model: torch.nn.Module, net: torch.nn.Module, amp_dtype: torch.dtype, compile: bool) -> None:
    """FSDP2, as torchtitan's apply_fsdp: `fully_shard` on every transformer block, then on the
    module the loop calls (model + loss), which takes the embeddings, final norm and head. Each
    block is compiled on its own first (training.compile=true), as in torchtitan.

    Mixed precision follows training.dtype: bfloat16 gathers the blocks' weights in bf16 and
    runs each block in bf16 (its input cast down), reduces gradients in fp32 and hands the block's
    output back in fp32; the sharded master weights stay fp32. The root's weights stay fp32 too,
    so between blocks the residual stream, and the loss, are fp32 under autocast as under DDP."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not torch.distributed.is_initialized():
        raise ConfigError(
            "training.parallel=fsdp shards over a process group, and this process has none (nanugpt.train makes "
            "one, of one process if need be; the benchmarks run unwrapped). Use training.parallel=ddp here."
        )
    blocks = model.blocks
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
        raise ConfigError(
            f"training.parallel=fsdp shards a model per transformer block, and {type(model).__name__}.blocks is "
            "no list of blocks; use training.parallel=ddp for this model."
        )
    low_precision = amp_dtype == torch.bfloat16
    blocks_policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if low_precision else None,
        reduce_dtype=torch.float32 if low_precision else None,
        output_dtype=torch.float32 if low_precision else None,
    )
    for block in blocks:
        if compile:
            block.compile()
        fully_shard(block, mp_policy=blocks_policy)
    fully_shard(net)


def check_compile_works(device: torch.device) -> None:
    """torch.compile fails on its first call, deep in codegen, when the machine cannot build
    kernels; say so before training starts."""
    if device.type not in ("cpu", "cuda"):
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:
        raise ConfigError(
            f"training.compile=true needs a C++ compiler for torch.compile's generated {device.type} code, "
            f"and none was found ({type(err).__name__}; tried $CXX or g++). Install one (apt-get install g++, "
            "or set CXX=/path/to/compiler), or pass training.compile=false."
        ) from None


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> ZeroRedundancyOptimizer:
    """ZeRO-1: the same optimizer, its state (e.g. Adam's moments) split across ranks. Each rank
    steps its shard and broadcasts the updated parameters, so training matches plain DDP."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    cls = type(optimizer)
    accepted = inspect.signature(cls).parameters  # defaults may hold keys __init__ does not take
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return ZeroRedundancyOptimizer([dict(g) for g in optimizer.param_groups], optimizer_class=cls, **defaults)


@dataclass
class Run:
    """What the loop steps, evaluates and checkpoints; made by `build_run`."""

    model: Any  # the bare model (a BaseModel): checkpoints hold its weights
    net: torch.nn.Module  # model + loss as the loop calls it, wrapped by `parallelize`
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    data: Data
    spec: BatchSpec
    amp_dtype: torch.dtype
    autocast: torch.autocast
    parallel: str  # parallel_mode()


def build_run(
    cfg: DictConfig, info: dist.DistInfo, spec: BatchSpec, amp_dtype: torch.dtype, data: Data | None = None
) -> Run:
    """Every plugin's arguments are checked before any data is prepared (the data and tokenizer
    plugins check theirs when built): the loss and scaler are built first (they draw no random
    numbers); the model, optimizer and schedule need the data's vocab, so they are tried out on
    the meta device. Then the data (see nanugpt/data/build.py), the model, its wrap and
    optimizer, the schedule. `data` replaces the configured data (the benchmark's random tokens)."""
    loss_fn = instantiate(cfg.loss)
    scaler = build_scaler(cfg, info.device, amp_dtype)
    check_model_optimizer_schedule(cfg)
    if data is None:
        data = build_data(cfg, spec)
    if cfg.training.overfit_batches:  # debug=overfit: the first steps' batches over and over
        data.train = RepeatedBatches(data.train, cfg.training.overfit_batches)
    set_vocab_size(cfg, data.vocab_size)
    parallel = parallel_mode(cfg, info)
    if info.is_master:  # before the model takes any memory
        log.info(estimate_for_config(cfg, parallel, info.world_size, amp_dtype).table())
    model, net = build_model(cfg, loss_fn, info.device)
    net, optimizer = parallelize(cfg, model, net, info, parallel, amp_dtype)
    scheduler = build_scheduler(cfg, optimizer)
    if info.is_distributed:
        seed_everything(cfg.training.seed + info.rank)  # per-rank dropout masks; DDP broadcasts rank 0's init
    log_run_summary(cfg, model, info, spec)
    amp = autocast(info.device, amp_dtype)
    return Run(model, net, optimizer, scheduler, scaler, data, spec, amp_dtype, amp, parallel)


def log_run_summary(cfg: DictConfig, model: Any, info: dist.DistInfo, spec: BatchSpec) -> None:
    tcfg = cfg.training
    log.info(
        "model %s: %s parameters | vocab %d | context %d | global batch %d = %d device x %d ranks x %d accum | %s "
        "tokens/step",
        cfg.model._target_.rsplit(".", 1)[-1],
        f"{model.num_params():,}",
        cfg.model.vocab_size,
        cfg.model.context_length,
        tcfg.global_batch_size,
        tcfg.device_batch_size,
        info.world_size,
        spec.grad_accum_steps,
        f"{tcfg.global_batch_size * cfg.model.context_length:,}",
    )


def build_observer(cfg: DictConfig, run_dir: Path, run: Run, info: dist.DistInfo, start_step: int) -> RunObserver:
    tcfg = cfg.training
    return RunObserver(
        cfg,
        run_dir,
        info.is_master,
        start_step,
        run.model.flops_per_token(),
        peak_flops(info.device, run.amp_dtype),
        summary={
            "params": run.model.num_params(),
            "global_batch_size": tcfg.global_batch_size,
            "tokens_per_step": tcfg.global_batch_size * cfg.model.context_length,
            "world_size": info.world_size,
        },
    )


# ---------------------------------------------------------------- resume


@dataclass
class ValLosses:
    """The best val loss and its step (carried over by a resume: it decides best.pt) and this
    run's latest."""

    best: float = math.inf
    best_step: int | None = None
    last: float | None = None

    def record(self, loss: float, step: int) -> bool:
        """Note an eval's loss; returns whether it is the best so far."""
        is_best = loss < self.best
        if is_best:
            self.best, self.best_step = loss, step
        self.last = loss
        return is_best


def resume(cfg: DictConfig, run_dir: Path, run: Run, info: dist.DistInfo) -> tuple[int, ValLosses]:
    """Model, optimizer, scheduler, scaler, data position and RNGs from `resume` (auto: the newest
    checkpoint in the run dir that loads). Returns the step to continue after (0: a fresh start)
    and the best val loss so far. A sharded checkpoint (an FSDP run's directory) loads into any
    parallel mode and number of ranks; a file into any but FSDP."""
    resumed = find_resume_checkpoint(cfg.resume, run_dir)
    if resumed is None:
        return 0, ValLosses()
    path, ckpt = resumed
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if path.is_dir():
        load_optimizer = load_sharded_state(run, path, ckpt, model_cfg)
    else:
        check_file_resumable(path, ckpt, run.parallel)
        load_model_state(run.model, ckpt["model"], path, ckpt.get("config", {}).get("model"), model_cfg)
        load_optimizer = functools.partial(run.optimizer.load_state_dict, ckpt["optimizer"])
    # The checkpoint's optimizer state, schedule position and loss scale; this config's hyperparameters
    restore_optimizer_and_schedule(run.optimizer, run.scheduler, load_optimizer, ckpt["scheduler"])
    restore_scaler(run.scaler, ckpt["scaler"])
    log_config_changes(ckpt.get("config"), OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    run.data.train.load_state_dict(ckpt["data"])
    restore_rng_state(ckpt["rng"], info.rank, info.world_size)
    log.info("Resumed from %s at step %d (best val loss %.4f)", path, ckpt["step"], ckpt["best_val_loss"])
    best_step = ckpt.get("best_val_step")  # untrusted, and absent from older checkpoints
    return ckpt["step"], ValLosses(ckpt["best_val_loss"], best_step if isinstance(best_step, int) else None)


def check_file_resumable(path: Path, ckpt: dict[str, Any], mode: str) -> None:
    if "optimizer" not in ckpt:
        raise CheckpointError(
            f"{path} holds model weights only (a consolidated checkpoint, for generate): it cannot resume training. "
            "Resume from the sharded checkpoint directory it was consolidated from (e.g. <run dir>/checkpoints/last)."
        )
    if mode == "fsdp":
        raise CheckpointError(
            f"{path} is a single-file checkpoint (from a DDP or single-process run) and this run has "
            "training.parallel=fsdp, which resumes only from sharded checkpoint directories. Resume it with "
            "training.parallel=ddp, or start the FSDP run afresh (resume=never or a new hydra.run.dir)."
        )


def state_dict_parts(run: Run) -> tuple[torch.nn.Module, list[torch.optim.Optimizer]]:
    """The model and optimizer(s) as torch.distributed.checkpoint.state_dict sees them: Muon's
    combined optimizer as its two torch optimizers."""
    return run.model, list(getattr(run.optimizer, "parts", [run.optimizer]))


def sharded_state(run: Run) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, the rest) of the model and optimizer state, keyed by parameter name: sharded
    DTensors under FSDP, full tensors otherwise. The tensors go to DCP; the rest (param group
    settings, Muon's step counts) to state.pt, since DCP would pickle them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model, optimizers = state_dict_parts(run)
    model_state, optim_state = get_state_dict(
        model, optimizers, options=StateDictOptions(flatten_optimizer_state_dict=True)
    )
    tensors = {k: v for k, v in optim_state.items() if isinstance(v, torch.Tensor)}
    rest = {k: v for k, v in optim_state.items() if not isinstance(v, torch.Tensor)}
    return {"model": model_state, "optimizer": tensors}, rest


def load_sharded_state(run: Run, path: Path, ckpt: dict[str, Any], model_cfg: dict) -> Callable[[], None]:
    """Load a sharded checkpoint's model weights now (each rank reads the parts of each tensor it
    holds: resharding to any world size, or full tensors without FSDP), and return the loader of
    its optimizer state for `restore_optimizer_and_schedule`."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if run.parallel == "zero1":
        raise CheckpointError(
            f"{path} is a sharded (FSDP) checkpoint; training.parallel=zero1 cannot load it. Resume it with "
            "training.parallel=fsdp or ddp."
        )
    tensors, rest = sharded_state(run)
    try:
        load_sharded(path, tensors)
    except CheckpointError:
        raise
    except Exception as err:
        saved = ckpt.get("config", {})
        raise CheckpointError(
            f"Sharded checkpoint {path} does not fit the model and optimizer this config builds "
            f"({type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}). It was trained with "
            f"model={saved.get('model', {}).get('_target_')} optim={saved.get('optim', {}).get('_target_')}; "
            "resume with those settings, or start afresh (resume=never or a new hydra.run.dir)."
        ) from err
    model, optimizers = state_dict_parts(run)
    options = StateDictOptions(flatten_optimizer_state_dict=True)
    set_model_state_dict(model, tensors["model"], options=options)

    def load_optimizer() -> None:
        optim_state = {**tensors["optimizer"], **ckpt["optimizer_rest"]}
        set_optimizer_state_dict(model, optimizers, optim_state, options=options)
        if hasattr(run.optimizer, "link_groups"):  # Muon's parts got new group dicts
            run.optimizer.link_groups()

    return load_optimizer


# ---------------------------------------------------------------- the loop's parts


@dataclass
class StepStats:
    """What one optimizer step reports; every rank gets the same values (all-reduced)."""

    loss: float  # mean train loss over the global batch
    acc: float
    grad_norm: float  # global gradient norm before clipping
    lr: float  # the lr this step used (param group 0)
    stop: bool  # some rank asked to stop (SIGTERM/SIGUSR2/SIGINT): all stop after this step
    checkpoint_due: bool  # rank 0's clock asked for a time-based checkpoint after this step
    nonfinite: bool  # loss or gradient not finite: the weights were not updated
    phase_s: dict[str, float]  # seconds per phase (PhaseTimer); on a GPU exact only when synchronized

    @property
    def data_s(self) -> float:
        """Seconds spent waiting for this step's batches."""
        return self.phase_s["data"]


class PhaseTimer:
    """Seconds per phase of one step: data, forward, backward, optimizer (the stats all-reduce,
    clip, step, schedule). With `synchronize` on a GPU it waits for the device at the start and at
    each phase's end, so each phase's kernels count in it: exact, but it stalls the pipeline."""

    def __init__(self, device: torch.device, synchronize: bool) -> None:
        self.device, self.synchronize = device, synchronize and device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.last = self._now()

    def _now(self) -> float:
        if self.synchronize:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, phase: str) -> None:
        now = self._now()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now


def train_step(
    run: Run,
    info: dist.DistInfo,
    grad_clip: float,
    stop_requested: bool = False,
    checkpoint_due: bool = False,
    time_phases: bool = False,
) -> StepStats:
    """One optimizer step: the micro-batches of one global batch (gradient accumulation, DDP
    all-reduce on the last one only), clip, step, schedule. The trainer and `nanugpt.bench` both
    call this, so the benchmark times the code that trains. `stop_requested` and `checkpoint_due`
    are this rank's votes, summed over ranks with the loss; `time_phases` synchronizes the GPU
    between phases so that their seconds (`StepStats.phase_s`) are exact."""
    net, optimizer, scaler = run.net, run.optimizer, run.scaler
    timer = PhaseTimer(info.device, time_phases)
    micro_batches = run.data.train.next_step()
    timer.lap("data")
    accum = len(micro_batches)
    loss_sum = correct = scored = torch.zeros((), dtype=torch.float64, device=info.device)  # rebound, never in place
    for micro_step, (x, y) in enumerate(micro_batches):
        # DDP all-reduces gradients only on the last micro-step; FSDP reduce-scatters every
        # micro-step's, so that only the shards of the gradients are ever kept.
        sync = run.parallel not in ("ddp", "zero1") or micro_step == accum - 1
        with contextlib.nullcontext() if sync else net.no_sync(), run.autocast:
            loss, micro_correct, micro_scored = net(x, y)
        timer.lap("forward")
        scaler.scale(loss / accum).backward()
        loss_sum = loss_sum + loss.detach().double()
        correct, scored = correct + micro_correct.double(), scored + micro_scored.double()
        timer.lap("backward")
    votes = torch.tensor([stop_requested, checkpoint_due], dtype=torch.float64, device=info.device)
    sums = dist.sum_over_ranks(info, loss=loss_sum, correct=correct, scored=scored, stop=votes[0], save=votes[1])
    train_loss = sums["loss"] / (accum * info.world_size)
    grad_norm = scaler.unscale_and_clip_(optimizer, run.model.parameters(), grad_clip).item()  # scaler= group
    # A NaN/inf loss or gradient would poison the weights: drop the gradients, so the optimizer
    # step below changes nothing. The fp16 grad scaler skips such steps itself.
    nonfinite = not (math.isfinite(train_loss) and math.isfinite(grad_norm)) and not scaler.is_enabled()
    if nonfinite:
        optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    timer.lap("optimizer")
    acc = sums["correct"] / (sums["scored"] or math.nan)  # nothing scored: NaN, not a ZeroDivisionError
    return StepStats(train_loss, acc, grad_norm, lr, sums["stop"] > 0, sums["save"] > 0, nonfinite, timer.seconds)


def check_finite(stats: StepStats, step: int, skip_nonfinite: bool, ckpt_dir: Path) -> None:
    """A non-finite step stops the run, or with training.skip_nonfinite=true is skipped (train_step
    left the weights alone) with a warning."""
    if stats.nonfinite and not skip_nonfinite:
        raise nonfinite_error(
            f"the train loss is {stats.loss} and the grad norm {stats.grad_norm}", step, ckpt_dir, skippable=True
        )
    if stats.nonfinite:
        log.warning(
            "Step %d: train loss %s, grad norm %s; skipping its optimizer step (training.skip_nonfinite=true).",
            step,
            stats.loss,
            stats.grad_norm,
        )


def log_optimizer_state(run: Run) -> None:
    zero1 = run.parallel == "zero1"
    log.info(
        "optimizer state: %.1f MB%s",
        state_bytes(run.optimizer.optim if zero1 else run.optimizer) / 2**20,
        {"zero1": " (rank 0's ZeRO-1 shard)", "fsdp": " (rank 0's FSDP shard)"}.get(run.parallel, ""),
    )


@dataclass
class StepClock:
    """Seconds per step for the ETA; the first step (warm-up, compilation) is not timed."""

    loop_start: float | None = None
    timed_steps: int = 0

    def lap(self, step_start: float, steps_left: int) -> tuple[float, float]:
        """(this step's seconds, the ETA in seconds) at the end of a step."""
        step_s = time.perf_counter() - step_start
        if self.loop_start is None:
            self.loop_start = time.perf_counter()
        else:
            self.timed_steps += 1
        sec_per_step = (time.perf_counter() - self.loop_start) / self.timed_steps if self.timed_steps else step_s
        return step_s, sec_per_step * steps_left


@dataclass
class CheckpointClock:
    """Seconds since the loop started and since the last checkpoint (or the start): the rows'
    `run/elapsed_hr` and `run/checkpoint_age_hr`, and whether eval.checkpoint_every_minutes asks
    for a save after this step."""

    every_minutes: float | None
    not_before_step: int
    start: float = field(default_factory=time.monotonic)
    last_save: float = field(default_factory=time.monotonic)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.start

    def age_s(self) -> float:
        return time.monotonic() - self.last_save

    def due(self, step: int) -> bool:
        return bool(self.every_minutes) and step >= self.not_before_step and self.age_s() >= self.every_minutes * 60

    def saved(self) -> None:
        self.last_save = time.monotonic()


def train_row(
    stats: StepStats, step: int, step_s: float, eta_s: float, tokens_per_step: int, time_phases: bool = False
) -> dict[str, Any]:
    """The step's metrics row (metrics.jsonl, W&B, the console line); with `time_phases`, the
    step's seconds and their split into phases."""
    row: dict[str, Any] = {
        "step": step,
        "train/loss": stats.loss,
        "train/acc": stats.acc,
        "train/ppl": math.exp(min(stats.loss, 50.0)),
        "train/tokens_per_sec": tokens_per_step / step_s,
        "train/pre_clip_norm": stats.grad_norm,
        "run/lr": stats.lr,
        "run/eta_hr": eta_s / 3600,
        "run/tokens": step * tokens_per_step,
    }
    if stats.nonfinite:
        row["train/skipped_nonfinite"] = 1
    if time_phases:
        row["time/step_s"] = step_s
        row.update({f"time/{phase}_s": seconds for phase, seconds in stats.phase_s.items()})
    return row


# ---------------------------------------------------------------- evaluate and checkpoint


@torch.no_grad()
def evaluate(
    net: torch.nn.Module, batches: list, autocast: Any, info: dist.DistInfo, split: str = "val"
) -> dict[str, float]:
    """Loss, accuracy and perplexity over `batches` (all ranks' shares), as `<split>/...` metrics."""
    net.eval()
    loss_sum = correct = scored = torch.zeros((), dtype=torch.float64, device=info.device)  # rebound, never in place
    for x, y in batches:
        with autocast:
            loss, batch_correct, batch_scored = net(x, y)
        loss_sum = loss_sum + loss.double() * batch_scored  # the loss is a mean over the scored tokens
        correct, scored = correct + batch_correct.double(), scored + batch_scored.double()
    sums = dist.sum_over_ranks(info, loss=loss_sum, correct=correct, scored=scored)
    net.train()
    scored = sums["scored"] or math.nan  # nothing scored: NaN metrics, not a ZeroDivisionError
    loss = sums["loss"] / scored
    return {f"{split}/loss": loss, f"{split}/acc": sums["correct"] / scored, f"{split}/ppl": math.exp(min(loss, 50.0))}


def validate(run: Run, info: dist.DistInfo, train_loss: float, step: int, ckpt_dir: Path) -> dict[str, float]:
    """The val metrics for this step's row. A non-finite val loss means the weights themselves are
    broken: the run stops before they can be checkpointed."""
    metrics = evaluate(run.net, run.data.val, run.autocast, info)
    if not math.isfinite(metrics["val/loss"]):
        raise nonfinite_error(f"the val loss is {metrics['val/loss']}", step, ckpt_dir, skippable=False)
    metrics["val/generalization_gap"] = metrics["val/loss"] - train_loss
    return metrics


def save_state(
    cfg: DictConfig,
    run: Run,
    info: dist.DistInfo,
    ckpt_dir: Path,
    step: int,
    val_losses: ValLosses,
    val_loss: float | None,
    is_best: bool,
) -> None:
    """Everything `resume` restores, plus the config and data meta that `generate` rebuilds the
    model and tokenizer from. Every rank calls it (the RNG states, a ZeRO-1 optimizer and FSDP's
    shards are collectives); rank 0 writes a file, or under FSDP every rank its shards. `val_loss`:
    this step's (None for a time-based save)."""
    state = {
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "data": run.data.train.state_dict(),
        "rng": all_rng_states(),
        "step": step,
        "best_val_loss": val_losses.best,
        "best_val_step": val_losses.best_step,
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "data_meta": run.data.meta,
    }
    best = is_best and cfg.eval.checkpoint == "best_and_last"
    if run.parallel == "fsdp":
        tensors, state["optimizer_rest"] = sharded_state(run)
        save_sharded_checkpoint(ckpt_dir, tensors, state, step, val_loss, best, cfg.eval.keep_last, info.is_master)
        return
    state["model"] = run.model.state_dict()
    state["optimizer"] = optimizer_state(run.optimizer, info, run.parallel == "zero1")
    if info.is_master:
        save_checkpoint(ckpt_dir, state, step, val_loss, best, cfg.eval.keep_last)


def optimizer_state(optimizer: torch.optim.Optimizer, info: dist.DistInfo, zero1: bool) -> dict[str, Any]:
    """The full optimizer state on rank 0 ({} elsewhere). With ZeRO-1 a collective: every rank
    sends its shard to rank 0."""
    if zero1:
        optimizer.consolidate_state_dict(to=0)
    return optimizer.state_dict() if info.is_master else {}


def nonfinite_error(what: str, step: int, ckpt_dir: Path, skippable: bool) -> NonFiniteLossError:
    last = pointer(ckpt_dir, "last")
    saved = read_log(ckpt_dir)
    kept = (
        f"the last good checkpoint {last} (step {saved[-1]['step']}) is intact"
        if last is not None and saved
        else "no checkpoint was written"
    )
    return NonFiniteLossError(
        f"Training stopped at step {step}: {what}. Nothing non-finite was saved: {kept}. Lower optim.lr "
        "(or lengthen sched.warmup_steps), keep training.grad_clip > 0, and rerun: in the same run dir it "
        "resumes from that checkpoint, with resume=never it starts over"
        + (", or pass training.skip_nonfinite=true to skip such steps." if skippable else ".")
    )


# ---------------------------------------------------------------- finish


def finish_message(run_dir: Path, ckpt_dir: Path, val_losses: ValLosses, loop_start: float | None) -> None:
    elapsed = time.perf_counter() - loop_start if loop_start else 0.0
    log.info(
        "Done in %s: best val loss %.4f (step %s), last %s. Run dir: %s",
        format_duration(elapsed),
        val_losses.best,
        val_losses.best_step,
        f"{val_losses.last:.4f}" if val_losses.last is not None else "n/a",
        run_dir,
    )
    ckpt = pointer(ckpt_dir, "best") or pointer(ckpt_dir, "last")
    if ckpt is not None:
        log.info("Checkpoint: %s", ckpt)
        log.info(
            "Sample from it:\n  python -m nanugpt.generate ckpt=%s 'prompt=\"def \"' max_new_tokens=200",
            shlex.quote(str(ckpt)),
        )


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float:
    return train(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    # Run the importable module's main, not __main__'s: submitit pickles the task function, and
    # cloudpickle copies whatever lives in __main__ by value (torch module objects included).
    from nanugpt.train import main as importable_main

    importable_main()
