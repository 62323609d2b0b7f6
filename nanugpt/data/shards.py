"""Pre-tokenized shard files of other projects, read in place: `data=shards data.path=<dir or glob>`.

The format is detected per file, and tokens are memory-mapped, never copied:

- llm.c / modded-nanogpt (`dev/data/data_common.py` `write_datafile`, `_load_data_shard`): a header
  of 256 int32 (magic 20240520, version 1, header[2] = number of tokens), then uint16 tokens;
- llm.c's uint32 variant for Llama 3: magic 20240801, version 7, uint32 tokens;
- nanoGPT's headerless uint16 `train.bin` / `val.bin`.

The split is in the name: `*_train_*.bin`, `*_val_*.bin`, `*_test_*.bin` (llm.c's
`fineweb_train_000001.bin`, `tiny_shakespeare_val.bin`) or nanoGPT's `train.bin` / `val.bin`. A
split may be many files; the loader draws windows across all of them. Shards carry no vocab
size: it is `data.vocab_size` (GPT-2's by default); train with `tokenizer=gpt2` so that
`nanugpt.generate` decodes GPT-2 shards' ids.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import numpy as np

from nanugpt.data.contract import TokenSplits
from nanugpt.errors import ConfigError, MissingInputError, check_value

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# magic -> (version, token dtype, what wrote it)
HEADERED_FORMATS = {
    20240520: (1, np.dtype(np.uint16), "llm.c/modded-nanogpt GPT-2 uint16"),
    20240801: (7, np.dtype(np.uint32), "llm.c Llama 3 uint32"),
}
LLMC_EVAL_MAGIC = 20240522  # llm.c's multiple-choice eval files (HellaSwag, MMLU), not token streams
HEADERLESS_NAMES = frozenset({"train.bin", "val.bin", "test.bin"})  # nanoGPT's prepare.py output, uint16
SPLIT_IN_NAME = re.compile(r"(?:^|_)(train|val|test)(?:_|$)")
KNOWN = "magic 20240520 version 1 (llm.c/modded-nanogpt, uint16) or magic 20240801 version 7 (llm.c, uint32)"


def shard_header(dtype: np.dtype, num_tokens: int) -> bytes:
    """The 1,024-byte llm.c header of a shard of `num_tokens` tokens of `dtype` (uint16 or uint32)."""
    magic = next(m for m, (_, d, _) in HEADERED_FORMATS.items() if d == np.dtype(dtype))
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = magic, HEADERED_FORMATS[magic][0], num_tokens
    return header.tobytes()


def read_shard(path: Path) -> np.ndarray:
    """The tokens of one shard file, memory-mapped; a bad header or length is a ConfigError naming it."""
    size = path.stat().st_size
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS) if size >= HEADER_BYTES else None
    magic = int(header[0]) if header is not None else None
    if header is not None and magic in HEADERED_FORMATS:
        version, dtype, kind = HEADERED_FORMATS[magic]
        if int(header[1]) != version:
            raise ConfigError(
                f"{path} has the {kind} magic {magic} but version {int(header[1])}, not {version}: a format this "
                f"reader does not know. Shards must have a header of {KNOWN}."
            )
        num_tokens = int(header[2])
        if num_tokens < 0:
            raise ConfigError(
                f"{path} has a header that says {num_tokens:,} tokens, a negative count: the header is corrupt. "
                "Copy or export the file again."
            )
        expected = HEADER_BYTES + num_tokens * dtype.itemsize
        if size != expected:
            state = "truncated" if size < expected else "longer than its header says"
            raise ConfigError(
                f"{path} is {size:,} bytes, but its header says {num_tokens:,} {dtype.name} tokens, i.e. "
                f"{expected:,} bytes with the 1,024-byte header: the file is {state}. Copy or export it again."
            )
        if num_tokens == 0:
            return np.zeros(0, dtype)  # mmap cannot map nothing
        return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(num_tokens,))
    if magic == LLMC_EVAL_MAGIC:
        raise ConfigError(
            f"{path} is an llm.c multiple-choice eval file (magic {magic}: HellaSwag, MMLU), not a token shard; "
            "move it out of data.path or pass a glob that matches only the token shards."
        )
    if path.name in HEADERLESS_NAMES:
        if size % 2:
            raise ConfigError(
                f"{path} is {size:,} bytes, an odd number: a headerless nanoGPT file holds uint16 tokens of 2 bytes, "
                "so it is truncated. Copy or export it again."
            )
        return np.memmap(path, dtype=np.uint16, mode="r") if size else np.zeros(0, np.uint16)
    found = f"starts with {magic}" if magic is not None else f"is {size:,} bytes, shorter than the 1,024-byte header"
    raise ConfigError(
        f"{path} {found}, but a token shard has a header of {KNOWN}, or is a headerless nanoGPT uint16 file "
        "named train.bin / val.bin. Point data.path at a directory (or glob) of such shards only."
    )


def split_of(path: Path) -> str | None:
    """train, val or test, from the file's name."""
    match = SPLIT_IN_NAME.search(path.stem)
    return match.group(1) if match else None


class ShardFiles:
    name = "shards"

    def __init__(self, path: str, vocab_size: int) -> None:
        check_value(
            "data.path",
            path,
            str,
            fix="A directory of .bin shards, or a glob such as 'data.path=/data/fineweb10B/fineweb_*.bin' (quote it "
            "in a shell).",
        )
        check_value("data.vocab_size", vocab_size, int, ge=1, fix="50257 for GPT-2 shards, 128256 for Llama 3's.")
        self.path, self.vocab_size = str(Path(path).expanduser()), vocab_size
        self.files()  # no shards, or no train/val split among them, fails now, not once training starts

    def files(self) -> dict[str, list[Path]]:
        """Each split's files, sorted by name (the shard order every rank and every resume agrees on)."""
        where = Path(self.path)
        if where.is_dir():
            found = sorted(p for p in where.glob("*.bin") if p.is_file())
        else:
            found = sorted(Path(p) for p in glob.glob(self.path) if Path(p).is_file())
        if not found:
            raise MissingInputError(
                f"data.path={self.path} matches no .bin files; point it at a directory of shards or a glob of them."
            )
        by_split: dict[str, list[Path]] = {}
        for path in found:
            split = split_of(path)
            if split is None:
                raise ConfigError(
                    f"Cannot tell which split {path} belongs to: shard names carry _train_, _val_ or _test_ "
                    "(fineweb_train_000001.bin) or are nanoGPT's train.bin / val.bin. Rename it, or narrow data.path "
                    "to a glob of the shard files."
                )
            by_split.setdefault(split, []).append(path)
        for split in ("train", "val"):
            if split not in by_split:
                raise ConfigError(
                    f"data.path={self.path} has no {split} shards (names with _{split}_, or {split}.bin) among "
                    f"{len(found)} file(s), e.g. {found[0].name}; training needs train and val shards: point "
                    "data.path at the directory that holds both, or a glob matching both (fineweb_*.bin)."
                )
        return {split: by_split[split] for split in ("train", "val", "test") if split in by_split}

    def load(self) -> TokenSplits:
        files = self.files()
        splits = {split: [read_shard(p) for p in paths] for split, paths in files.items()}
        meta = {
            "source": self.name,
            "path": self.path,
            "vocab_size": self.vocab_size,
            "dtypes": sorted({str(s.dtype) for shards in splits.values() for s in shards}),
            "files": {split: [p.name for p in paths] for split, paths in files.items()},
            "num_tokens": {split: sum(len(s) for s in shards) for split, shards in splits.items()},
        }
        return TokenSplits(
            splits,
            self.vocab_size,
            meta,
            Path(self.path),
            "Shards carry no vocab size: pass the one they were written with as data.vocab_size (50257 for "
            "GPT-2, 128256 for Llama 3), or replace the corrupt file.",
        )
