import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from nanugpt.data import source as source_module
from nanugpt.data.build import build_data, load_tokens
from nanugpt.data.contract import BatchSpec
from nanugpt.data.loader import RandomWindowBatches, TokenWindows, fixed_eval_batches
from nanugpt.data.prepared import load_prepared, prepare
from nanugpt.data.pystdlib import PyStdlibCorpus, read_source, stdlib_files
from nanugpt.data.shakespeare_char import TinyShakespeare
from nanugpt.data.shards import ShardFiles
from nanugpt.data.text import TextFiles
from nanugpt.errors import ConfigError, UserError
from nanugpt.tokenizers.base import token_dtype
from nanugpt.tokenizers.byte import ByteTokenizer

from .conftest import REPO, compose_train, plugin_args


def text_files(path) -> TextFiles:
    return TextFiles(**plugin_args("data", "text", path=str(path)))


@pytest.mark.parametrize("text", ["hello world", "def f(x):\n    return x  # ünïcödé ✓ 日本語", ""])
def test_byte_tokenizer_round_trips(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.max(initial=0) < 256
    assert tok.decode(ids) == text


def test_byte_tokenizer_decodes_broken_utf8_without_raising():
    assert ByteTokenizer().decode([0xE6, 0x97]) == "\ufffd"


def test_token_dtype_fits_vocab():
    assert token_dtype(256) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(100277) == np.uint32


def test_stdlib_corpus_is_sorted_and_skips_tests():
    files = stdlib_files()
    assert files == sorted(files) and len(files) > 100
    assert not any("site-packages" in f.parts or "test" in f.parts for f in files)


def test_prepare_writes_what_metadata_says(tmp_path):
    source = PyStdlibCorpus(val_fraction=0.1, max_bytes=50_000, shard_tokens=None, num_proc=None)
    tok = ByteTokenizer()
    data = prepare(source, tok, tmp_path, {"max_bytes": 50_000}, {"name": "byte"})
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["vocab_size"] == 256 and meta["dtype"] == "uint16" and meta["tokenizer"] == "byte"
    for split in ("train", "val"):
        assert meta["files"][split] == [f"{split}_000000.bin"]  # under data.shard_tokens: one shard
        header = np.fromfile(data.path / f"{split}_000000.bin", dtype="<i4", count=256)
        raw = np.fromfile(data.path / f"{split}_000000.bin", dtype=meta["dtype"], offset=1024)
        assert header[:3].tolist() == [20240520, 1, meta["num_tokens"][split]] == [20240520, 1, raw.size]
    text = source.text
    assert tok.decode(data.splits["train"][0]) + tok.decode(data.splits["val"][0]) == text
    assert meta["num_tokens"]["val"] == len(text.encode()) - len(text[: int(len(text) * 0.9)].encode())


def test_prepare_reuses_cache_and_redoes_when_source_changes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc" * 1000)
    cfg = {"path": str(corpus)}
    first = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", cfg, {})
    mtime = (first.path / "train_000000.bin").stat().st_mtime_ns
    again = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", cfg, {})
    assert (again.path / "train_000000.bin").stat().st_mtime_ns == mtime  # served from cache
    corpus.write_text("xyz" * 2000)
    changed = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", cfg, {})
    assert changed.path == first.path and ByteTokenizer().decode(changed.splits["train"][0]).startswith("xyz")
    # a different tokenizer config never shares a directory with this one
    other = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", cfg, {"other": 1})
    assert other.path != first.path


def test_truncated_prepared_file_is_a_clear_error(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello " * 500)
    data = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", {}, {})
    with open(data.path / "train_000000.bin", "r+b") as f:
        f.truncate(1100)
    with pytest.raises(RuntimeError, match="train_000000.bin is 1,100 bytes.*truncated.*delete .* prepared again"):
        load_prepared(data.path)


def truncate_bin(path: Path) -> str:
    with open(path / "train_000000.bin", "r+b") as f:
        f.truncate(1100)
    return "a train shard is missing or has the wrong size"


def tear_meta(path: Path) -> str:
    meta = (path / "meta.json").read_text()
    (path / "meta.json").write_text(meta[: len(meta) // 2])
    return "meta.json is torn"


@pytest.mark.parametrize("corrupt", [truncate_bin, tear_meta])
def test_a_corrupt_cache_is_named_and_prepared_again(tmp_path, caplog, corrupt):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 500)
    first = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", {}, {})
    expected = {split: np.array(shards[0]) for split, shards in first.splits.items()}
    problem = corrupt(first.path)
    with caplog.at_level(logging.WARNING, logger="nanugpt.data.prepared"):
        again = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", {}, {})
    assert f"Preparing {first.path} again" in caplog.text and problem in caplog.text
    assert all(np.array_equal(again.splits[split][0], tokens) for split, tokens in expected.items())


def text_config(corpus: Path, *extra: str) -> DictConfig:
    return compose_train(
        [
            "data=text",
            f"data.path={corpus}",
            "model.context_length=16",
            "training.global_batch_size=8",
            "training.device_batch_size=4",
            "eval.iters=3",
            *extra,
        ]
    )


def test_token_ids_beyond_the_vocab_are_refused_with_the_directory_to_delete(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 500)
    cfg = text_config(corpus)
    path = load_tokens(cfg, instantiate(cfg.data)).path  # prepares the cache build_data reads
    train = np.memmap(path / "train_000000.bin", dtype=np.uint16, mode="r+", offset=1024)
    train[:] = 300  # same size, ids a byte tokenizer never makes
    train.flush()
    with pytest.raises(ConfigError, match=rf"train_000000.bin holds token id 300 .*vocab of 256.*delete {path}"):
        build_data(cfg, BatchSpec.from_config(cfg)).train.next_step()


@contextmanager
def read_only(*dirs: Path) -> Iterator[None]:
    """chmod -w; as root, which writes anyway, also the immutable attribute (chattr +i)."""
    made_immutable = []
    try:
        for d in dirs:
            for p in [d, *d.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
        if os.geteuid() == 0:
            for d in dirs:
                if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0:
                    made_immutable.append(d)
        try:
            (dirs[0] / "probe").touch()
        except OSError:
            pass
        else:
            (dirs[0] / "probe").unlink()
            pytest.skip("cannot make a directory read-only here (root without chattr)")
        yield
    finally:
        for d in made_immutable:
            subprocess.run(["chattr", "-i", str(d)], check=True)
        for d in dirs:
            for p in [d, *d.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)


def test_a_complete_cache_on_read_only_storage_is_used(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 500)
    first = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", {}, {})
    first.path.with_name(first.path.name + ".lock").unlink()  # as if copied onto the read-only storage
    with read_only(tmp_path / "d", first.path):
        again = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", {}, {})
        assert np.array_equal(again.splits["train"][0], first.splits["train"][0])
        truncate_bin(first.path)  # the file itself stays writable (root's chattr is on the directories)
        refused = rf"Cannot prepare {first.path} \(.*a train shard is missing or has the wrong size.*\): writing "
        with pytest.raises(UserError, match=refused + f".*delete {first.path}"):
            prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", {}, {})


def test_build_data_for_text_and_example_data(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(300)))
    cfg = text_config(corpus)
    text = build_data(cfg, BatchSpec.from_config(cfg))
    micro = text.train.next_step()
    assert len(micro) == 2 and micro[0][0].shape == (4, 16) and torch.equal(micro[0][0][:, 1:], micro[0][1][:, :-1])
    assert ByteTokenizer().decode(micro[0][0][0]) in corpus.read_text()
    assert len(text.val) == 3 and text.test is None and text.vocab_size == 256 and text.meta["source"] == "text"

    small = ["training.global_batch_size=16", "training.device_batch_size=8"]
    cfg = compose_train(["experiment=grokking", "data.p=11", *small])
    grok = build_data(cfg, BatchSpec.from_config(cfg))
    assert [x.shape for x, _ in grok.train.next_step()] == [(8, 4), (8, 4)]
    assert sum(len(x) for x, _ in grok.val) == 55 and grok.test is None and grok.vocab_size == 16
    assert grok.meta["num_examples"] == {"train": 55, "val": 55}
    cfg = compose_train(["experiment=arithmetic", "data.n_digits=2", "data.num_examples=100", *small])
    arith = build_data(cfg, BatchSpec.from_config(cfg))
    assert sum(len(x) for x, _ in arith.val) == 10 and arith.vocab_size == 256 and arith.meta["source"] == "arithmetic"
    cfg.model.context_length = 5
    with pytest.raises(ConfigError, match="rows are 8 tokens, longer than model.context_length=5"):
        build_data(cfg, BatchSpec.from_config(cfg))


def test_text_source_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        _ = text_files(tmp_path / "nope.txt").text
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no text files"):
        _ = text_files(tmp_path / "empty").text


def test_text_not_in_its_encoding_is_refused_with_file_and_offset(tmp_path):
    latin1 = tmp_path / "notes.txt"
    latin1.write_bytes("first line\ncaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"notes.txt is not valid utf-8: byte e9 at offset 14 \(line 2\)") as err:
        _ = text_files(latin1).text
    assert "data.encoding=" in str(err.value) and "iconv" in str(err.value)
    named = TextFiles(**plugin_args("data", "text", path=str(latin1), encoding="latin-1"))
    assert named.text == "first line\ncaf\u00e9 au lait\n"
    with pytest.raises(ConfigError, match="data.encoding=utf-9 is not a text encoding"):
        TextFiles(**plugin_args("data", "text", path=str(latin1), encoding="utf-9"))


def test_directory_skips_git_pycache_hidden_and_binary_files_with_a_note(tmp_path, caplog):
    for name, data in {
        "a.txt": b"alpha\n",
        "sub/b.md": "beta \u2713\n".encode(),
        ".git/config": b"[core]\n",
        ".git/objects/ab/cdef": b"x\x01\x00\x9c\xff",
        "__pycache__/m.cpython-311.pyc": b"\xa7\r\r\n\x00\x00",
        ".env": b"SECRET=1\n",
        "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    with caplog.at_level(logging.INFO, logger="nanugpt.data.text"):
        source = text_files(tmp_path)
    assert source.paths == [tmp_path / "a.txt", tmp_path / "sub/b.md"]
    assert source.text == "alpha\n\nbeta \u2713\n"
    assert "2 text files; skipped 4 hidden" in caplog.text and "and 1 binary" in caplog.text
    with pytest.raises(ConfigError, match="logo.png looks binary"):
        text_files(tmp_path / "logo.png")


def test_byte_tokenizer_keeps_a_files_bytes_exactly(tmp_path):
    raw = (
        "\ufeffdef f():\r\n    return '\u00fcn\u00efc\u00f6d\u00e9 \u2713 \u65e5\u672c\u8a9e \U0001f600'\r\n\r".encode()
        * 40
    )
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(raw)
    data = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", {"p": 1}, {"name": "byte"})
    tokens = np.concatenate([data.splits["train"][0], data.splits["val"][0]])
    assert bytes(tokens.astype(np.uint8)) == raw


def test_stdlib_source_is_decoded_as_python_decodes_it(tmp_path):
    cookie = tmp_path / "legacy.py"
    cookie.write_bytes("# -*- coding: latin-1 -*-\nname = 'Andr\u00e9'\n".encode("latin-1"))
    assert read_source(cookie) == "# -*- coding: latin-1 -*-\nname = 'Andr\u00e9'\n"
    broken = tmp_path / "broken.py"
    broken.write_bytes(b"x = 1\n\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"broken.py is not valid utf-8: byte e9 at offset 12 \(line 3\)"):
        read_source(broken)


def test_shakespeare_offline_error_says_how_to_pass_a_local_copy(tmp_path):
    args = plugin_args("data", "shakespeare_char", cache_dir=str(tmp_path))
    src = TinyShakespeare(**args, url="http://127.0.0.1:9/input.txt", timeout_s=2)
    with pytest.raises(RuntimeError, match="data.local_path="):
        _ = src.text


def test_shakespeare_local_copy_is_checked(tmp_path):
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not shakespeare")
    with pytest.raises(ValueError, match="sha256"):
        _ = TinyShakespeare(
            **plugin_args("data", "shakespeare_char", cache_dir=str(tmp_path), local_path=str(wrong))
        ).text


def windows(tokens: np.ndarray, context_length: int) -> TokenWindows:
    return TokenWindows([tokens], context_length)


def test_batches_are_shifted_windows_and_resume_exactly():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = RandomWindowBatches(windows(tokens, 16), BatchSpec(16, 8, 4, seed=0))
    micro = batches.next_step()
    assert len(micro) == 2
    x, y = micro[0]
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
    state = batches.state_dict()
    expected = batches.next_step()
    batches.load_state_dict(state)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(expected, batches.next_step(), strict=False))


def test_ranks_split_one_global_batch():
    tokens = np.arange(5000, dtype=np.uint16)
    make = lambda rank, world: RandomWindowBatches(
        windows(tokens, 8), BatchSpec(8, 8, 2, rank=rank, world_size=world, seed=3)
    )
    single = torch.cat([x for x, _ in make(0, 1).next_step()])
    split = torch.cat([x for r in range(2) for x, _ in make(r, 2).next_step()])
    assert sorted(map(tuple, single.tolist())) == sorted(map(tuple, split.tolist()))


def test_eval_batches_are_fixed_and_cover_ranks():
    tokens = windows(np.arange(5000, dtype=np.uint16), 8)
    one = fixed_eval_batches(tokens, BatchSpec(8, 4, 4), 6)
    again = fixed_eval_batches(tokens, BatchSpec(8, 4, 4), 6)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one, again, strict=False))
    r0 = fixed_eval_batches(tokens, BatchSpec(8, 8, 4, rank=0, world_size=2), 6)
    r1 = fixed_eval_batches(tokens, BatchSpec(8, 8, 4, rank=1, world_size=2), 6)
    assert len(r0) + len(r1) == 6 and torch.equal(r1[0][0], one[1][0])


def test_corpus_smaller_than_a_window_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one context window"):
        windows(np.arange(10, dtype=np.uint16), 16)


def test_prefetching_loader_gives_the_same_batches_and_resume_position():
    """The GPU loader gathers step n+1 in a worker thread while step n computes; batches and the
    saved resume position must be those of the plain loader (checked here on the CPU)."""
    tokens = windows(np.arange(5000, dtype=np.uint16), 16)
    make = lambda prefetch: RandomWindowBatches(tokens, BatchSpec(16, 8, 4, seed=5), prefetch=prefetch)
    plain, ahead = make(False), make(True)
    for _ in range(3):
        for (x1, y1), (x2, y2) in zip(plain.next_step(), ahead.next_step(), strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    saved = ahead.state_dict()  # taken while step 4's windows are already drawn
    expected = [x for x, _ in plain.next_step()]
    resumed = make(True)
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, (b, _) in zip(expected, resumed.next_step(), strict=True))
    assert all(torch.equal(a, b) for a, (b, _) in zip(expected, ahead.next_step(), strict=True))


def read_back(path: Path) -> dict[str, np.ndarray]:
    """Each split of a prepared directory through the `data=shards` reader, concatenated."""
    splits = ShardFiles(str(path), vocab_size=256).load().splits
    return {split: np.concatenate(shards) for split, shards in splits.items()}


def test_prepare_writes_llmc_shards_that_the_shard_loader_reads(tmp_path):
    lines = [f"document {i}: " + "the quick brown fox jumps over the lazy dog " * (1 + i % 5) for i in range(60)]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(lines))
    source = TextFiles(**plugin_args("data", "text", path=str(corpus), shard_tokens=150))  # < one document
    data = prepare(source, ByteTokenizer(), tmp_path / "d", {}, {})
    text = corpus.read_text()
    cut = int(len(text) * 0.9)
    expected = {"train": ByteTokenizer().encode(text[:cut]), "val": ByteTokenizer().encode(text[cut:])}
    names = sorted(p.name for p in data.path.glob("*.bin"))
    assert names == sorted(n for files in data.meta["files"].values() for n in files)
    assert names[0] == "train_000000.bin" and f"train_{len(expected['train']) // 150:06d}.bin" in names
    for split, tokens in expected.items():
        shards = data.splits[split]
        assert [len(s) for s in shards[:-1]] == [150] * (len(shards) - 1) and 0 < len(shards[-1]) <= 150
        assert np.array_equal(np.concatenate(shards), tokens)
    assert all(np.array_equal(read_back(data.path)[split], t) for split, t in expected.items())
    # the loader draws windows across the shards, none crossing a boundary, and resumes exactly
    spec = BatchSpec(context_length=16, global_batch_size=8, device_batch_size=4, seed=3)
    batches = RandomWindowBatches(TokenWindows(data.splits["train"], 16, vocab_size=256), spec)
    batches.next_step()
    state = batches.state_dict()
    ahead = [x for x, _ in batches.next_step()]
    batches.load_state_dict(state)
    assert all(torch.equal(a, x) for a, (x, _) in zip(ahead, batches.next_step(), strict=True))
    assert all(ByteTokenizer().decode(row) in text for x in ahead for row in x)


def test_text_pieces_and_processes_give_the_tokens_of_one_encode(tmp_path, monkeypatch, tiktoken_rank_file):
    from nanugpt.tokenizers.tiktoken_bpe import TiktokenTokenizer

    monkeypatch.setattr(source_module, "TEXT_PIECE_CHARS", 2000)  # many pieces from a small corpus
    corpus = tmp_path / "c.py"
    corpus.write_text("\n".join(p.read_text() for p in stdlib_files()[:12]))
    tok = TiktokenTokenizer("gpt2", tiktoken_rank_file("gpt2"))
    one, two = (
        TextFiles(**plugin_args("data", "text", path=str(corpus), shard_tokens=5000, num_proc=n)) for n in (1, 2)
    )
    assert len(list(one.pieces("train"))) > 10
    data = prepare(one, tok, tmp_path / "one", {}, {})
    forked = prepare(two, tok, tmp_path / "two", {}, {})  # 2 processes
    text = corpus.read_text()
    cut = int(len(text) * 0.9)
    for split, part in {"train": text[:cut], "val": text[cut:]}.items():
        assert np.array_equal(np.concatenate(data.splits[split]), tok.encode(part))
        assert np.array_equal(np.concatenate(forked.splits[split]), tok.encode(part))


@pytest.mark.parametrize("bad", [0, 2**31])
def test_shard_tokens_is_checked(tmp_path, bad):
    (tmp_path / "c.txt").write_text("hello")
    with pytest.raises(ConfigError, match=f"data.shard_tokens={bad}"):
        TextFiles(**plugin_args("data", "text", path=str(tmp_path / "c.txt"), shard_tokens=bad))


def prepare_peak_rss_mb(corpus: Path, data_dir: Path) -> float:
    """Peak RSS of a `nanugpt.prepare` process (its own getrusage at exit: RUSAGE_CHILDREN would
    be the maximum over every child this test process ever waited for)."""
    args = [f"data.path={corpus}", "data=text", "data.shard_tokens=4000000", "data.num_proc=1", "tokenizer=byte"]
    code = (
        "import atexit, resource, runpy, sys\n"
        "atexit.register(lambda: print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
        f"sys.argv = ['prepare', *{args!r}]\n"
        "runpy.run_module('nanugpt.prepare', run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "NANUGPT_DATA": str(data_dir)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "Prepared in" in out
    return int(out.split("PEAK_KB")[-1]) / 1024


@pytest.mark.slow
def test_prepare_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    """100 MB and 300 MB of text, byte tokens in 4M-token shards: the peak stays at the 1 MB
    corpus's (interpreter, torch, pieces in flight), where holding the corpus would add its size."""
    lines = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7919 % 10007}\n" for i in range(10000))
    block = lines.encode()
    peak = {}
    for mb in (1, 100, 300):
        corpus = tmp_path / f"c{mb}.txt"
        with open(corpus, "wb") as f:
            for _ in range(mb * 1_000_000 // len(block) + 1):
                f.write(block)
        peak[mb] = prepare_peak_rss_mb(corpus, tmp_path / f"d{mb}")
        corpus.unlink()
        shutil.rmtree(tmp_path / f"d{mb}")
    assert peak[300] - peak[100] < 16, peak  # 200 MB more corpus
    assert peak[300] - peak[1] < 64, peak  # the bound: pieces in flight, not the 300 MB corpus
