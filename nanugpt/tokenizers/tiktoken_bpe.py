"""OpenAI's BPE tokenizers through tiktoken: gpt2 (50,257), cl100k_base (100,277), o200k_base
(200,019). Ids above 65,536 make the prepared data uint32.

tiktoken downloads an encoding's rank file on first use (cached under $TIKTOKEN_CACHE_DIR).
Offline, pass the file itself with `tokenizer.bpe_file=...`: it is checked against the sha256
that tiktoken itself expects for that encoding.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from unittest import mock

import numpy as np
import requests
import tiktoken
import tiktoken_ext.openai_public as openai_public
from tiktoken.load import load_tiktoken_bpe

from nanugpt.errors import ConfigError, MissingInputError, UnavailableInputError, check_value

# Our encoding name -> tiktoken's constructor that reads a single .tiktoken rank file.
# tiktoken's own "gpt2" reads two data-gym files instead; r50k_base has the same ranks, regex and
# special token, so a local gpt2 is built from r50k_base.tiktoken.
RANK_FILE_ENCODING = {"gpt2": "r50k_base", "cl100k_base": "cl100k_base", "o200k_base": "o200k_base"}


def rank_file_source(encoding: str) -> tuple[str, str]:
    """(url, sha256) of the rank file tiktoken downloads for `encoding`, read from tiktoken."""
    seen: dict[str, str] = {}

    def record(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.update(url=url, sha256=expected_hash or "")
        raise _Recorded

    with mock.patch.object(openai_public, "load_tiktoken_bpe", record):
        try:
            openai_public.ENCODING_CONSTRUCTORS[RANK_FILE_ENCODING[encoding]]()
        except _Recorded:
            pass
    return seen["url"], seen["sha256"]


class _Recorded(Exception):
    pass


def encoding_from_file(encoding: str, bpe_file: str) -> tiktoken.Encoding:
    """Build `encoding` from a local rank file, refusing one whose sha256 tiktoken does not expect."""
    path = Path(bpe_file).expanduser()
    url, expected = rank_file_source(encoding)
    if not path.is_file():
        raise MissingInputError(
            f"tokenizer.bpe_file={bpe_file} does not exist. Pass the path of a local copy of "
            f"{url.rsplit('/', 1)[-1]} (sha256 {expected}), or drop tokenizer.bpe_file to download it."
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise ConfigError(
            f"tokenizer.bpe_file={bpe_file} has sha256 {digest}, but tiktoken expects {expected} "
            f"for {encoding} ({url.rsplit('/', 1)[-1]}). Pass the right file for "
            f"tokenizer.encoding={encoding}, or pick the tokenizer that matches this file."
        )
    # Call tiktoken's own constructor so the regex and special tokens are exactly its own; only
    # where the ranks are read from changes.
    ranks = load_tiktoken_bpe(str(path), expected_hash=expected)
    with mock.patch.object(openai_public, "load_tiktoken_bpe", lambda *a, **k: ranks):
        params = openai_public.ENCODING_CONSTRUCTORS[RANK_FILE_ENCODING[encoding]]()
    params["name"] = encoding
    return tiktoken.Encoding(**params)


def download_encoding(encoding: str) -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding(encoding)
    except (requests.RequestException, OSError) as err:
        url, sha256 = rank_file_source(encoding)
        raise UnavailableInputError(
            f"Could not download the {encoding} tokenizer's BPE ranks ({type(err).__name__}: {err}). "
            f"Offline? Pass a local copy: tokenizer.bpe_file=/path/to/{url.rsplit('/', 1)[-1]} "
            f"(from {url}; it is checked against sha256 {sha256}), or point TIKTOKEN_CACHE_DIR at "
            "a directory where tiktoken has cached it."
        ) from err


def split_for_batch(text: str, chunk_chars: int = 1 << 16) -> list[str]:
    """Cut after a lone newline between two non-spaces, near every chunk_chars: the gpt2, cl100k
    and o200k pre-tokenizers never join a newline to a following non-space, so the chunks encode
    to exactly the tokens of one encode, and encode_ordinary_batch spreads them over threads."""
    chunks, start = [], 0
    while start < len(text):
        end = start + chunk_chars
        while (
            0 <= (end := text.find("\n", end))
            and end + 1 < len(text)
            and (text[end + 1].isspace() or text[end - 1].isspace())
        ):
            end += 1
        end = len(text) if end < 0 else end + 1
        chunks.append(text[start:end])
        start = end
    return chunks


class TiktokenTokenizer:
    def __init__(self, encoding: str, bpe_file: str | None) -> None:
        check_value(
            "tokenizer.encoding",
            encoding,
            str,
            choices=tuple(RANK_FILE_ENCODING),
            fix="Pick tokenizer=gpt2, tokenizer=cl100k or tokenizer=o200k.",
        )
        check_value("tokenizer.bpe_file", bpe_file, str, null="download it", fix="A local .tiktoken rank file.")
        self.name = encoding.removesuffix("_base")
        self.enc = encoding_from_file(encoding, bpe_file) if bpe_file else download_encoding(encoding)
        self.vocab_size = self.enc.n_vocab
        self.eot_id = self.enc.eot_token

    def encode(self, text: str) -> np.ndarray:
        # Ordinary: "<|endoftext|>" in a corpus is text, not a control token. A long text goes
        # through encode_ordinary_batch in chunks: same tokens, on several threads.
        chunks = split_for_batch(text)
        if len(chunks) == 1:
            return np.asarray(self.enc.encode_ordinary(text), dtype=np.int64)
        return np.concatenate([np.asarray(ids, dtype=np.int64) for ids in self.enc.encode_ordinary_batch(chunks)])

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int64) for ids in self.enc.encode_ordinary_batch(texts)]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return self.enc.decode([int(i) for i in ids], errors="replace")
