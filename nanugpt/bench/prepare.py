"""`python -m nanugpt.bench prepare`: MB/s of text to token array, nanugpt's tokenizers against
tiktoken's own batch encode, and the whole `prepare` (read, tokenize on 1 and 2 processes, write
shards) on the same text."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from types import SimpleNamespace
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from nanugpt.bench.common import Result
from nanugpt.data.prepared import prepare
from nanugpt.data.text import TextFiles
from nanugpt.tokenizers.byte import ByteTokenizer


def bench_prepare(cfg: DictConfig) -> Result:
    """MB/s of text -> token array: our tokenizers (what nanugpt.prepare calls) vs tiktoken's own
    encode_ordinary_batch on the same text."""
    bench = cfg.bench
    text = instantiate(cfg.data).text[: int(bench.max_mb * 1e6)]
    mb = len(text.encode("utf-8")) / 1e6
    rows = []

    def timed(name: str, fn: Callable[[], Any]) -> dict:
        fn()  # warm-up (tiktoken builds its regex and caches on first use)
        times = []
        for _ in range(bench.repeats):
            t = time.perf_counter()
            n = fn()
            times.append(time.perf_counter() - t)
        return {"tokenizer": name, "mb": mb, "tokens": n, "sec": median(times), "mb_per_s": mb / median(times)}

    byte = ByteTokenizer()
    rows.append(timed("byte (nanugpt)", lambda: len(byte.encode(text))))
    enc = load_tiktoken_file(bench.bpe_file)
    if enc is None:
        print("prepare: no bench.bpe_file given (a local r50k_base/gpt2 .tiktoken file); skipping tiktoken rows.")
    else:
        from nanugpt.tokenizers.tiktoken_bpe import TiktokenTokenizer, split_for_batch  # tiktoken: only here

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
        gpt2 = SimpleNamespace(name="gpt2", vocab_size=enc.n_vocab, encode=lambda t: TiktokenTokenizer.encode(ours, t))
        for num_proc in (1, 2):
            rows.append(timed(f"nanugpt prepare gpt2 num_proc={num_proc}", whole_prepare(text, gpt2, num_proc)))
            rows[-1]["x_raw"] = raw / rows[-1]["sec"]
    for num_proc in (1, 2):
        rows.append(timed(f"nanugpt prepare byte num_proc={num_proc}", whole_prepare(text, byte, num_proc)))
    return Result(torch.device("cpu"), rows)


def whole_prepare(text: str, tokenizer: Any, num_proc: int) -> Callable[[], int]:
    """`prepare` from a text file to shards on disk, forced each time: the command's own path."""

    def run() -> int:
        with tempfile.TemporaryDirectory(prefix="nanugpt-bench-prepare-") as tmp:
            corpus = Path(tmp) / "corpus.txt"
            corpus.write_text(text, encoding="utf-8")
            source = TextFiles(str(corpus), 0.1, "**/*", "utf-8", shard_tokens=None, num_proc=num_proc)
            data = prepare(source, tokenizer, Path(tmp) / "data", {}, {}, force=True)
            return sum(data.meta["num_tokens"].values())

    return run


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
