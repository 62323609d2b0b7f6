"""Pre-tokenized shards of llm.c / modded-nanogpt / nanoGPT, and sampling windows across many shards.

The shard files are generated here in each project's layout (llm.c's `write_datafile`: a header
of 256 int32 then the tokens; nanoGPT: bare uint16).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from nanugpt.data.build import build_data
from nanugpt.data.contract import BatchSpec
from nanugpt.data.loader import RandomWindowBatches, TokenWindows
from nanugpt.data.shards import ShardFiles, read_shard
from nanugpt.errors import ConfigError, MissingInputError
from nanugpt.metrics import read_metrics

from .conftest import REPO, compose_train, plugin_args, run_cli

GPT2 = (20240520, 1, np.uint16)
LLAMA3 = (20240801, 7, np.uint32)


def write_llmc(path: Path, tokens: np.ndarray, fmt: tuple = GPT2, num_tokens: int | None = None) -> Path:
    """A shard as llm.c's dev/data/data_common.py write_datafile writes it."""
    magic, version, dtype = fmt
    header = np.zeros(256, dtype=np.int32)
    header[:3] = magic, version, len(tokens) if num_tokens is None else num_tokens
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype=dtype).tobytes())
    return path


def llmc_dir(root: Path, train_sizes: list[int], val_size: int = 3000, test_size: int = 0) -> Path:
    """fineweb_{train,val,test}_NNNNNN.bin; shard k of a split holds ids counting up from k * 100_000
    (mod the vocab), so a window's tokens name their shard and reveal a crossed boundary."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = {"val": [val_size], "train": train_sizes, "test": [test_size] if test_size else []}
    index = 0
    for split, split_sizes in sizes.items():
        for k, n in enumerate(split_sizes):
            write_llmc(root / f"fineweb_{split}_{index:06d}.bin", (np.arange(n) + k * 100_000) % 50257)
            index += 1
    return root


def shard_files(path: Path, **overrides: object) -> ShardFiles:
    """data=shards as its YAML configures it (GPT-2's vocab), reading `path`."""
    return ShardFiles(**plugin_args("data", "shards", path=str(path), **overrides))


def test_reads_the_three_formats_memory_mapped(tmp_path):
    small = np.arange(5000) % 50257
    large = np.arange(5000) + 70_000  # ids only uint32 holds
    files = {
        write_llmc(tmp_path / "gpt2_train_000000.bin", small): (small, np.uint16, 1024),
        write_llmc(tmp_path / "llama_train_000000.bin", large, LLAMA3): (large, np.uint32, 1024),
        tmp_path / "train.bin": (small, np.uint16, 0),
    }
    small.astype(np.uint16).tofile(tmp_path / "train.bin")  # nanoGPT: no header
    for path, (tokens, dtype, offset) in files.items():
        shard = read_shard(path)
        assert isinstance(shard, np.memmap) and shard.offset == offset and shard.dtype == dtype
        assert np.array_equal(shard, tokens)


@pytest.mark.parametrize(
    "name,write,message",
    [
        ("x_train_0.bin", lambda p: write_llmc(p, np.arange(10), (20240519, 1, np.uint16)), "starts with 20240519"),
        ("x_train_0.bin", lambda p: write_llmc(p, np.arange(10), (20240520, 2, np.uint16)), "version 2, not 1"),
        ("x_train_0.bin", lambda p: write_llmc(p, np.arange(10), (20240801, 1, np.uint32)), "version 1, not 7"),
        ("x_train_0.bin", lambda p: write_llmc(p, np.arange(10), num_tokens=11), "is truncated"),
        ("x_train_0.bin", lambda p: write_llmc(p, np.arange(10), LLAMA3, num_tokens=9), "longer than its header"),
        ("x_train_0.bin", lambda p: write_llmc(p, np.arange(10), num_tokens=-5), "negative count"),
        ("x_train_0.bin", lambda p: p.write_bytes(b"\0" * 100), "shorter than the 1,024-byte header"),
        ("hellaswag_val.bin", lambda p: write_llmc(p, np.arange(10), (20240522, 1, np.uint16)), "eval file"),
        ("val.bin", lambda p: p.write_bytes(b"\1" * 2001), "odd number"),
    ],
)
def test_bad_shards_are_clear_errors_naming_the_file(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*" + message):
        read_shard(path)


def test_splits_come_from_file_names_and_train_and_val_are_required(tmp_path):
    root = llmc_dir(tmp_path / "d", [2000, 2000], test_size=2000)
    files = shard_files(root).files()
    assert list(files) == ["train", "val", "test"]
    assert {split: [p.name for p in paths] for split, paths in files.items()} == {
        "train": ["fineweb_train_000001.bin", "fineweb_train_000002.bin"],
        "val": ["fineweb_val_000000.bin"],
        "test": ["fineweb_test_000003.bin"],
    }
    assert shard_files(root / "fineweb_*.bin").files() == files  # a glob of the same files
    with pytest.raises(ConfigError, match="no val shards .*fineweb_\\*.bin"):
        shard_files(root / "fineweb_train_*.bin").files()
    (root / "notes.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="Cannot tell which split .*notes.bin"):
        shard_files(root).files()
    with pytest.raises(MissingInputError, match="matches no .bin files"):
        shard_files(tmp_path / "nowhere").files()


def test_a_nanogpt_directory_loads_as_one_shard_per_split(tmp_path):
    for split, n in (("train", 5000), ("val", 600)):
        (np.arange(n) % 65).astype(np.uint16).tofile(tmp_path / f"{split}.bin")  # shakespeare_char's layout
    tokens = shard_files(tmp_path, vocab_size=65).load()
    assert {split: [len(s) for s in shards] for split, shards in tokens.splits.items()} == {
        "train": [5000],
        "val": [600],
    }
    assert tokens.vocab_size == 65 and tokens.meta["dtypes"] == ["uint16"]


def test_windows_cover_every_shard_in_proportion_and_never_cross_a_boundary():
    sizes = [3000, 200, 9000, 20, 1000]  # the 20-token shard holds no 32-token window
    shards = [np.arange(n, dtype=np.uint32) + k * 100_000 for k, n in enumerate(sizes)]
    windows = TokenWindows(shards, 32)
    batches = RandomWindowBatches(windows, BatchSpec(32, 64, 16, seed=1))
    rows = torch.cat([x for _ in range(100) for x, _ in batches.next_step()])  # 6,400 windows
    assert torch.equal(rows[:, 1:] - rows[:, :-1], torch.ones_like(rows[:, 1:]))  # consecutive: one shard each
    drawn = Counter((rows[:, 0] // 100_000).tolist())
    usable = {k: n - 33 for k, n in enumerate(sizes) if n > 33}
    assert set(drawn) == set(usable)  # every shard with a window, never the one without
    for k, n in usable.items():
        assert drawn[k] / len(rows) == pytest.approx(n / sum(usable.values()), rel=0.25)
    starts = rows[:, 0] % 100_000
    assert ((starts + 33) <= torch.tensor([sizes[k] for k in (rows[:, 0] // 100_000).tolist()])).all()


def test_one_shard_draws_the_windows_the_single_array_loader_drew():
    """Checkpoints from before multi-shard data resume at the same windows: with one shard the
    window number is the offset of the plain `torch.randint(len - T - 1)` draw."""
    tokens = np.arange(4000, dtype=np.uint16)
    x = torch.cat(
        [x for x, _ in RandomWindowBatches(TokenWindows([tokens], 16), BatchSpec(16, 8, 4, seed=7)).next_step()]
    )
    offsets = torch.randint(4000 - 16 - 1, (8,), generator=torch.Generator().manual_seed(7))
    assert torch.equal(x[:, 0], offsets)


def test_many_shards_resume_exactly_and_ranks_share_the_global_batch():
    shards = [np.arange(n, dtype=np.uint16) + 10_000 * k for k, n in enumerate([500, 2000, 1200])]
    make = lambda rank=0, world=1, prefetch=False: RandomWindowBatches(
        TokenWindows(shards, 16), BatchSpec(16, 8, 2, rank=rank, world_size=world, seed=4), prefetch=prefetch
    )
    # 1 rank (4 micro-steps of 2) and 2 ranks (2 micro-steps of 2 each): the same global batches
    single, pair = make(), [make(r, 2) for r in range(2)]
    for _ in range(5):
        one = sorted(map(tuple, torch.cat([x for x, _ in single.next_step()]).tolist()))
        both = sorted(map(tuple, torch.cat([x for rank in pair for x, _ in rank.next_step()]).tolist()))
        assert one == both
    # a resumed loader, with or without prefetch, continues with the batches of the one that ran on
    ran = make(prefetch=True)
    for _ in range(3):
        ran.next_step()
    state = ran.state_dict()
    expected = [ran.next_step() for _ in range(3)]
    for prefetch in (False, True):
        resumed = make(prefetch=prefetch)
        resumed.load_state_dict(state)
        for step in expected:
            assert all(torch.equal(a, b) for (a, _), (b, _) in zip(step, resumed.next_step(), strict=True))


def test_build_data_reads_shards_with_their_test_split(tmp_path):
    root = llmc_dir(tmp_path / "d", [3000, 5000], test_size=2500)
    cfg = compose_train(["data=shards", f"data.path={root}", "model.context_length=32", "eval.iters=3"])
    cfg.eval.test_iters = 2
    data = build_data(cfg, BatchSpec.from_config(cfg))
    assert data.vocab_size == 50257 and data.meta["num_tokens"] == {"train": 8000, "val": 3000, "test": 2500}
    assert data.meta["files"]["train"] == ["fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert len(data.val) == 3 and len(data.test) == 2 and data.test[0][0].shape == (64, 32)
    assert len(data.train.next_step()) == 1
    cfg.eval.test_iters = 0
    assert build_data(cfg, BatchSpec.from_config(cfg)).test is None


def test_token_ids_beyond_the_vocab_name_the_shard_and_data_vocab_size(tmp_path):
    root = llmc_dir(tmp_path / "d", [3000])
    write_llmc(root / "fineweb_train_000001.bin", np.arange(3000) + 60_000)  # ids beyond GPT-2's 50,257
    cfg = compose_train(["data=shards", f"data.path={root}", "model.context_length=32"])
    with pytest.raises(ConfigError, match=r"fineweb_train_000001.bin holds token id 6\d+.*data.vocab_size"):
        build_data(cfg, BatchSpec.from_config(cfg)).train.next_step()


def test_training_on_llmc_shards_from_the_command_line(tmp_path):
    root = llmc_dir(tmp_path / "fineweb10B", [4000, 2500, 3000], test_size=2000)
    run_dir = tmp_path / "run"
    out = run_cli(
        "nanugpt.train",
        "data=shards",
        f"data.path={root}",
        "tokenizer=gpt2",  # shards carry GPT-2 ids; it is not loaded to train, only recorded for generate
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=32",
        "model.context_length=32",
        "training.global_batch_size=8",
        "training.device_batch_size=4",
        "training.threads=1",
        "training.max_steps=3",
        "eval.every=3",
        "eval.iters=2",
        "eval.test_iters=2",
        f"hydra.run.dir={run_dir}",
        cwd=REPO,
    )
    console = out.stdout + out.stderr
    assert "train 9,500 tokens in 3 shards" in console and re.search(r"step 3/3 .*\| val .*\| test ", console)
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(0 < rows[-1][f"test/{k}"] for k in ("loss", "ppl")) and 0 <= rows[-1]["test/acc"] <= 1
    assert not any("test/loss" in r for r in rows[:-1])
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["data_meta"]["source"] == "shards" and ckpt["config"]["model"]["vocab_size"] == 50257
    assert ckpt["config"]["tokenizer"]["encoding"] == "gpt2"
    assert json.dumps(ckpt["data_meta"])  # plain values, as the checkpoint's config is
