"""Smoke runs of every `python -m nanugpt.bench` command at CI sizes: they run, print a table and
write JSON with the machine, torch version, config and figures. The figures themselves are
documented in docs/benchmarks.md, never asserted."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import nanugpt.train
from nanugpt.bench.__main__ import split_command
from nanugpt.bench.prepare import load_tiktoken_file
from nanugpt.bench.train import bench_train
from nanugpt.config import validate_bench
from nanugpt.errors import ConfigError
from nanugpt.tokenizers.tiktoken_bpe import TiktokenTokenizer, split_for_batch
from tests.conftest import TINY, compose_train, run_cli

FAST = ["bench.warmup=1", "bench.steps=2", "bench.repeats=2"]


def run_bench(what: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{what}.json"
    proc = run_cli("nanugpt.bench", what, *TINY, *FAST, f"bench.out={out}", *extra, cwd=tmp_path)
    assert f"nanugpt bench {what}" in proc.stdout  # the table's title
    record = json.loads(out.read_text())
    assert record["bench"] == what
    assert record["machine"]["torch"] == torch.__version__
    assert record["machine"]["cpu_count"] >= 1
    return record


def test_bench_train_reports_throughput_and_data_wait(tmp_path: Path) -> None:
    record = run_bench("train", tmp_path, "training.device_batch_size=4")  # 2 accumulation steps
    assert record["config"]["model"]["n_layer"] == 2
    loops = {row["loop"]: row for row in record["results"]}
    assert set(loops) == {"nanugpt", "plain torch loop"}
    for row in loops.values():
        assert row["tokens_per_s"] > 0 and row["step_ms"] > 0
        assert 0 <= row["data_wait_pct"] < 100
        assert len(row["step_ms_all"]) == 2  # one per repeat; the figure is their median
        assert row["mfu_pct"] is None  # no known peak on CPU
    with_peak = run_bench("train", tmp_path, "bench.synthetic=true", "bench.plain_loop=false", "logging.peak_tflops=1")
    row = with_peak["results"][0]
    assert row["mfu_pct"] == pytest.approx(100 * row["tflops"] / 1.0)


def test_bench_eval_reports_seconds_per_pass(tmp_path: Path) -> None:
    (row,) = run_bench("eval", tmp_path)["results"]
    assert row["tokens"] == 4 * 8 * 32  # eval.iters x device batch x context
    assert row["sec_per_eval"] > 0
    # train.yaml's callbacks run, but a benchmark has no run dir: its JSON is all it writes (no .lock)
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_bench_memory_prints_estimate_and_measured_peak(tmp_path: Path) -> None:
    rows = {row["what"]: row for row in run_bench("memory", tmp_path, "bench.world_size=2")["results"]}
    peak = rows["peak total"]
    assert peak["estimate_mib"] > 0 and peak["measured_mib"] > 0  # the process's RSS grew by the model's steps
    assert {"ddp on 2 ranks, per rank", "zero1 on 2 ranks, per rank", "fsdp on 2 ranks, per rank"} <= set(rows)


def test_bench_generate_compares_cache_and_recompute(tmp_path: Path) -> None:
    rows = run_bench("generate", tmp_path, "bench.new_tokens=50", "bench.batch_sizes=[1,2]")["results"]
    assert {(r["batch"], r["path"]) for r in rows} == {
        (b, p) for b in (1, 2) for p in ("recompute, slide by one", "recompute, half-window", "KV cache, half-window")
    }
    for batch in (1, 2):
        same_policy = [r["greedy_tokens"] for r in rows if r["batch"] == batch and r["path"].endswith("half-window")]
        assert same_policy[0] == same_policy[1]  # past the 32-token window too: 8 + 50 tokens


def test_bench_prepare_compares_with_tiktoken(tmp_path: Path) -> None:
    rank_file = tmp_path / "toy.tiktoken"  # a real rank file format, tiny vocab: no download
    merges = [bytes([i]) for i in range(256)] + [b"th", b"he", b"the", b"in", b" t"]
    rank_file.write_text("".join(f"{base64.b64encode(tok).decode()} {rank}\n" for rank, tok in enumerate(merges)))
    rows = run_bench("prepare", tmp_path, f"bench.bpe_file={rank_file}", "bench.max_mb=0.2")["results"]
    by_name = {r["tokenizer"]: r for r in rows}
    assert by_name["byte (nanugpt)"]["tokens"] == pytest.approx(200_000, rel=0.01)
    raw = by_name["tiktoken encode_ordinary_batch (raw)"]
    assert raw["tokens"] < by_name["byte (nanugpt)"]["tokens"]  # merges happened
    ours = [
        by_name[n]
        for n in ("nanugpt .encode_batch (hub data path)", "nanugpt .encode (local text path: split + batch)")
    ]
    for row in ours:
        assert row["tokens"] == raw["tokens"]  # the same tokens, however they are batched
        assert "overhead_pct" in row
    for num_proc in (1, 2):  # the whole prepare: train and val tokenized apart, so merges at the cut may differ
        assert by_name[f"nanugpt prepare gpt2 num_proc={num_proc}"]["tokens"] == pytest.approx(raw["tokens"], abs=2)
        assert by_name[f"nanugpt prepare byte num_proc={num_proc}"]["tokens"] == by_name["byte (nanugpt)"]["tokens"]


def test_prepare_without_a_rank_file_skips_tiktoken_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    proc = run_cli("nanugpt.bench", "prepare", *TINY, *FAST, "bench.max_mb=0.05", f"bench.out={out}", cwd=tmp_path)
    assert "skipping tiktoken rows" in proc.stdout
    assert [r["tokenizer"] for r in json.loads(out.read_text())["results"]] == [
        "byte (nanugpt)",
        "nanugpt prepare byte num_proc=1",
        "nanugpt prepare byte num_proc=2",
    ]


def test_bench_loader_reports_tokens_per_s_against_an_h100(tmp_path: Path) -> None:
    (row,) = run_bench("loader", tmp_path, "bench.loader_gb=0.01")["results"]
    assert row["shards"] == 1 and row["batch"] == "2x8x32"  # bench.steps micro-batches of TINY's batch
    assert row["tokens_per_s"] > 0 and row["x_h100_gpt2"] == pytest.approx(row["tokens_per_s"] / 0.5e6)


def test_batched_tiktoken_encode_equals_one_encode(tmp_path: Path) -> None:
    merges = [bytes([i]) for i in range(256)] + [b"e\n", b"\n\n", b"ab"]
    rank_file = tmp_path / "t.tiktoken"
    rank_file.write_text("".join(f"{base64.b64encode(tok).decode()} {rank}\n" for rank, tok in enumerate(merges)))
    enc = load_tiktoken_file(str(rank_file))
    text = ("abc line\n\nnext one\n" * 5000) + "end"
    assert len(split_for_batch(text, 1000)) > 10
    assert "".join(split_for_batch(text, 1000)) == text
    ours = SimpleNamespace(
        enc=enc
    )  # the tokenizer's own encode on this toy rank file (the class checks real files' hashes)
    assert TiktokenTokenizer.encode(ours, text).tolist() == enc.encode_ordinary(text)


def test_bench_rejects_unknown_commands_and_options(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="usage"):
        split_command(["speed"])
    with pytest.raises(SystemExit, match=r"bench\.stepz; known: bench\.warmup, bench\.steps, "):
        split_command(["train", "bench.stepz=3"])
    with pytest.raises(SystemExit, match="bench.stepz"):
        split_command(["train", "+bench.stepz=3"])  # no appending around the schema either
    what, overrides = split_command(["generate", "bench.batch_sizes=[1,8]", "model.n_layer=2"])
    assert (what, overrides) == ("generate", ["bench.batch_sizes=[1,8]", "model.n_layer=2"])
    # the typed section: a wrong type fails at composition, before anything runs
    proc = run_cli("nanugpt.bench", "train", "bench.steps=abc", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "bench.steps=abc" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no run dir, no log file, no JSON
    # an out-of-range value: one paragraph naming the key, before the benchmark runs
    with pytest.raises(ConfigError, match=r"bench\.steps=0 is out of range"):
        validate_bench(compose_train(["bench.steps=0"], config_name="bench"))


def test_bench_train_times_the_trainers_own_train_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's nanugpt loop is `nanugpt.train.train_step` itself: replaced in-process by a
    counting wrapper, every warm-up and timed step of that loop goes through it."""
    real_step, calls = nanugpt.train.train_step, []

    def counting_step(*args, **kwargs):
        calls.append(args[0])
        return real_step(*args, **kwargs)

    monkeypatch.setattr(nanugpt.train, "train_step", counting_step)
    cfg = compose_train([*TINY, "bench.warmup=2", "bench.steps=3", "bench.repeats=2"], config_name="bench")
    result = bench_train(cfg)
    assert len(calls) == 2 + 3 * 2  # warm-up + steps x repeats; the plain loop does not call it
    assert all(isinstance(run, nanugpt.train.Run) for run in calls)
    assert [r["loop"] for r in result.rows] == ["nanugpt", "plain torch loop"]


def test_bench_speedrun_times_whole_training_runs(tmp_path: Path) -> None:
    """Two end-to-end runs of the speedrun experiment (smoke size, a stand-in corpus with its own
    checksum): wall time per process, final val loss read back from each run's metrics.jsonl."""
    import hashlib

    corpus = tmp_path / "tiny.txt"
    corpus.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 400)
    sha = hashlib.sha256(corpus.read_bytes()).hexdigest()
    out = tmp_path / "speedrun.json"
    proc = run_cli(
        "nanugpt.bench",
        "speedrun",
        f"data.local_path={corpus}",
        f"+data.sha256={sha}",
        "training.max_steps=3",
        "eval.iters=2",
        "training.threads=1",
        "bench.repeats=2",
        "bench.target_wall_s=0.001",  # no run can meet it: the goal must say so
        "bench.target_loss=1e9",
        f"bench.out={out}",
        cwd=tmp_path,
    )
    assert "nanugpt bench speedrun" in proc.stdout
    record = json.loads(out.read_text())
    assert record["config"]["training"]["max_steps"] == 3  # the experiment, then the overrides
    runs, summary = record["results"][:2], record["results"][2]
    for run in runs:
        assert run["steps"] == 3 and run["wall_s"] > 0
        assert 0 < run["final_val_loss"] < 10
        assert run["first_eval_step_at_target"] == 3  # the one eval, at the end, under the loose target
    assert summary["wall_s"] == pytest.approx(
        sorted(r["wall_s"] for r in runs)[0] / 2 + sorted(r["wall_s"] for r in runs)[1] / 2
    )
    assert summary["goal_met"] is False  # the loss goal is met, the wall-time goal is not
    assert list(tmp_path.glob("outputs")) == []  # runs live in temporary dirs


def test_gpu_check_dry_run_runs_every_section_and_writes_figures_after_each(tmp_path: Path) -> None:
    """`bench gpu bench.dry_run=true`: every GPU section at toy size on this CPU, each as its own
    subprocess, gpu.json and gpu.md holding every section's rows and its command."""
    from nanugpt.bench.gpu import GPU_SECTIONS

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(3000)))
    out_dir = tmp_path / "gpu"
    proc = run_cli(
        "nanugpt.bench",
        "gpu",
        "bench.dry_run=true",
        f"bench.shakespeare_path={corpus}",
        f"bench.out_dir={out_dir}",
        cwd=tmp_path,
    )
    record = json.loads((out_dir / "gpu.json").read_text())
    sections = record["sections"]
    assert [s["section"] for s in sections] == [s["name"] for s in GPU_SECTIONS]
    for section in sections:
        assert section["status"] == "ok", (section["section"], section.get("log_tail"))
        assert section["rows"], section["section"]
    markdown = (out_dir / "gpu.md").read_text()
    for section in GPU_SECTIONS:
        assert f"## {section['name']}: ok" in markdown
    assert f"[{len(GPU_SECTIONS)}/{len(GPU_SECTIONS)}]" in proc.stdout  # progress names each section as it starts


def test_gpu_check_refuses_a_machine_without_cuda_unless_dry_run(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without")
    proc = run_cli("nanugpt.bench", "gpu", f"bench.out_dir={tmp_path / 'gpu'}", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "bench.dry_run=true" in proc.stderr + proc.stdout
    assert not (tmp_path / "gpu" / "gpu.json").exists()  # refused before any section ran
