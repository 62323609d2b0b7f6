"""Benchmarks that print figures: `python -m nanugpt.bench train|generate|prepare|eval|speedrun [overrides]`.

Overrides are the training config's (`model=gpt2_124m training.compile=true ...`) plus the
bench's own `bench.*` keys (defaults in BENCH_DEFAULTS). Each command prints a table and writes
JSON (`bench.out`, default bench-<what>.json) with the machine, torch version, the resolved
config and the medians over `bench.repeats` repeats. Warm-up steps (and compilation) are never
timed. Wall-clock figures are only as good as the machine is quiet: say how loaded it was.

    python -m nanugpt.bench train                                  # default model, real data
    python -m nanugpt.bench train model=gpt2_124m training.compile=true bench.synthetic=true \\
        training.device_batch_size=16 training.global_batch_size=16   # H100 MFU figure
    python -m nanugpt.bench generate bench.new_tokens=500          # KV cache vs recompute
    python -m nanugpt.bench prepare bench.bpe_file=/path/to/r50k_base.tiktoken
    python -m nanugpt.bench eval
    python -m nanugpt.bench speedrun data.local_path=/path/to/tinyshakespeare.txt bench.repeats=5
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nanugpt import dist
from nanugpt.config import register_configs
from nanugpt.data.build import build_data, token_stream_data
from nanugpt.data.contract import BatchSpec, Data, TokenSplits
from nanugpt.data.loader import RandomWindowBatches
from nanugpt.errors import ConfigError
from nanugpt.models.with_loss import ModelWithLoss
from nanugpt.observe import peak_flops
from nanugpt.sampling import generate
from nanugpt.train import autocast_dtype, configure_matmul_precision, set_vocab_size, train_step
from nanugpt.utils import CONF_DIR, seed_everything

BENCH_DEFAULTS: dict[str, Any] = {
    "warmup": 3,  # untimed steps (compilation, allocator warm-up)
    "steps": 10,  # timed steps per repeat
    "repeats": 3,  # the figure is the median over repeats
    "synthetic": False,  # random tokens instead of the configured data (train/eval)
    "plain_loop": True,  # train: also time a minimal plain-torch loop on the same model
    "new_tokens": 500,  # generate
    "batch_sizes": [1, 8],  # generate
    "prompt_tokens": 8,  # generate
    "compile_decode": False,  # generate: also time a torch.compile'd decode step
    "ckpt": None,  # generate: a checkpoint instead of random weights
    "max_mb": 8.0,  # prepare: cap the corpus at this many MB
    "bpe_file": None,  # prepare: a local .tiktoken rank file (r50k_base / gpt2); null skips tiktoken
    "experiment": "shakespeare_speedrun",  # speedrun: the experiment config to run end to end
    "target_loss": 1.88,  # speedrun: final val loss to reach
    "target_wall_s": 45.0,  # speedrun: wall seconds from command start to exit
    "out": None,  # JSON path; null: bench-<what>.json
    "budget_s": 480.0,  # gpu: stop starting sections once this many seconds have passed
    "dry_run": False,  # gpu: toy sizes on the CPU (CI), to prove the check runs end to end
    "out_dir": None,  # gpu: where gpu.json, gpu.md and each section's JSON and log go; null: bench-gpu/
    "shakespeare_path": None,  # gpu: a local tinyshakespeare.txt for the baby-GPT section (skipped without)
}


# ---------------------------------------------------------------- shared helpers


def parse_args(argv: list[str]) -> tuple[str, dict[str, Any], list[str]]:
    commands = ("train", "generate", "prepare", "eval", "speedrun", "gpu")
    if not argv or argv[0] not in commands:
        raise SystemExit(
            f"usage: python -m nanugpt.bench {{{'|'.join(commands)}}} [overrides] [bench.KEY=VALUE]; got {argv[:1]}"
        )
    bench = dict(BENCH_DEFAULTS)
    overrides = []
    for arg in argv[1:]:
        if arg.startswith("bench."):
            key, _, value = arg[len("bench.") :].partition("=")
            if key not in bench:
                raise SystemExit(f"Unknown bench option bench.{key}; known: {', '.join('bench.' + k for k in bench)}.")
            bench[key] = _coerce(value)
        else:
            overrides.append(arg)
    return argv[0], bench, overrides


def _coerce(value: str) -> Any:
    """`bench.x=3` -> 3, `=1e9` -> 1e9, `=[1,8]` -> [1, 8], `=true` -> True, `=null` -> None, else the string."""
    import yaml

    parsed = yaml.safe_load(value) if value else None
    try:  # YAML 1.1 reads 1e9 (no dot) as a string
        return float(parsed) if isinstance(parsed, str) else parsed
    except ValueError:
        return parsed


def compose_config(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_avg_1m": round(__import__("os").getloadavg()[0], 2),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=False)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)))


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def write_json(what: str, bench: dict, cfg: DictConfig | None, device: torch.device, rows: list[dict]) -> Path:
    out = Path(bench["out"] or f"bench-{what}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "bench": what,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m nanugpt.bench " + " ".join(sys.argv[1:]),
        "machine": machine_info(device),
        "bench_options": bench,
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if cfg is not None else None,
        "results": rows,
    }
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"\nwrote {out}")
    return out


def setup(cfg: DictConfig, bench: dict) -> tuple[torch.device, BatchSpec, Data]:
    """Device, threads, matmul precision, and the trainer's own data (one rank)."""
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    device = dist.resolve_device(cfg.training.device, 0)
    configure_matmul_precision(device)
    seed_everything(cfg.training.seed)
    spec = BatchSpec.from_config(cfg, device=device)
    if bench["synthetic"]:
        vocab = cfg.model.get("vocab_size") or instantiate(cfg.tokenizer).vocab_size
        rng = np.random.default_rng(0)
        n = max(1_000_000, 4 * cfg.training.global_batch_size * (cfg.model.context_length + 1))
        splits = {"train": [rng.integers(0, vocab, n, dtype=np.int64).astype(np.uint32)]}
        splits["val"] = [rng.integers(0, vocab, n // 10, dtype=np.int64).astype(np.uint32)]
        data = token_stream_data(TokenSplits(splits, vocab, {"source": "synthetic"}), spec, cfg.eval.iters)
    else:
        data = build_data(cfg, spec)
    set_vocab_size(cfg, data.vocab_size)
    return device, spec, data


# ---------------------------------------------------------------- train


def bench_train(cfg: DictConfig, bench: dict) -> tuple[torch.device, list[dict]]:
    device, spec, data = setup(cfg, bench)
    tcfg = cfg.training
    amp_dtype = autocast_dtype(tcfg.dtype, device)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)
    T = cfg.model.context_length
    tokens_per_step = tcfg.global_batch_size * T
    # MFU's denominator as the trainer takes it: logging.peak_tflops, else the known-GPU table
    peak = cfg.logging.peak_tflops * 1e12 if cfg.logging.peak_tflops else peak_flops(device, amp_dtype)

    model = instantiate(cfg.model)
    flops_per_token = model.flops_per_token()
    net = ModelWithLoss(model, instantiate(cfg.loss)).to(device)
    optimizer = instantiate(cfg.optim)(model)
    scheduler = instantiate(cfg.sched)(optimizer)
    scaler = instantiate(cfg.scaler)(device.type, float16=amp_dtype == torch.float16)
    if tcfg.compile:
        net = torch.compile(net)
    info = dist.DistInfo(rank=0, local_rank=0, world_size=1, device=device)

    def nanugpt_step() -> float:
        """The trainer's own step (nanugpt.train.train_step); returns seconds waiting on data."""
        return train_step(net, model, optimizer, scheduler, scaler, data.train, autocast, info, tcfg.grad_clip).data_s

    loops: dict[str, Callable[[], float]] = {"nanugpt": nanugpt_step}

    if bench["plain_loop"]:
        # The minimal loop everyone writes first: same model and optimizer, no wrappers, random
        # windows of one token array (the largest train shard).
        if not isinstance(data.train, RandomWindowBatches):
            raise ConfigError(
                f"bench.plain_loop=true needs token-stream data, not data={cfg.data._target_.rsplit('.', 1)[-1]}; "
                "pass bench.plain_loop=false."
            )
        accum = spec.grad_accum_steps
        train_tokens = max(data.train.windows.shards, key=len)
        plain_model = instantiate(cfg.model).to(device)
        plain_opt = instantiate(cfg.optim)(plain_model)
        step_model: Callable = torch.compile(plain_model) if tcfg.compile else plain_model
        tokens_t = torch.from_numpy(train_tokens.astype(np.int64))

        def plain_step() -> float:
            t = time.perf_counter()
            ix = torch.randint(len(tokens_t) - T - 1, (tcfg.global_batch_size,))
            xy = torch.stack([tokens_t[i : i + T + 1] for i in ix.tolist()]).to(device)
            data_s = time.perf_counter() - t
            for x, y in zip(xy[:, :-1].chunk(accum), xy[:, 1:].chunk(accum), strict=False):
                with autocast:
                    logits = plain_model.logits(step_model(x))
                    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
                (loss / accum).backward()
            torch.nn.utils.clip_grad_norm_(plain_model.parameters(), tcfg.grad_clip)
            plain_opt.step()
            plain_opt.zero_grad(set_to_none=True)
            loss.item()
            return data_s

        loops["plain torch loop"] = plain_step
    rows = time_train_steps(loops, bench, device, tokens_per_step, flops_per_token, peak)
    if device.type == "cuda":  # the process's peak over every loop timed
        for row in rows:
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return device, rows


def time_train_steps(
    loops: dict[str, Callable[[], float]],
    bench: dict,
    device: torch.device,
    tokens_per_step: int,
    flops_per_token: int,
    peak: float | None,
) -> list[dict]:
    """Warm each loop up, then time `bench.steps` steps of each in turn per repeat (interleaved,
    so a load change on a shared machine hits every loop alike); figures are medians."""
    warmup_s = {}
    for name, step in loops.items():
        t = time.perf_counter()
        for _ in range(bench["warmup"]):
            step()
        sync(device)
        warmup_s[name] = time.perf_counter() - t  # with training.compile=true: mostly compilation
    step_s: dict[str, list[float]] = {n: [] for n in loops}
    cpu_s: dict[str, list[float]] = {n: [] for n in loops}
    data_share: dict[str, list[float]] = {n: [] for n in loops}
    for repeat in range(bench["repeats"]):
        order = list(loops) if repeat % 2 == 0 else list(reversed(loops))
        for name in order:
            sync(device)
            t, c, waited = time.perf_counter(), time.process_time(), 0.0
            for _ in range(bench["steps"]):
                waited += loops[name]()
            sync(device)
            elapsed = time.perf_counter() - t
            step_s[name].append(elapsed / bench["steps"])
            cpu_s[name].append((time.process_time() - c) / bench["steps"])
            data_share[name].append(waited / elapsed)
    rows = []
    for name in loops:
        sec = median(step_s[name])
        tps = tokens_per_step / sec
        achieved = flops_per_token * tps
        rows.append(
            {
                "loop": name,
                "step_ms": sec * 1e3,
                "cpu_ms_per_step": median(cpu_s[name]) * 1e3,
                "tokens_per_s": tps,
                "data_wait_pct": 100 * median(data_share[name]),
                "tflops": achieved / 1e12,
                "mfu_pct": 100 * achieved / peak if peak else None,
                "warmup_s": warmup_s[name],
                "step_ms_all": [round(x * 1e3, 3) for x in step_s[name]],
            }
        )
    if len(rows) == 2:
        rows[0]["x_vs_plain"] = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    return rows


# ---------------------------------------------------------------- eval


def bench_eval(cfg: DictConfig, bench: dict) -> tuple[torch.device, list[dict]]:
    device, _, data = setup(cfg, bench)
    from nanugpt.train import evaluate

    model = instantiate(cfg.model)
    net = ModelWithLoss(model, instantiate(cfg.loss)).to(device)
    if cfg.training.compile:
        net = torch.compile(net)
    amp_dtype = autocast_dtype(cfg.training.dtype, device)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)
    info = dist.DistInfo(rank=0, local_rank=0, world_size=1, device=device)
    batches = data.val
    for _ in range(max(1, bench["warmup"] // 3)):
        evaluate(net, batches, autocast, info)
    times = []
    for _ in range(bench["repeats"]):
        sync(device)
        t = time.perf_counter()
        evaluate(net, batches, autocast, info)
        sync(device)
        times.append(time.perf_counter() - t)
    tokens = cfg.eval.iters * cfg.training.device_batch_size * cfg.model.context_length
    sec = median(times)
    return device, [
        {
            "eval_iters": cfg.eval.iters,
            "batch": cfg.training.device_batch_size,
            "tokens": tokens,
            "sec_per_eval": sec,
            "tokens_per_s": tokens / sec,
        }
    ]


# ---------------------------------------------------------------- generate


def bench_generate(cfg: DictConfig, bench: dict) -> tuple[torch.device, list[dict]]:
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    device = dist.resolve_device(cfg.training.device, 0)
    configure_matmul_precision(device)
    seed_everything(cfg.training.seed)
    if bench["ckpt"]:
        from nanugpt.checkpoint import load_checkpoint
        from nanugpt.generate import build_from_checkpoint

        model, _ = build_from_checkpoint(load_checkpoint(Path(bench["ckpt"]), map_location=device), device)
    else:
        set_vocab_size(cfg, instantiate(cfg.tokenizer).vocab_size)
        model = instantiate(cfg.model).to(device).eval()
    L = model.context_length
    variants: list[tuple[str, dict]] = [
        ("recompute, slide by one", {"use_cache": False, "window_keep": L}),
        ("recompute, half-window", {"use_cache": False}),
        ("KV cache, half-window", {"use_cache": True}),
    ]
    if bench["compile_decode"]:
        variants.append(
            ("KV cache + compiled decode", {"use_cache": True, "decode_step": torch.compile(model, dynamic=True)})
        )
    rows = []
    for batch in bench["batch_sizes"]:
        prompt = torch.randint(0, model.vocab_size, (batch, bench["prompt_tokens"]), device=device)
        baseline = None
        for name, kw in variants:

            def run(prompt: torch.Tensor = prompt, kw: dict = kw) -> torch.Tensor:
                return generate(model, prompt, bench["new_tokens"], temperature=0, **kw)

            for _ in range(max(1, bench["warmup"] // 3)):
                out = run()
            times, cpu = [], []
            for _ in range(bench["repeats"]):
                sync(device)
                t, c = time.perf_counter(), time.process_time()
                out = run()
                sync(device)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            tps = batch * bench["new_tokens"] / median(times)
            baseline = baseline or tps
            rows.append(
                {
                    "batch": batch,
                    "path": name,
                    "new_tokens": bench["new_tokens"],
                    "sec": median(times),
                    "cpu_sec": median(cpu),
                    "tokens_per_s": tps,
                    "x_vs_slide": tps / baseline,
                    "greedy_tokens": out[0, -8:].tolist(),
                }
            )
    return device, rows


# ---------------------------------------------------------------- prepare


def bench_prepare(cfg: DictConfig, bench: dict) -> tuple[torch.device, list[dict]]:
    """MB/s of text -> token array: our tokenizers (what nanugpt.prepare calls) vs tiktoken's own
    encode_ordinary_batch on the same text."""
    from nanugpt.tokenizers.byte import ByteTokenizer

    text = "".join(instantiate(cfg.data).splits().values())
    text = text[: int(bench["max_mb"] * 1e6)]
    mb = len(text.encode("utf-8")) / 1e6
    rows = []

    def timed(name: str, fn: Callable[[], Any]) -> dict:
        fn()  # warm-up (tiktoken builds its regex and caches on first use)
        times = []
        for _ in range(bench["repeats"]):
            t = time.perf_counter()
            n = fn()
            times.append(time.perf_counter() - t)
        return {"tokenizer": name, "mb": mb, "tokens": n, "sec": median(times), "mb_per_s": mb / median(times)}

    byte = ByteTokenizer()
    rows.append(timed("byte (nanugpt)", lambda: len(byte.encode(text))))
    enc = load_tiktoken_file(bench["bpe_file"])
    if enc is None:
        print("prepare: no bench.bpe_file given (a local r50k_base/gpt2 .tiktoken file); skipping tiktoken rows.")
    else:
        from types import SimpleNamespace

        from nanugpt.tokenizers.tiktoken_bpe import TiktokenTokenizer, split_for_batch

        # nanugpt's own tokenizer methods on this encoding (duck-typed self: the class insists on
        # the real rank files' checksums, and the bench also takes other rank files)
        ours = SimpleNamespace(enc=enc)
        chunks = split_for_batch(text)
        rows.append(
            timed(
                "tiktoken encode_ordinary_batch (raw)", lambda: sum(len(c) for c in enc.encode_ordinary_batch(chunks))
            )
        )
        raw = rows[-1]["sec"]
        for name, fn in [
            (
                "nanugpt .encode_batch (hub data path)",
                lambda: sum(len(a) for a in TiktokenTokenizer.encode_batch(ours, chunks)),
            ),
            ("nanugpt .encode (local text path: split + batch)", lambda: len(TiktokenTokenizer.encode(ours, text))),
        ]:
            rows.append(timed(name, fn))
            rows[-1]["overhead_pct"] = 100 * (rows[-1]["sec"] - raw) / raw
    return torch.device("cpu"), rows


def load_tiktoken_file(path: str | None) -> Any:
    if not path:
        return None
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    file = Path(path).expanduser()
    if not file.is_file():
        raise SystemExit(f"bench.bpe_file={path} does not exist; pass a local r50k_base.tiktoken (gpt2) rank file.")
    ranks = load_tiktoken_bpe(str(file))
    # r50k_base's pre-tokenizer (tiktoken_ext.openai_public)
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding(
        name=file.stem, pat_str=pat, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)}
    )


# ---------------------------------------------------------------- speedrun


def bench_speedrun(overrides: list[str], bench: dict) -> list[dict]:
    """Run `python -m nanugpt.train experiment=<bench.experiment> [overrides]` bench.repeats
    times, each a fresh process with a fresh data cache and run dir, timing the wall clock from
    process start to exit (imports, data preparation, compilation, evals and checkpoint
    included), and read the final val loss from its metrics.jsonl."""
    import os
    import resource
    import subprocess
    import tempfile

    rows = []
    for i in range(bench["repeats"]):
        with tempfile.TemporaryDirectory(prefix="nanugpt-speedrun-") as tmp:
            cmd = [
                sys.executable,
                "-m",
                "nanugpt.train",
                f"experiment={bench['experiment']}",
                *overrides,
                f"paths.data_dir={tmp}/data",
                f"hydra.run.dir={tmp}/run",
                "logging.wandb.mode=disabled",
            ]
            load = os.getloadavg()[0]
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)  # what load cannot inflate much
            if proc.returncode != 0:
                raise SystemExit(
                    f"speedrun repeat {i} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
                )
            metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        evals = [(m["step"], m["val/loss"]) for m in metrics if "val/loss" in m]
        # the first 10 steps hold compilation and warm-up
        tokens_per_s = median([m["train/tokens_per_sec"] for m in metrics[10:] or metrics])
        first_hit = next((step for step, loss in evals if loss <= bench["target_loss"]), None)
        rows.append(
            {
                "repeat": i,
                "wall_s": wall,
                "cpu_s": cpu,
                "steps": metrics[-1]["step"],
                "final_val_loss": evals[-1][1],
                "median_tokens_per_s": tokens_per_s,
                "final_train_loss": metrics[-1]["train/loss"],
                "first_eval_step_at_target": first_hit,
                "load_avg_1m_at_start": round(load, 2),
            }
        )
        print(
            f"repeat {i}: {wall:.1f} s wall ({cpu:.1f} CPU s), final val loss {evals[-1][1]:.4f} (load avg {load:.1f})",
            flush=True,
        )
    walls, losses = [r["wall_s"] for r in rows], [r["final_val_loss"] for r in rows]
    ok = median(walls) <= bench["target_wall_s"] and max(losses) <= bench["target_loss"]
    rows.append(
        {
            "repeat": "median",
            "wall_s": median(walls),
            "cpu_s": median([r["cpu_s"] for r in rows]),
            "final_val_loss": median(losses),
            "worst_val_loss": max(losses),
            "goal_met": ok,
        }
    )
    return rows


# ---------------------------------------------------------------- gpu

# The GPU check: each section is one `python -m nanugpt.bench <what>` process (a crash or a hang
# costs that section only, and each starts with an empty GPU), run in order of value until the
# time budget runs out. GPT-2 shapes with random tokens where the data does not matter.
GPT2 = ["model=gpt2_124m", "model.vocab_size=50257", "bench.synthetic=true", "bench.plain_loop=false"]
FAST_GPU = ["training.compile=true", "optim=adamw_nanogpt"]  # fused AdamW on CUDA


def batch(n: int) -> list[str]:
    return [f"training.device_batch_size={n}", f"training.global_batch_size={n}"]


GPU_SECTIONS: list[dict[str, Any]] = [
    {
        "name": "gpt2_124m, batch 16, AdamW (and a plain torch loop)",
        "what": "train",
        "est_s": 120,
        "args": [*GPT2, *FAST_GPU, *batch(16), "bench.plain_loop=true"],
    },
    {
        "name": "baby GPT, 500 steps (nanogpt_shakespeare_char)",
        "what": "speedrun",
        "est_s": 90,
        "needs_data": True,
        "args": [
            "bench.experiment=nanogpt_shakespeare_char",
            "bench.repeats=1",
            "training.max_steps=500",
            "eval.every=250",
            "bench.target_loss=1.7",
            "bench.target_wall_s=120",
        ],
    },
    {
        "name": "gpt2_124m generate, batch 1 and 8, to context 1024",
        "what": "generate",
        "est_s": 60,
        "args": [
            "model=gpt2_124m",
            "model.vocab_size=50257",
            "bench.prompt_tokens=8",
            "bench.new_tokens=1016",
            "bench.repeats=2",
        ],
    },
    {"name": "gpt2_124m, batch 64, AdamW", "what": "train", "est_s": 75, "args": [*GPT2, *FAST_GPU, *batch(64)]},
    {
        "name": "gpt2_124m, batch 16, Muon",
        "what": "train",
        "est_s": 90,
        "args": [*GPT2, "training.compile=true", "optim=muon", *batch(16)],
    },
    {
        "name": "gpt_modern_124m, batch 16, AdamW",
        "what": "train",
        "est_s": 90,
        "args": ["model=gpt_modern_124m", *GPT2[1:], *FAST_GPU, *batch(16)],
    },
    {
        "name": "llama3_1b, batch 4 x 2048, AdamW",
        "what": "train",
        "est_s": 120,
        "args": ["model=llama3_1b", "model.vocab_size=128256", *GPT2[2:], *FAST_GPU, *batch(4)],
        "dry_args": ["model.n_kv_head=2", "model.intermediate_size=128"],
    },
    {
        "name": "gpt2_124m generate, compiled decode step",
        "what": "generate",
        "est_s": 90,
        "args": [
            "model=gpt2_124m",
            "model.vocab_size=50257",
            "bench.prompt_tokens=8",
            "bench.new_tokens=1016",
            "bench.repeats=2",
            "bench.batch_sizes=[1]",
            "bench.compile_decode=true",
        ],
    },
]

# --dry-run: the same sections on a CPU at toy size, so CI proves the check runs end to end.
DRY_RUN = [
    "training.device=cpu",
    "training.compile=false",
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.context_length=32",
    "training.threads=1",
    "bench.warmup=1",
    "bench.steps=2",
    "bench.repeats=1",
]
DRY_RUN_BY_WHAT = {
    "train": [*batch(4), "model.vocab_size=512"],
    "generate": ["bench.new_tokens=24", "model.vocab_size=512", "bench.compile_decode=false"],
    "speedrun": ["training.max_steps=6", "eval.every=3", "eval.iters=2", *batch(4)],
}


def bench_gpu(overrides: list[str], bench: dict) -> list[dict]:
    """Run GPU_SECTIONS in order until `bench.budget_s` is spent, writing gpu.json (every row,
    each section's command and the tail of its output) and gpu.md (a table per section) under
    `bench.out_dir` after every section, so a cut-off run still leaves its figures."""
    import os
    import subprocess
    import tempfile

    scratch = tempfile.mkdtemp(prefix="nanugpt-gpu-check-")  # each section's own JSON; gpu.json gathers them
    out_dir = Path(bench["out_dir"] or "bench-gpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + bench["budget_s"]
    dry = bench["dry_run"]
    if not dry and not torch.cuda.is_available():
        raise SystemExit(
            "nanugpt.bench gpu: no CUDA device here. On a CPU pass bench.dry_run=true (toy sizes, proves the check "
            "runs)."
        )
    results: list[dict] = []
    for i, section in enumerate(GPU_SECTIONS):
        name, what = section["name"], section["what"]
        args = [
            *section["args"],
            *(DRY_RUN + DRY_RUN_BY_WHAT[what] + section.get("dry_args", []) if dry else []),
            *overrides,
        ]
        entry: dict[str, Any] = {"section": name, "bench": what, "args": args, "rows": []}
        results.append(entry)
        remaining = deadline - time.perf_counter()
        if section.get("needs_data"):
            if not bench["shakespeare_path"] or not Path(bench["shakespeare_path"]).is_file():
                entry["status"] = f"skipped: bench.shakespeare_path={bench['shakespeare_path']} is not a file"
                write_gpu_report(out_dir, results)
                continue
            # a dry run takes any text file in its place (tinyshakespeare is checked by sha256)
            args += (
                ["data=text", f"data.path={bench['shakespeare_path']}"]
                if dry
                else [f"data.local_path={bench['shakespeare_path']}"]
            )
        if not dry and remaining < section["est_s"]:
            entry["status"] = (
                f"skipped: {remaining:.0f} s of the {bench['budget_s']:.0f} s budget left, needs ~{section['est_s']} s"
            )
            write_gpu_report(out_dir, results)
            continue
        json_out = Path(scratch) / f"section{i}.json"
        cmd = [sys.executable, "-m", "nanugpt.bench", what, *args, f"bench.out={json_out}"]
        print(
            f"\n=== [{i + 1}/{len(GPU_SECTIONS)}] {name} ({remaining:.0f} s of budget left)\n$ {' '.join(cmd[1:])}",
            flush=True,
        )
        t = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=max(remaining, 1.0),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            output = proc.stdout + proc.stderr
            if proc.returncode == 0:
                entry["status"] = "ok"
                entry["rows"] = json.loads(json_out.read_text())["results"]
                entry["machine"] = json.loads(json_out.read_text())["machine"]
            else:
                entry["status"] = f"failed: exit {proc.returncode}"
        except subprocess.TimeoutExpired as err:
            output = (
                (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
            )
            entry["status"] = f"stopped at the budget after {time.perf_counter() - t:.0f} s"
        entry["wall_s"] = time.perf_counter() - t
        entry["log_tail"] = output[-4000:]
        print(output[-3000:] if entry["status"] != "ok" else _table_lines(entry["rows"]), flush=True)
        print(f"=== {name}: {entry['status']} in {entry['wall_s']:.0f} s", flush=True)
        write_gpu_report(out_dir, results)
    return results


def _table_lines(rows: list[dict]) -> str:
    flat = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in rows]
    if not flat:
        return ""
    cols = list(dict.fromkeys(k for r in flat for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in flat]
    return "\n".join(lines)


def write_gpu_report(out_dir: Path, results: list[dict]) -> None:
    """gpu.json (everything) and gpu.md (one table per section), rewritten after each section."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    record = {
        "bench": "gpu",
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(device),
        "sections": results,
    }
    (out_dir / "gpu.json").write_text(json.dumps(record, indent=2, default=str))
    machine = record["machine"]
    lines = [
        f"# nanugpt GPU check: {machine.get('gpu', 'no GPU (dry run)')}, torch {machine['torch']}, "
        f"{record['time_utc']}",
        "",
    ]
    for entry in results:
        lines += [
            f"## {entry['section']}: {entry['status']}" + (f" ({entry['wall_s']:.0f} s)" if "wall_s" in entry else ""),
            "",
        ]
        lines += [f"`python -m nanugpt.bench {entry['bench']} {' '.join(entry['args'])}`", ""]
        if entry["rows"]:
            lines += [_table_lines(entry["rows"]), ""]
    (out_dir / "gpu.md").write_text("\n".join(lines))


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> list[dict]:
    what, bench, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if what == "gpu":
        results = bench_gpu(overrides, bench)
        failed = [e["section"] for e in results if e["status"].startswith("failed")]
        print(
            f"\nGPU check: {sum(e['status'] == 'ok' for e in results)}/{len(results)} sections ok; report in "
            f"{bench['out_dir'] or 'bench-gpu'}/gpu.md"
        )
        if failed:
            raise SystemExit(f"GPU check: failed sections: {'; '.join(failed)}")
        return results
    if what == "speedrun":  # whole training processes: the config is composed in each of them
        cfg = compose_config([f"experiment={bench['experiment']}", *overrides])
        rows = bench_speedrun(overrides, bench)
        print_table(
            f"nanugpt bench speedrun | torch {torch.__version__} | {bench['experiment']} | goal: val loss <= "
            f"{bench['target_loss']} in <= {bench['target_wall_s']} s",
            rows,
        )
        write_json(what, bench, cfg, torch.device("cpu"), rows)
        return rows
    cfg = compose_config(overrides)
    run = {"train": bench_train, "eval": bench_eval, "generate": bench_generate, "prepare": bench_prepare}[what]
    device, rows = run(cfg, bench)
    print_table(
        f"nanugpt bench {what} | torch {torch.__version__} | {device} | threads {torch.get_num_threads()} | load avg "
        f"{__import__('os').getloadavg()[0]:.1f}",
        [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows],
    )
    write_json(what, bench, cfg, device, rows)
    return rows


if __name__ == "__main__":
    main()
