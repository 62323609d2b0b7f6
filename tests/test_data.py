import json

import numpy as np
import pytest
import torch

from nanugpt.data.loader import RandomWindowBatches, fixed_eval_batches
from nanugpt.data.prepared import load_prepared, prepare
from nanugpt.data.pystdlib import PyStdlibCorpus, stdlib_files
from nanugpt.data.shakespeare_char import TinyShakespeare
from nanugpt.data.text import TextFiles
from nanugpt.tokenizers.base import token_dtype
from nanugpt.tokenizers.byte import ByteTokenizer

from .conftest import plugin_args


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
    source = PyStdlibCorpus(val_fraction=0.1, max_bytes=50_000)
    tok = ByteTokenizer()
    data = prepare(source, tok, tmp_path, {"max_bytes": 50_000}, {"name": "byte"})
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["vocab_size"] == 256 and meta["dtype"] == "uint16" and meta["tokenizer"] == "byte"
    for split in ("train", "val"):
        raw = np.fromfile(data.path / f"{split}.bin", dtype=meta["dtype"])
        assert raw.size == meta["num_tokens"][split]
    text = source.text
    assert tok.decode(data.train) + tok.decode(data.val) == text
    assert meta["num_tokens"]["val"] == len(text.encode()) - len(text[: int(len(text) * 0.9)].encode())


def test_prepare_reuses_cache_and_redoes_when_source_changes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc" * 1000)
    cfg = {"path": str(corpus)}
    first = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", cfg, {})
    mtime = (first.path / "train.bin").stat().st_mtime_ns
    again = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", cfg, {})
    assert (again.path / "train.bin").stat().st_mtime_ns == mtime  # served from cache
    corpus.write_text("xyz" * 2000)
    changed = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", cfg, {})
    assert changed.path == first.path and ByteTokenizer().decode(changed.train).startswith("xyz")
    # a different tokenizer config never shares a directory with this one
    other = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", cfg, {"other": 1})
    assert other.path != first.path


def test_truncated_prepared_file_is_a_clear_error(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello " * 500)
    data = prepare(text_files(corpus), ByteTokenizer(), tmp_path / "d", {}, {})
    with open(data.path / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(RuntimeError, match="delete .* prepared again"):
        load_prepared(data.path)


def test_text_source_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        _ = text_files(tmp_path / "nope.txt").text
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no files"):
        _ = text_files(tmp_path / "empty").text


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


def test_batches_are_shifted_windows_and_resume_exactly():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = RandomWindowBatches(tokens, 16, 8, 4, 0, 1, seed=0, device=torch.device("cpu"))
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
    make = lambda rank, world, dbs: RandomWindowBatches(
        tokens, 8, 8, dbs, rank, world, seed=3, device=torch.device("cpu")
    )
    single = torch.cat([x for x, _ in make(0, 1, 2).next_step()])
    split = torch.cat([x for r in range(2) for x, _ in make(r, 2, 2).next_step()])
    assert sorted(map(tuple, single.tolist())) == sorted(map(tuple, split.tolist()))


def test_eval_batches_are_fixed_and_cover_ranks():
    tokens = np.arange(5000, dtype=np.uint16)
    one = fixed_eval_batches(tokens, 8, 4, 6, 0, 1, torch.device("cpu"))
    again = fixed_eval_batches(tokens, 8, 4, 6, 0, 1, torch.device("cpu"))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one, again, strict=False))
    r0 = fixed_eval_batches(tokens, 8, 4, 6, 0, 2, torch.device("cpu"))
    r1 = fixed_eval_batches(tokens, 8, 4, 6, 1, 2, torch.device("cpu"))
    assert len(r0) + len(r1) == 6 and torch.equal(r1[0][0], one[1][0])


def test_corpus_smaller_than_a_window_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one context window"):
        RandomWindowBatches(np.arange(10, dtype=np.uint16), 16, 4, 4, 0, 1, 0, torch.device("cpu"))


def test_prefetching_loader_gives_the_same_batches_and_resume_position():
    """The GPU loader gathers step n+1 in a worker thread while step n computes; batches and the
    saved resume position must be those of the plain loader (checked here on the CPU)."""
    tokens = np.arange(5000, dtype=np.uint16)
    make = lambda prefetch: RandomWindowBatches(
        tokens, 16, 8, 4, 0, 1, seed=5, device=torch.device("cpu"), prefetch=prefetch
    )
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
