"""`python -m nanugpt.bench gpu`: the GPU check. Each section is one `python -m nanugpt.bench
<what>` process (a crash or a hang costs that section only, and each starts with an empty GPU),
run in order of value until the time budget runs out; gpu.json and gpu.md are rewritten after
every section, so a cut-off run still leaves its figures. `bench.dry_run=true` runs the same
sections at toy size on a CPU (what CI and launch/gpu_check.sh's users check first)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from nanugpt.bench.common import fmt, machine_info, training_overrides

# GPT-2 shapes with random tokens where the data does not matter.
GPT2 = ["model=gpt2_124m", "model.vocab_size=50257", "bench.synthetic=true", "bench.plain_loop=false"]
FAST_GPU = ["training.compile=true", "optim=adamw_nanogpt"]  # fused AdamW on CUDA
# gpt2_124m decoding from an 8-token prompt to its full context of 1024
GENERATE_1024 = [
    "model=gpt2_124m",
    "model.vocab_size=50257",
    "bench.prompt_tokens=8",
    "bench.new_tokens=1016",
    "bench.repeats=2",
]


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
        "args": GENERATE_1024,
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
            *GENERATE_1024,
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


def bench_gpu(cfg: DictConfig) -> None:
    """Run GPU_SECTIONS in order until `bench.budget_s` is spent, writing gpu.json (every row,
    each section's command and the tail of its output) and gpu.md (a table per section) under
    `bench.out_dir` after every section. Fails (exit 1) when a section failed."""
    bench = cfg.bench
    if not bench.dry_run and not torch.cuda.is_available():
        raise SystemExit(
            "nanugpt.bench gpu: no CUDA device here. On a CPU pass bench.dry_run=true (toy sizes, proves the check "
            "runs)."
        )
    scratch = Path(tempfile.mkdtemp(prefix="nanugpt-gpu-check-"))  # each section's own JSON; gpu.json gathers them
    out_dir = Path(bench.out_dir or "bench-gpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + bench.budget_s
    results: list[dict] = []
    overrides = training_overrides()  # the command line's, on to every section
    for i, section in enumerate(GPU_SECTIONS):
        args = [
            *section["args"],
            *(DRY_RUN + DRY_RUN_BY_WHAT[section["what"]] + section.get("dry_args", []) if bench.dry_run else []),
            *overrides,
        ]
        entry: dict[str, Any] = {"section": section["name"], "bench": section["what"], "args": args, "rows": []}
        results.append(entry)
        remaining = deadline - time.perf_counter()
        if section.get("needs_data") and not (bench.shakespeare_path and Path(bench.shakespeare_path).is_file()):
            entry["status"] = f"skipped: bench.shakespeare_path={bench.shakespeare_path} is not a file"
        elif not bench.dry_run and remaining < section["est_s"]:
            entry["status"] = (
                f"skipped: {remaining:.0f} s of the {bench.budget_s:.0f} s budget left, needs ~{section['est_s']} s"
            )
        else:
            # a dry run takes any text file in place of tinyshakespeare (which is checked by sha256)
            if section.get("needs_data"):
                args += (
                    ["data=text", f"data.path={bench.shakespeare_path}"]
                    if bench.dry_run
                    else [f"data.local_path={bench.shakespeare_path}"]
                )
            print(
                f"\n=== [{i + 1}/{len(GPU_SECTIONS)}] {section['name']} ({remaining:.0f} s of budget left)", flush=True
            )
            run_section(entry, scratch / f"section{i}.json", remaining)
        write_gpu_report(out_dir, results)
    failed = [e["section"] for e in results if e["status"].startswith("failed")]
    print(
        f"\nGPU check: {sum(e['status'] == 'ok' for e in results)}/{len(results)} sections ok; report in "
        f"{out_dir}/gpu.md"
    )
    if failed:
        raise SystemExit(f"GPU check: failed sections: {'; '.join(failed)}")


def run_section(entry: dict[str, Any], json_out: Path, timeout_s: float) -> None:
    """One section's benchmark as its own process; its status, rows and log tail go into `entry`."""
    cmd = [sys.executable, "-m", "nanugpt.bench", entry["bench"], *entry["args"], f"bench.out={json_out}"]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=max(timeout_s, 1.0),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        output = proc.stdout + proc.stderr
        if proc.returncode == 0:
            record = json.loads(json_out.read_text())
            entry["status"], entry["rows"], entry["machine"] = "ok", record["results"], record["machine"]
        else:
            entry["status"] = f"failed: exit {proc.returncode}"
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        entry["status"] = f"stopped at the budget after {time.perf_counter() - t:.0f} s"
    entry["wall_s"] = time.perf_counter() - t
    entry["log_tail"] = output[-4000:]
    print(output[-3000:] if entry["status"] != "ok" else _table_lines(entry["rows"]), flush=True)
    print(f"=== {entry['section']}: {entry['status']} in {entry['wall_s']:.0f} s", flush=True)


def _table_lines(rows: list[dict]) -> str:
    flat = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in rows]
    if not flat:
        return ""
    cols = list(dict.fromkeys(k for r in flat for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in flat]
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
