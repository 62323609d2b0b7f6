"""A Hugging Face `tokenizers` tokenizer: a local tokenizer.json (`tokenizer.path=...`), the
tokenizer.json of a hub repository (`tokenizer.name=meta-llama/Llama-2-7b-hf`, through
huggingface_hub's cache; a gated one needs a token in HF_TOKEN), or a byte-level BPE trained on
the corpus by prepare (`tokenizer.train=true tokenizer.vocab_size=N`).

The tokenizer is stored (as tokenizer.json text) in the prepared data's meta.json and so in every
checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizerImpl
from tokenizers import decoders, models, pre_tokenizers, trainers

from nanugpt.data.hub import check_hub_reachable
from nanugpt.errors import ConfigError, MissingInputError, UnavailableInputError, check_value

CHUNK_CHARS = 1 << 16  # long texts encode in line-aligned pieces, in parallel


def hub_tokenizer_file(name: str) -> str:
    """The tokenizer.json of hub repository `name`: from the Hugging Face cache, downloaded into it
    when missing (with the token in HF_TOKEN, if set: gated repositories such as meta-llama's)."""
    import huggingface_hub  # imported here: only hub tokenizers pay for it
    from huggingface_hub import constants

    try:
        if not constants.HF_HUB_OFFLINE:
            check_hub_reachable(constants.ENDPOINT)
        return huggingface_hub.hf_hub_download(name, "tokenizer.json", token=os.environ.get("HF_TOKEN"))
    except Exception as err:  # the hub client raises many kinds; all mean "could not load"
        raise UnavailableInputError(
            f"Could not load the tokenizer of tokenizer.name={name} from the Hugging Face hub: {type(err).__name__}: "
            f"{str(err).rstrip('.')}. If this machine is offline: download "
            f"https://huggingface.co/{name}/resolve/main/tokenizer.json on one with network and pass the file "
            "instead, tokenizer.path=/path/to/tokenizer.json (and drop tokenizer.name); or set HF_HUB_OFFLINE=1 with "
            "the tokenizer already in the Hugging Face cache. A gated repository (meta-llama/...) also needs access "
            "granted on its page and a token in HF_TOKEN."
        ) from None


def line_chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        pieces.append(text[start:end])
        start = end
    return pieces


class HFTokenizer:
    name = "hf"

    def __init__(
        self,
        path: str | None,
        name: str | None,
        train: bool,
        vocab_size: int,
        min_frequency: int,
        eot_token: str,
    ) -> None:
        check_value("tokenizer.path", path, str, null="a hub tokenizer (tokenizer.name) or a trained one")
        check_value("tokenizer.name", name, str, null="a local file (tokenizer.path) or a trained one")
        check_value("tokenizer.train", train, bool)
        if [path is not None, name is not None, train].count(True) != 1:
            raise ConfigError(
                "tokenizer=hf needs exactly one of tokenizer.path=/path/to/tokenizer.json (a local "
                "tokenizer), tokenizer.name=<hub repository id> (its tokenizer.json, e.g. "
                "meta-llama/Llama-2-7b-hf) or tokenizer.train=true (train a BPE of tokenizer.vocab_size on the corpus)."
            )
        check_value("tokenizer.eot_token", eot_token, str, fix='The document separator, e.g. "<|endoftext|>".')
        check_value("tokenizer.vocab_size", vocab_size, int, ge=257, fix=f"256 bytes + {eot_token} + merges.")
        check_value("tokenizer.min_frequency", min_frequency, int, ge=1, fix="Merges of rarer pairs are not learned.")
        self.train, self.target_vocab_size, self.min_frequency = train, vocab_size, min_frequency
        self.eot_token = eot_token  # separates documents of hub data sets, if the vocab has it
        self.tok: HFTokenizerImpl | None = None
        if path:
            file = Path(path).expanduser()
            if not file.is_file():
                raise MissingInputError(f"tokenizer.path={path} does not exist; pass a tokenizer.json file.")
            self.tok = HFTokenizerImpl.from_file(str(file))
        if name:
            self.tok = HFTokenizerImpl.from_file(hub_tokenizer_file(name))

    @property
    def needs_fit(self) -> bool:
        return self.tok is None

    def _impl(self) -> HFTokenizerImpl:
        if self.tok is None:
            raise RuntimeError(
                "This hf tokenizer (tokenizer.train=true) is not trained yet: prepare trains it on "
                "the corpus (python -m nanugpt.prepare tokenizer=hf tokenizer.train=true) and it "
                "travels in meta.json and in checkpoints."
            )
        return self.tok

    @property
    def vocab_size(self) -> int:
        return self._impl().get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int | None:
        return self._impl().token_to_id(self.eot_token)

    def fit(self, texts: dict[str, Iterable[str]]) -> None:
        tok = HFTokenizerImpl(models.BPE())
        # byte-level: every string encodes, no unknown token, and decoding restores it exactly
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.target_vocab_size,
            min_frequency=self.min_frequency,
            special_tokens=[self.eot_token],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=True,
        )
        pieces = (chunk for text in texts["train"] for chunk in line_chunks(text))  # train only: no val leak
        tok.train_from_iterator(pieces, trainer)
        self.tok = tok

    def state(self) -> dict[str, Any]:
        return {"tokenizer_json": self._impl().to_str()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.tok = HFTokenizerImpl.from_str(state["tokenizer_json"])

    def encode(self, text: str) -> np.ndarray:
        return np.concatenate([np.zeros(0, np.int64), *self.encode_batch(line_chunks(text))])

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self._impl().encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return self._impl().decode([int(i) for i in ids], skip_special_tokens=False)
