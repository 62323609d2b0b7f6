"""OpenAI's BPE tokenizers through tiktoken: gpt2 (50,257), cl100k_base (100,277), o200k_base
(200,019). Ids above 65,536 make the prepared data uint32.

tiktoken downloads an encoding's rank file on first use (cached under $TIKTOKEN_CACHE_DIR).
Offline, pass the file itself with `tokenizer.bpe_file=...`: it is checked against the sha256
that tiktoken itself expects for that encoding.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS

from nanugpt.errors import ConfigError, MissingInputError, UnavailableInputError, check_value

# Our encoding name -> (tiktoken's encoding that reads a single .tiktoken rank file, that file's
# URL and sha256, as tiktoken_ext.openai_public has them; tests/test_tokenizers.py checks them
# against tiktoken). tiktoken's own "gpt2" reads two data-gym files instead; r50k_base has the
# same ranks, regex and special token, so a local gpt2 is built from r50k_base.tiktoken.
RANK_FILES = {
    "gpt2": (
        "r50k_base",
        "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    ),
    "cl100k_base": (
        "cl100k_base",
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "o200k_base",
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


def rank_file_source(encoding: str) -> tuple[str, str]:
    """(url, sha256) of the rank file tiktoken downloads for `encoding`."""
    _, url, sha256 = RANK_FILES[encoding]
    return url, sha256


def encoding_from_file(encoding: str, bpe_file: str) -> tiktoken.Encoding:
    """Build `encoding` from a local rank file, refusing one whose sha256 tiktoken does not expect."""
    path = Path(bpe_file).expanduser()
    tiktoken_name, url, expected = RANK_FILES[encoding]
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
    # tiktoken's own constructor (its plugin table, not get_encoding, which would keep the result
    # for the whole process), so the regex and special tokens are exactly its own. It looks for
    # the rank file in $TIKTOKEN_CACHE_DIR, under the sha1 of its URL, before downloading (and
    # checks the hash again): a one-off cache holding the verified file is where it finds it.
    with tempfile.TemporaryDirectory() as cache:
        shutil.copyfile(path, Path(cache) / hashlib.sha1(url.encode()).hexdigest())
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
        try:
            params = ENCODING_CONSTRUCTORS[tiktoken_name]()
        finally:
            if saved is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved
    params["name"] = encoding
    return tiktoken.Encoding(**params)


def download_encoding(encoding: str) -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding(encoding)
    except OSError as err:  # requests' errors are OSErrors too
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
            choices=tuple(RANK_FILES),
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
