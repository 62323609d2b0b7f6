"""Train a GPT: `python -m nanugpt.train [overrides]`.

Reads top to bottom: set up the process, data, model, optimizer; maybe resume; then the loop
(micro-steps with gradient accumulation, clip, step, log, evaluate, checkpoint); then print how
to sample from what was trained. Setup details live in small modules this file calls.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import shlex
import shutil
import time
from dataclasses import dataclass
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
    read_log,
    restore_rng_state,
    save_checkpoint,
)
from nanugpt.config import check_train_environment, register_configs, validate_train
from nanugpt.data.build import build_data
from nanugpt.data.contract import BatchSpec
from nanugpt.errors import ConfigError, NonFiniteLossError, report_user_errors
from nanugpt.metrics import format_duration
from nanugpt.models.with_loss import ModelWithLoss
from nanugpt.observe import RunObserver, peak_flops
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
        instantiate(cfg.sched)(instantiate(cfg.optim)(instantiate(cfg.model, **vocab)))


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


@torch.no_grad()
def evaluate(
    net: torch.nn.Module, batches: list, autocast: Any, info: dist.DistInfo, split: str = "val"
) -> dict[str, float]:
    net.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=info.device)  # loss * count, correct, count
    for x, y in batches:
        with autocast:
            loss, correct, count = net(x, y)
        totals += torch.stack([loss.double() * count, correct.double(), count.double()])
    dist.all_reduce_sum(totals, info)
    net.train()
    loss = (totals[0] / totals[2]).item()
    acc = (totals[1] / totals[2]).item()
    return {f"{split}/loss": loss, f"{split}/acc": acc, f"{split}/ppl": math.exp(min(loss, 50.0))}


def train(cfg: DictConfig, run_dir: Path) -> float:
    validate_train(cfg)  # every value, before any work
    info = dist.init_distributed(cfg.training.device)
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
    if not info.is_master:  # only rank 0 talks; warnings and errors of any rank still show
        root = logging.getLogger()
        for logger_or_handler in (root, *root.handlers):  # handlers too: other loggers propagate to them
            logger_or_handler.setLevel(logging.WARNING)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    # An indivisible global batch fails here, before anything is loaded.
    spec = BatchSpec.from_config(cfg, info.rank, info.world_size, info.device)
    accum = spec.grad_accum_steps
    amp_dtype = autocast_dtype(tcfg.dtype, info.device)
    configure_matmul_precision(info.device)
    # Every plugin's arguments are checked before any data is prepared (the data and tokenizer
    # plugins check theirs when built): the loss and scaler are built now, before seeding (they
    # draw no random numbers); the model, optimizer and schedule need the data's vocab, so they
    # are tried out on the meta device first.
    loss_fn = instantiate(cfg.loss)
    scaler = instantiate(cfg.scaler)(info.device.type, float16=amp_dtype == torch.float16)
    check_model_optimizer_schedule(cfg)
    seed_everything(tcfg.seed)

    # ---- data: token streams (a text corpus tokenized once into a cache, or pre-tokenized shard
    # files) read as random windows; example data (grokking, arithmetic: one row each, answer-only
    # targets) as shuffled rows, evaluated on its whole val split. See nanugpt/data/build.py.
    data = build_data(cfg, spec)
    context_length = spec.context_length
    set_vocab_size(cfg, data.vocab_size)

    # ---- model, loss, optimizer, schedule
    model = instantiate(cfg.model)
    net = ModelWithLoss(model, loss_fn).to(info.device)
    optimizer = instantiate(cfg.optim)(model)
    zero1 = tcfg.zero1 and info.is_distributed
    if zero1:
        optimizer = shard_optimizer_state(optimizer)
    scheduler = instantiate(cfg.sched)(optimizer)
    if info.is_distributed:
        seed_everything(tcfg.seed + info.rank)  # per-rank dropout masks; DDP broadcasts rank 0's init
    n_params = model.num_params()
    log.info(
        "model %s: %s parameters | vocab %d | context %d | global batch %d = %d device x %d ranks x %d accum | %s "
        "tokens/step",
        cfg.model._target_.rsplit(".", 1)[-1],
        f"{n_params:,}",
        cfg.model.vocab_size,
        context_length,
        tcfg.global_batch_size,
        tcfg.device_batch_size,
        info.world_size,
        accum,
        f"{tcfg.global_batch_size * context_length:,}",
    )

    # ---- resume: model, optimizer, scheduler, scaler, step, best val, RNGs and data position
    start_step, best_val_loss = 0, math.inf
    resumed = find_resume_checkpoint(cfg.resume, run_dir)  # auto: the newest one that loads
    if resumed is not None:
        resume_path, ckpt = resumed
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        load_model_state(model, ckpt["model"], resume_path, ckpt.get("config", {}).get("model"), model_cfg)
        # The checkpoint's optimizer state, schedule position and loss scale; this config's hyperparameters
        restore_optimizer_and_schedule(optimizer, scheduler, ckpt["optimizer"], ckpt["scheduler"])
        restore_scaler(scaler, ckpt["scaler"])
        log_config_changes(ckpt.get("config"), OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        data.train.load_state_dict(ckpt["data"])
        restore_rng_state(ckpt["rng"], info.rank, info.world_size)
        start_step, best_val_loss = ckpt["step"], ckpt["best_val_loss"]
        log.info("Resumed from %s at step %d (best val loss %.4f)", resume_path, start_step, best_val_loss)
        del ckpt

    # ---- wrappers: compile (fuses model + loss), then DDP
    if tcfg.compile:
        check_compile_works(info.device)
        net = torch.compile(net)
    if info.is_distributed:
        net = DistributedDataParallel(net, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    autocast = torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)

    ckpt_dir = run_dir / "checkpoints"
    tokens_per_step = tcfg.global_batch_size * context_length
    observer = RunObserver(
        cfg,
        run_dir,
        info.is_master,
        start_step,
        model.flops_per_token(),
        peak_flops(info.device, amp_dtype),
        summary={
            "params": n_params,
            "global_batch_size": tcfg.global_batch_size,
            "tokens_per_step": tokens_per_step,
            "world_size": info.world_size,
        },
    )
    loop_start, timed_steps = None, 0
    last_val_loss: float | None = None
    preempted = False

    for step in range(start_step + 1, tcfg.max_steps + 1):  # `step` counts completed optimizer steps
        t0 = time.perf_counter()
        stats = train_step(
            net, model, optimizer, scheduler, scaler, data.train, autocast, info, tcfg.grad_clip, stop.requested
        )
        preempted = stats.stop  # a rank got SIGTERM/SIGUSR2/SIGINT: all finish this step, checkpoint, stop
        if stats.nonfinite and not tcfg.skip_nonfinite:
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
        if step == start_step + 1:  # optimizers create their state on the first step
            log.info(
                "optimizer state: %.1f MB%s",
                state_bytes(optimizer.optim if zero1 else optimizer) / 2**20,
                " (rank 0's ZeRO-1 shard)" if zero1 else "",
            )

        dt = time.perf_counter() - t0
        if loop_start is None:
            loop_start = time.perf_counter()  # the first step (warm-up, compilation) is not timed
        else:
            timed_steps += 1
        sec_per_step = (time.perf_counter() - loop_start) / timed_steps if timed_steps else dt
        eta_s = sec_per_step * (tcfg.max_steps - step)
        row: dict[str, Any] = {
            "step": step,
            "train/loss": stats.loss,
            "train/acc": stats.acc,
            "train/ppl": math.exp(min(stats.loss, 50.0)),
            "train/tokens_per_sec": tokens_per_step / dt,
            "train/pre_clip_norm": stats.grad_norm,
            "run/lr": stats.lr,
            "run/eta_hr": eta_s / 3600,
            "run/tokens": step * tokens_per_step,
        }
        if stats.nonfinite:
            row["train/skipped_nonfinite"] = 1

        is_last = step == tcfg.max_steps
        evaluating = step % cfg.eval.every == 0 or is_last or preempted
        if evaluating:
            row.update(evaluate(net, data.val, autocast, info))
            if not math.isfinite(row["val/loss"]):  # the weights themselves are broken: never checkpoint them
                raise nonfinite_error(f"the val loss is {row['val/loss']}", step, ckpt_dir, skippable=False)
            last_val_loss = row["val/loss"]
            row["val/generalization_gap"] = row["val/loss"] - stats.loss
            is_best = row["val/loss"] < best_val_loss
            best_val_loss = min(best_val_loss, row["val/loss"])
            if is_last and data.test is not None:  # once, in the final row: eval.test_iters batches
                row.update(evaluate(net, data.test, autocast, info, "test"))

        # The row before the checkpoint: a run killed in between redoes this step and rewrites
        # its row; the other order would resume after a step whose row was never written.
        observer.log_step(row, eta_s)  # metrics.jsonl, W&B, progress bar, console line

        if evaluating and cfg.eval.checkpoint != "none":
            rng = all_rng_states()  # every rank's; a collective, so before the master-only save
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer_state(optimizer, info, zero1),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "data": data.train.state_dict(),
                "rng": rng,
                "step": step,
                "best_val_loss": best_val_loss,
                "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                "data_meta": data.meta,
            }
            if info.is_master:
                save_checkpoint(
                    ckpt_dir,
                    state,
                    step,
                    row["val/loss"],
                    is_best and cfg.eval.checkpoint == "best_and_last",
                    cfg.eval.keep_last,
                )
        if preempted:
            if info.is_master:
                log.warning(stop.message(step, run_dir, checkpointed=cfg.eval.checkpoint != "none"))
            break

    observer.close()
    if preempted:
        stop.forward()  # on to submitit's handler (requeue on a time limit) or the default action
    if info.is_master:
        finish_message(run_dir, ckpt_dir, best_val_loss, last_val_loss, loop_start)
    return best_val_loss


@dataclass
class StepStats:
    """What one optimizer step reports; every rank gets the same values (all-reduced)."""

    loss: float  # mean train loss over the global batch
    acc: float
    grad_norm: float  # global gradient norm before clipping
    lr: float  # the lr this step used (param group 0)
    stop: bool  # some rank asked to stop (SIGTERM/SIGUSR2/SIGINT): all stop after this step
    nonfinite: bool  # loss or gradient not finite: the weights were not updated
    data_s: float  # seconds spent waiting for this step's batches


def train_step(
    net: torch.nn.Module,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    batches: Any,
    autocast: Any,
    info: dist.DistInfo,
    grad_clip: float,
    stop_requested: bool = False,
) -> StepStats:
    """One optimizer step: the micro-batches of one global batch (gradient accumulation, DDP
    all-reduce on the last one only), clip, step, schedule. The trainer and `nanugpt.bench` both
    call this, so the benchmark times the code that trains."""
    t = time.perf_counter()
    micro_batches = batches.next_step()
    data_s = time.perf_counter() - t
    accum = len(micro_batches)
    totals = torch.zeros(4, dtype=torch.float64, device=info.device)  # loss, correct, count, stop flag
    for micro_step, (x, y) in enumerate(micro_batches):
        # DDP all-reduces gradients only on the last micro-step.
        sync = not info.is_distributed or micro_step == accum - 1
        with contextlib.nullcontext() if sync else net.no_sync(), autocast:
            loss, correct, count = net(x, y)
        scaler.scale(loss / accum).backward()
        totals[:3] += torch.stack([loss.detach().double(), correct.double(), count.double()])
    totals[3] = float(stop_requested)
    dist.all_reduce_sum(totals, info)
    train_loss = totals[0].item() / (accum * info.world_size)
    grad_norm = scaler.unscale_and_clip_(optimizer, model.parameters(), grad_clip).item()  # scaler= group
    # A NaN/inf loss or gradient would poison the weights: drop the gradients, so the optimizer
    # step below changes nothing. The fp16 grad scaler skips such steps itself.
    nonfinite = not (math.isfinite(train_loss) and math.isfinite(grad_norm)) and not scaler.is_enabled()
    if nonfinite:
        optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    acc = (totals[1] / totals[2]).item()
    return StepStats(train_loss, acc, grad_norm, lr, totals[3].item() > 0, nonfinite, data_s)


def nonfinite_error(what: str, step: int, ckpt_dir: Path, skippable: bool) -> NonFiniteLossError:
    last = ckpt_dir / "last.pt"
    saved = read_log(ckpt_dir)
    kept = (
        f"the last good checkpoint {last} (step {saved[-1]['step']}) is intact"
        if last.is_file() and saved
        else "no checkpoint was written"
    )
    return NonFiniteLossError(
        f"Training stopped at step {step}: {what}. Nothing non-finite was saved: {kept}. Lower optim.lr "
        "(or lengthen sched.warmup_steps), keep training.grad_clip > 0, and rerun: in the same run dir it "
        "resumes from that checkpoint, with resume=never it starts over"
        + (", or pass training.skip_nonfinite=true to skip such steps." if skippable else ".")
    )


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> ZeroRedundancyOptimizer:
    """ZeRO-1: the same optimizer, its state (e.g. Adam's moments) split across ranks. Each rank
    steps its shard and broadcasts the updated parameters, so training matches plain DDP."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    cls = type(optimizer)
    accepted = inspect.signature(cls).parameters  # defaults may hold keys __init__ does not take
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return ZeroRedundancyOptimizer([dict(g) for g in optimizer.param_groups], optimizer_class=cls, **defaults)


def optimizer_state(optimizer: torch.optim.Optimizer, info: dist.DistInfo, zero1: bool) -> dict[str, Any]:
    """The full optimizer state on rank 0 ({} elsewhere). With ZeRO-1 a collective: every rank
    sends its shard to rank 0."""
    if zero1:
        optimizer.consolidate_state_dict(to=0)
    return optimizer.state_dict() if info.is_master else {}


def finish_message(
    run_dir: Path, ckpt_dir: Path, best_val_loss: float, last_val_loss: float | None, loop_start: float | None
) -> None:
    elapsed = time.perf_counter() - loop_start if loop_start else 0.0
    log.info(
        "Done in %s: best val loss %.4f, last %s. Run dir: %s",
        format_duration(elapsed),
        best_val_loss,
        f"{last_val_loss:.4f}" if last_val_loss is not None else "n/a",
        run_dir,
    )
    ckpt = ckpt_dir / "best.pt" if (ckpt_dir / "best.pt").is_file() else ckpt_dir / "last.pt"
    if ckpt.is_file():
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
