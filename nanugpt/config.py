"""Typed schemas of the entry points' own config keys, and the checks that run before any work.

Every default lives in one place:
- `training`, `eval`, `logging`, `resume` (train) and every key of generate and prepare: the
  dataclass defaults below, with each key's type and allowed range;
- `paths`: the `paths` group, `nanugpt/conf/paths/default.yaml` (typed here, no default here);
- `bench` (`python -m nanugpt.bench`, composing train.yaml): `BenchConfig` below;
- plugin groups (`model`, `data`, `tokenizer`, ...): their YAML under `nanugpt/conf/<group>/`;
  the plugin's constructor checks its own arguments.

The primary configs list their schema first in their defaults, so a misspelt key
(`training.max_stpes=5`), a wrongly typed value (`training.max_steps=abc`) or an unknown choice
(`training.dtype=fp16`, which lists the valid ones) fails at composition with Hydra's message.
A value out of range, a missing mandatory value or a machine that cannot run the config fails in
`validate_train` / `validate_generate` / `validate_prepare` with one paragraph naming the key and
the fix, before any data is prepared (`check_train_environment`: the device and dirs of a run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import MISSING, DictConfig, OmegaConf

from nanugpt.data.examples import ExampleSource
from nanugpt.data.shards import ShardFiles
from nanugpt.dist import check_device
from nanugpt.errors import ConfigError, UserError, check_value


class Choice(str, Enum):
    """A value from a fixed list. OmegaConf rejects any other at composition and lists the valid
    ones; the code reads a member like the plain string it equals (`dtype == "auto"`, a dict key,
    `str()`). Serialize configs with `OmegaConf.to_container(..., enum_to_str=True)`: a
    checkpoint may hold plain values only (it loads with weights_only=True)."""

    def __str__(self) -> str:
        return self.value


class Dtype(Choice):
    auto = "auto"  # bfloat16 on CUDA where supported, else float32
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"  # CUDA only, with the amp scaler's loss scaling


class Device(Choice):
    auto = "auto"  # cuda when torch sees a GPU, else cpu
    cpu = "cpu"
    cuda = "cuda"


class Parallel(Choice):
    ddp = "ddp"  # replicas, gradients all-reduced (one process: no wrapper)
    zero1 = "zero1"  # DDP with the optimizer state sharded across ranks (ZeroRedundancyOptimizer)
    fsdp = "fsdp"  # FSDP2: parameters, gradients and optimizer state sharded per transformer block


class CheckpointPolicy(Choice):
    best_and_last = "best_and_last"
    last = "last"
    none = "none"


class WandbMode(Choice):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric key, as `Annotated[int, Range(ge=1)]`: ge >=, gt >,
    le <=, lt <; `null` says what null means where null is allowed; `why` is added to the error."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    null: str | None = None
    why: str = ""


SEED = Range(ge=0, lt=2**32, why="numpy takes seeds in [0, 2**32).")


@dataclass
class TrainingConfig:
    # the default run: ~2.5 min on a 2-core AVX2 CPU (README, "The default run")
    max_steps: Annotated[int, Range(ge=1, why="0 steps would train nothing.")] = 450
    # sequences per optimizer step, summed over ranks and micro-steps
    global_batch_size: Annotated[int, Range(ge=1)] = 64
    # sequences per forward pass on one device
    device_batch_size: Annotated[int, Range(ge=1)] = 64
    # max global grad norm; 0 disables clipping (the norm is still logged)
    grad_clip: Annotated[float, Range(ge=0, why="0 disables clipping.")] = 1.0
    dtype: Dtype = Dtype.auto
    compile: bool = False
    seed: Annotated[int, SEED] = 1337
    device: Device = Device.auto
    # torch intra-op threads
    threads: Annotated[int | None, Range(ge=1, null="torch's default")] = None
    # a NaN/inf loss skips that optimizer step instead of stopping the run
    skip_nonfinite: bool = False
    # how ranks share the work: ddp | zero1 | fsdp (docs/distributed.md)
    parallel: Parallel = Parallel.ddp
    # recompute each transformer block's activations in backward instead of keeping them (any parallel mode)
    activation_checkpointing: bool = False
    # removed: training.zero1=true is now training.parallel=zero1 (null; any value is refused with that message)
    zero1: bool | None = None
    # debug=anomaly: torch.autograd.set_detect_anomaly, so a NaN in backward names its op (slow)
    detect_anomaly: bool = False
    # debug=overfit: train on the first this-many steps' batches over and over
    overfit_batches: Annotated[int, Range(ge=0, why="0 trains on the data as usual.")] = 0


@dataclass
class EvalConfig:
    # evaluate (and checkpoint) every this many steps, and at the last step
    every: Annotated[int, Range(ge=1)] = 100
    # val batches per evaluation; the same batches every time (example data: its whole val split)
    iters: Annotated[int, Range(ge=1)] = 20
    # test batches, evaluated once at the end (data sets with a test split; example data: its whole test split)
    test_iters: Annotated[int, Range(ge=0, why="0 skips the test evaluation.")] = 100
    checkpoint: CheckpointPolicy = CheckpointPolicy.best_and_last
    # step-numbered checkpoints kept besides last.pt/best.pt (hard links, no extra disk)
    keep_last: Annotated[int, Range(ge=0, why="0 keeps only last.pt and best.pt.")] = 2
    # also checkpoint at the end of a step once this many minutes passed since the last save (no val loss)
    checkpoint_every_minutes: Annotated[
        float | None, Range(ge=0, null="off", why="0 or null turns time-based checkpoints off.")
    ] = None
    # no time-based checkpoint before this step
    checkpoint_not_before_step: Annotated[int, Range(ge=0)] = 0


@dataclass
class WandbConfig:
    # null: WANDB_MODE if set, else online when logged in, else disabled
    mode: WandbMode | None = None
    # null: WANDB_PROJECT, else nanugpt
    project: str | None = None
    # null: WANDB_ENTITY, else your W&B default
    entity: str | None = None
    # null: WANDB_NAME, else from the run dir (<date>/<time>-<us>, or <date>/<time>-<us>/<job> in a sweep)
    name: str | None = None
    # null: WANDB_RUN_GROUP, else the sweep (<date>/<time>-<us>) for sweep jobs
    group: str | None = None
    # also upload last.pt and best.pt as an artifact at the end of the run
    log_checkpoints: bool = False


@dataclass
class LoggingConfig:
    # console line every this many steps; metrics.jsonl gets every step
    every: Annotated[int, Range(ge=1)] = 25
    # progress bar; null: only when stdout is a terminal
    progress: bool | None = None
    # one device's peak TFLOP/s, for MFU
    peak_tflops: Annotated[float | None, Range(gt=0, null="from the A100/H100/H200 table, n/a elsewhere")] = None
    # split every this-many steps' time into data/forward/backward/optimizer (a GPU synchronize per phase)
    time_phases_every: Annotated[int, Range(ge=0, why="0 never splits.")] = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class PathsConfig:
    """Typed here; the values are in nanugpt/conf/paths/default.yaml."""

    data_dir: str = MISSING  # prepared-data cache root (and downloads)
    output_root: str = MISSING  # single runs: <output_root>/<date>/<time>-<microseconds>
    sweep_root: str = MISSING  # sweeps (-m): <sweep_root>/<date>/<time>-<microseconds>/<job>


@dataclass
class TrainConfig:
    model: Any = MISSING
    data: Any = MISSING
    tokenizer: Any = MISSING
    optim: Any = MISSING
    sched: Any = MISSING
    loss: Any = MISSING
    scaler: Any = MISSING
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # auto: continue from <run dir>/checkpoints/last.pt if present | never | <path to a checkpoint>
    resume: str = "auto"
    # W&B tags, run_info.json and the report's tags column, e.g. tags=[baseline,owt]; null: WANDB_TAGS (a,b)
    tags: list[str] | None = None


@dataclass
class GenerateConfig:
    # a run dir (its best.pt, else its newest checkpoint), a checkpoints dir, or a .pt file nanugpt.train wrote
    ckpt: str = MISSING
    prompt: str = "\n"
    # a batch of prompts instead, e.g. 'prompts=["def ","class "]' (num_samples each)
    prompts: list[str] | None = None
    # stop strings: each sample ends after the first one, e.g. 'stop=["\n\n"]'
    stop: list[str] | None = None
    # KV cache: prefill once, then one token per step (false: recompute the context)
    use_cache: bool = True
    # past the context window, continue from the last this-many tokens
    window_keep: Annotated[int | None, Range(ge=1, null="half the window")] = None
    # torch.compile the one-token decode step (pays off for long generations)
    compile: bool = False
    max_new_tokens: Annotated[int, Range(ge=1)] = 200
    num_samples: Annotated[int, Range(ge=1)] = 1
    temperature: Annotated[float, Range(ge=0, why="0 is greedy.")] = 0.8
    top_k: Annotated[int | None, Range(ge=1, null="no top-k cut")] = 200
    top_p: Annotated[float | None, Range(gt=0, le=1, null="no nucleus cut")] = None  # nucleus sampling, e.g. 0.95
    seed: Annotated[int, SEED] = 1337
    progress: bool = True  # a tokens/s bar with ETA on stderr while sampling
    device: Device = Device.auto
    # allow _target_s other than nanugpt's own models/tokenizers in the checkpoint's config (runs their code!)
    trust_checkpoint: bool = False


@dataclass
class PrepareConfig:
    data: Any = MISSING
    tokenizer: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    force: bool = False  # rebuild even if an up-to-date copy exists


@dataclass
class BenchConfig:
    """`python -m nanugpt.bench`'s own options: the `bench` section of nanugpt/conf/bench.yaml. A
    benchmark's options are its fields here (the comment names the benchmark)."""

    # untimed steps (compilation, allocator warm-up)
    warmup: Annotated[int, Range(ge=0)] = 3
    # timed steps per repeat
    steps: Annotated[int, Range(ge=1)] = 10
    # the figure is the median over repeats
    repeats: Annotated[int, Range(ge=1)] = 3
    # JSON path; null: bench-<what>.json
    out: str | None = None
    # train, eval: random tokens instead of the configured data
    synthetic: bool = False
    # train: also time a minimal plain-torch loop on the same model
    plain_loop: bool = True
    # generate: tokens generated per timed sample
    new_tokens: Annotated[int, Range(ge=1)] = 500
    # generate: one row per batch size
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    # generate: random prompt length
    prompt_tokens: Annotated[int, Range(ge=1)] = 8
    # generate: also time a torch.compile'd decode step
    compile_decode: bool = False
    # generate: a checkpoint instead of random weights
    ckpt: str | None = None
    # prepare: cap the corpus at this many MB
    max_mb: Annotated[float, Range(gt=0)] = 8.0
    # prepare: a local .tiktoken rank file (r50k_base / gpt2); null skips tiktoken
    bpe_file: str | None = None
    # loader: GB of random uint16 shards to draw windows from
    loader_gb: Annotated[float, Range(gt=0)] = 2.0
    # speedrun: the experiment config to run end to end
    experiment: str = "shakespeare_speedrun"
    # speedrun: final val loss to reach
    target_loss: float = 1.88
    # speedrun: wall seconds from command start to exit
    target_wall_s: Annotated[float, Range(gt=0)] = 45.0
    # gpu: stop starting sections once this many seconds have passed
    budget_s: Annotated[float, Range(gt=0)] = 480.0
    # gpu: toy sizes on the CPU (CI), to prove the check runs end to end
    dry_run: bool = False
    # memory: the ranks the ddp/zero1/fsdp per-rank estimates are for
    world_size: Annotated[int, Range(ge=1)] = 8
    # gpu: where gpu.json, gpu.md and each section's JSON and log go; null: bench-gpu/
    out_dir: str | None = None
    # gpu: a local tinyshakespeare.txt for the baby-GPT section (skipped without)
    shakespeare_path: str | None = None


SCHEMAS = {
    "nanugpt_train_schema": TrainConfig,
    "nanugpt_generate_schema": GenerateConfig,
    "nanugpt_prepare_schema": PrepareConfig,
    "nanugpt_bench_schema": BenchConfig,
}


def register_configs() -> None:
    for name, schema in SCHEMAS.items():
        ConfigStore.instance().store(name=name, node=schema)


# ---------------------------------------------------------------- checks


def _missing_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if prefix or key != "hydra":  # a callback's config also holds hydra's own keys, not all set yet
                yield from _missing_keys(value, f"{prefix}{key}.")
    elif node == MISSING:
        yield prefix.rstrip(".")


def check_required(cfg: DictConfig, examples: dict[str, str]) -> None:
    """A mandatory value (`???`) left out: one paragraph instead of MissingMandatoryValue."""
    missing = sorted(_missing_keys(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        example = " ".join(examples.get(k, f"{k}=...") for k in missing)
        raise ConfigError(
            f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no value and no default; pass "
            f"{'it' if len(missing) == 1 else 'them'} on the command line, e.g. {example}."
        )


def _numeric_kind(hint: Any) -> type:
    """int from `int`, float from `float | None`."""
    if get_origin(hint) in (Union, UnionType):
        return next(a for a in get_args(hint) if a is not NoneType)
    return hint


def check_ranges(cfg: Mapping[str, Any], schema: type, prefix: str = "") -> None:
    """Every `Annotated[..., Range(...)]` key of `schema` (and its nested sections) in `cfg`."""
    hints = get_type_hints(schema, include_extras=True)
    for f in fields(schema):
        hint, key = hints[f.name], prefix + f.name
        if is_dataclass(hint):
            check_ranges(cfg[f.name], hint, key + ".")
        elif get_origin(hint) is Annotated:
            kind, rule = get_args(hint)[0], get_args(hint)[1]
            default = f.default if f.default is not NO_DEFAULT else None
            fix = " ".join(filter(None, [rule.why, f"The default is {key}={default}." if default is not None else ""]))
            bounds = {"ge": rule.ge, "gt": rule.gt, "le": rule.le, "lt": rule.lt}
            check_value(key, cfg[f.name], _numeric_kind(kind), **bounds, null=rule.null, fix=fix)


def check_writable_dir(
    key: str, path: str | Path, env_var: str | None = None, set_instead: str = "", why: str = ""
) -> None:
    """`path` is a directory this process can write in, or one it can create. `set_instead`: what
    the user should set when that is not `key` itself; `why`: what is written there."""
    from_env = env_var is not None and os.environ.get(env_var) == str(path)
    named = f"{key}={str(path)!r}" + (f" (from {env_var})" if from_env else "")
    where = set_instead or (f"{env_var} (or {key})" if from_env else key)
    if not str(path).strip():
        unset = f"Unset {env_var} to use the default, or set it to a directory. " if from_env else ""
        raise ConfigError(f"{named} is empty, which would put its files in the current directory. {unset}{why}".strip())
    target = Path(path).expanduser()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        problem = f"cannot be a directory: {existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"is not writable: this user may not write in {existing}"
    else:
        return
    raise ConfigError(f"{named} {problem}. Point {where} at a directory you can write to. {why}".strip())


def check_resume(resume: str) -> None:
    path = Path(resume).expanduser()
    if resume in ("auto", "never") or path.is_file() or (path / ".metadata").is_file():
        return
    raise ConfigError(
        f"resume={resume!r} is neither auto, never, nor an existing checkpoint (a file, or a sharded checkpoint "
        "directory). Pass resume=auto (continue from this run dir's checkpoints, if any), resume=never (start "
        "over), or the path of a checkpoint, e.g. resume=outputs/<date>/<time>/checkpoints/last.pt (FSDP runs: "
        ".../checkpoints/last)."
    )


def reads_prepared_data(data_cfg: DictConfig) -> bool:
    """Whether a data plugin goes through the prepared-data cache under paths.data_dir (a text
    corpus), or needs no data dir: example data (built in memory) and shard files (read in place)."""
    try:
        return not issubclass(get_class(data_cfg._target_), (ExampleSource, ShardFiles))
    except Exception:  # a bad _target_: instantiate names it
        return True


DATA_DIR_WHY = "Prepare writes the tokenized data and a lock file there, even when the data is ready."
RUN_DIR_WHY = "Runs write their logs, metrics and checkpoints there."


def validate_train(cfg: DictConfig) -> None:
    """Every value of `python -m nanugpt.train`'s own keys, before any work. The data and
    tokenizer plugins check their arguments when instantiated, also before any data is prepared."""
    check_required(cfg, {"data.path": "data.path=/path/to/file.txt (or a directory)"})
    check_ranges(cfg, TrainConfig)
    check_parallel(cfg.training)
    check_resume(cfg.resume)
    if cfg.eval.checkpoint_every_minutes and cfg.eval.checkpoint == "none":
        raise ConfigError(
            f"eval.checkpoint_every_minutes={cfg.eval.checkpoint_every_minutes} asks for time-based checkpoints, "
            "but eval.checkpoint=none saves none. Pass eval.checkpoint=last (or best_and_last), or drop "
            "eval.checkpoint_every_minutes."
        )


def check_parallel(training: DictConfig) -> None:
    """training.parallel against the removed training.zero1 and the dtype FSDP cannot run."""
    if training.zero1 is not None:
        raise ConfigError(
            f"training.zero1={str(training.zero1).lower()} was removed: the parallel mode is one key now, "
            "training.parallel=ddp|zero1|fsdp. Pass training.parallel=zero1 instead of training.zero1=true "
            "(and drop training.zero1=false: ddp is the default)."
        )
    if training.parallel == "fsdp" and training.dtype == "float16":
        raise ConfigError(
            "training.dtype=float16 with training.parallel=fsdp is not supported: float16's loss scaler would "
            "decide on inf gradients per shard. Use training.dtype=bfloat16 (or auto) with FSDP, or "
            "training.parallel=ddp for float16."
        )


def check_train_environment(cfg: DictConfig, run_dir: Path | str | None = None) -> None:
    """Whether this machine can run the config: the device, the data dir and the run dir. Under
    DDP, after joining the process group: a rank that fails here ends the others at once, where
    one that never joined would leave them waiting for the rendezvous timeout."""
    check_device("training.device", cfg.training.device)
    if reads_prepared_data(cfg.data):
        check_writable_dir("paths.data_dir", cfg.paths.data_dir, "NANUGPT_DATA", why=DATA_DIR_WHY)
    if run_dir is not None:
        where = "paths.output_root (run dirs go under it) or hydra.run.dir"
        check_writable_dir("hydra.run.dir", run_dir, set_instead=where, why=RUN_DIR_WHY)


def check_sampling_options(options: Mapping[str, Any]) -> None:
    """The ranges of generate's sampling options (the CLI's keys, or `nanugpt.generate.Sampler`'s
    keyword arguments, which no schema types)."""
    check_ranges(options, GenerateConfig)
    for i, stop in enumerate(options["stop"] or []):
        check_value(f"stop[{i}]", stop, str, fix="An empty stop string would end every sample before it starts.")


def validate_generate(cfg: DictConfig) -> None:
    """Every value of `python -m nanugpt.generate`'s keys and its device, before the checkpoint loads."""
    check_required(cfg, {"ckpt": "ckpt=outputs/<date>/<time> (a run dir, or one of its checkpoints)"})
    check_sampling_options(cfg)
    check_device("device", cfg.device)


def validate_prepare(cfg: DictConfig) -> None:
    """`python -m nanugpt.prepare`'s mandatory values and data dir; the plugins check their arguments."""
    check_required(cfg, {"data.path": "data.path=/path/to/file.txt (or a directory)"})
    if reads_prepared_data(cfg.data):
        check_writable_dir("paths.data_dir", cfg.paths.data_dir, "NANUGPT_DATA", why=DATA_DIR_WHY)


def validate_bench(cfg: DictConfig) -> None:
    """`python -m nanugpt.bench`'s own `bench.*` values; the training sections it composes are
    checked by train.yaml's ValidateAtStart callback, as for a run."""
    check_ranges(cfg.bench, BenchConfig, "bench.")


@contextmanager
def _exit_on_user_error() -> Iterator[None]:
    try:
        yield
    except UserError as err:
        raise SystemExit(f"Error: {err}") from None


class ValidateAtStart(Callback):
    """train.yaml's `hydra.callbacks`: `validate_train` before Hydra creates the run dir and opens
    log.txt in it, so a bad value leaves no run dir behind and a run dir that cannot be created is
    one paragraph, not a traceback from Hydra's mkdir. Hydra turns a callback's exceptions into
    warnings, so a UserError ends the process here with SystemExit."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with _exit_on_user_error():
            validate_train(config)
            if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # a DDP rank checks its machine once in its group
                check_train_environment(config, config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The values every job shares and the sweep dir, before a launcher submits any job; each
        # job checks its own machine (a Slurm login node has no GPU) and its swept values.
        with _exit_on_user_error():
            validate_train(config)
            where = "paths.sweep_root (sweeps go under it) or hydra.sweep.dir"
            check_writable_dir("hydra.sweep.dir", config.hydra.sweep.dir, set_instead=where, why=RUN_DIR_WHY)
