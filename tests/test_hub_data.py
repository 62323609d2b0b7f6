"""Hub data sets (tinystories, wikitext103, openwebtext, fineweb_edu_10b, fineweb_10b) on small local data sets
in the same formats (parquet, json, arrow) through `datasets.load_dataset`; never the network."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from nanugpt.data.hub import HubDataset
from nanugpt.data.prepared import load_prepared, prepare
from nanugpt.errors import ConfigError, UnavailableInputError
from nanugpt.metrics import read_metrics
from nanugpt.tokenizers.byte import ByteTokenizer
from nanugpt.tokenizers.char import CharTokenizer
from nanugpt.train import train

from .conftest import REPO, TINY, compose_train, plugin_args, run_cli

STORIES = [
    f"Once upon a time, story {i}: a {['cat', 'dog', 'fox'][i % 3]} named Ümit found {i * 7} apples."
    for i in range(120)
]


@pytest.fixture
def parquet_stories(tmp_path):
    """TinyStories' layout: train and validation splits with a `text` column, as parquet."""
    datasets.Dataset.from_dict({"text": STORIES[:100]}).to_parquet(tmp_path / "train.parquet")
    datasets.Dataset.from_dict({"text": STORIES[100:]}).to_parquet(tmp_path / "validation.parquet")
    return {"train": str(tmp_path / "train.parquet"), "validation": str(tmp_path / "validation.parquet")}


def local(option: str, data_files: dict, builder: str, *extra: str) -> list[str]:
    """Overrides that load `option` from local files; the datasets cache stays beside them."""
    files = ",".join(f"{k}:'{v}'" for k, v in data_files.items())
    cache = Path(next(iter(data_files.values()))).parent / "hf_cache"
    return [
        f"data={option}",
        f"data.path={builder}",
        f"data.data_files={{{files}}}",
        f"data.cache_dir='{cache}'",
        *extra,
    ]


def test_tinystories_format_prepares_in_parallel_shards(tmp_path, parquet_stories):
    overrides = ["data.num_proc=2", "data.shard_docs=30", "data.shard_tokens=2000"]
    cfg = compose_train(local("tinystories", parquet_stories, "parquet", *overrides))
    source = instantiate(cfg.data)
    assert len(list(source.pieces("train"))) == 4 and len(list(source.pieces("val"))) == 1
    data = prepare(source, ByteTokenizer(), tmp_path / "d", {"c": 1}, {})
    tok = ByteTokenizer()
    # byte has no end-of-text token: documents are joined by the text separator, in order, across
    # the shards of 2,000 tokens that 2 processes tokenized
    train = data.splits["train"]
    assert len(train) == 4 and [len(s) for s in train[:-1]] == [2000] * 3
    assert tok.decode(np.concatenate(train)) == "".join(s + "\n\n" for s in STORIES[:100])
    assert tok.decode(np.concatenate(data.splits["val"])) == "".join(s + "\n\n" for s in STORIES[100:])
    assert not (data.path / "partial").exists()


def test_openwebtext_format_holds_out_val_from_train_with_eot(tmp_path, tiktoken_rank_file):
    from nanugpt.tokenizers.tiktoken_bpe import TiktokenTokenizer

    (tmp_path / "owt.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES))
    cfg = compose_train(
        local("openwebtext", {"train": str(tmp_path / "owt.jsonl")}, "json", "data.val_fraction=0.1", "data.num_proc=1")
    )
    tok = TiktokenTokenizer("gpt2", tiktoken_rank_file("gpt2"))
    data = prepare(instantiate(cfg.data), tok, tmp_path / "d", {"c": 1}, {})
    docs = {split: tok.decode(data.splits[split][0]).split("<|endoftext|>") for split in ("train", "val")}
    assert docs["train"][-1] == docs["val"][-1] == ""  # every document ends with the eot token
    assert len(docs["val"]) - 1 == 12 and sorted(docs["train"][:-1] + docs["val"][:-1]) == sorted(STORIES)
    again = prepare(instantiate(cfg.data), tok, tmp_path / "d2", {"c": 1}, {})
    assert np.array_equal(again.splits["val"][0], data.splits["val"][0])  # the held-out split is seeded


WIKI_LINES = [" = Valkyria Chronicles III = \n", "", " Senjō no Valkyria 3 is a tactical role-playing game .\n"]


def wikitext_files(tmp_path: Path) -> dict[str, str]:
    """WikiText-103's layout: train, validation and test splits of lines, as arrow files."""
    for n, split in enumerate(("train", "validation", "test")):
        datasets.Dataset.from_dict({"text": [f"{split} {n}" + line for line in WIKI_LINES * 20]}).save_to_disk(
            tmp_path / split
        )
    return {s: str(next((tmp_path / s).glob("*.arrow"))) for s in ("train", "validation", "test")}


def test_wikitext_format_joins_lines_without_separators_and_keeps_its_test_split(tmp_path):
    cfg = compose_train(local("wikitext103", wikitext_files(tmp_path), "arrow"))
    data = prepare(instantiate(cfg.data), ByteTokenizer(), tmp_path / "d", {"c": 1}, {})
    assert ByteTokenizer().decode(data.splits["train"][0]) == "".join("train 0" + line for line in WIKI_LINES * 20)
    assert ByteTokenizer().decode(data.splits["test"][0]) == "".join("test 2" + line for line in WIKI_LINES * 20)
    assert set(data.meta["num_tokens"]) == {"train", "val", "test"}


def test_the_test_split_is_evaluated_once_in_the_final_row(tmp_path):
    files = wikitext_files(tmp_path)
    tiny = [o for o in TINY if not o.startswith("data.")] + ["model.context_length=16", "eval.iters=2"]
    cfg = compose_train(local("wikitext103", files, "arrow", *tiny, "training.max_steps=4", "eval.every=2"))
    train(cfg, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert "val/loss" in rows[1] and not any(k.startswith("test/") for r in rows[:-1] for k in r)
    assert rows[-1]["test/loss"] > 0 and rows[-1]["test/ppl"] > 1 and 0 <= rows[-1]["test/acc"] <= 1
    assert rows[-1]["test/loss"] != rows[-1]["val/loss"]  # other text than val's
    cfg = compose_train(local("wikitext103", files, "arrow", *tiny, "training.max_steps=2", "eval.test_iters=0"))
    train(cfg, tmp_path / "run0")
    assert "test/loss" not in read_metrics(tmp_path / "run0" / "metrics.jsonl")[-1]


class CrashingSource(HubDataset):
    """A prepare killed part-way: raises on one shard, as a crash would (test double)."""

    def __init__(self, *args, crash_at: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_at, self.calls = crash_at, []

    def encode_piece(self, tokenizer, piece):
        self.calls.append(STORIES.index(piece[0]) if piece[0] in STORIES else piece[0])  # its first document
        if len(self.calls) == self.crash_at:
            raise KeyboardInterrupt("killed")
        return super().encode_piece(tokenizer, piece)


def test_interrupted_prepare_continues_from_finished_shards(tmp_path, parquet_stories):
    args = plugin_args(
        "data",
        "tinystories",
        path="parquet",
        data_files=parquet_stories,
        shard_docs=20,
        shard_tokens=1000,  # 20 documents are ~1,300 chars: shards end inside pieces
        num_proc=1,
        cache_dir=str(tmp_path / "hf"),
    )
    make = lambda crash_at=None: CrashingSource(**args, crash_at=crash_at)
    tok_cfg = {"chars": None}
    with pytest.raises(KeyboardInterrupt):
        prepare(make(crash_at=4), CharTokenizer(None), tmp_path / "d", {"c": 1}, tok_cfg)
    path = next(p for p in (tmp_path / "d").iterdir() if p.is_dir())
    assert not (path / "meta.json").exists()  # never looks complete
    # 3 pieces of ~1,300 tokens made 3 whole shards; the 4th shard's temp file is gone
    assert sorted(p.name for p in path.glob("*.bin*")) == ["train_000000.bin", "train_000001.bin", "train_000002.bin"]
    with pytest.raises(FileNotFoundError):
        load_prepared(path)
    resumed_source = make()
    resumed = prepare(resumed_source, CharTokenizer(None), tmp_path / "d", {"c": 1}, tok_cfg)
    # from the piece the last finished shard ended in (its first tokens skipped), then on to val
    assert resumed_source.calls == [40, 60, 80, 100]
    fresh = prepare(make(), CharTokenizer(None), tmp_path / "fresh", {"c": 1}, tok_cfg)
    for split in ("train", "val"):
        assert resumed.meta["files"][split] == fresh.meta["files"][split]
        assert all(np.array_equal(a, b) for a, b in zip(resumed.splits[split], fresh.splits[split], strict=True))
    assert resumed.meta["tokenizer_state"] == fresh.meta["tokenizer_state"]


def test_interrupted_prepare_of_a_changed_source_restarts_cleanly(tmp_path, parquet_stories):
    args = plugin_args(
        "data", "tinystories", path="parquet", shard_docs=20, shard_tokens=1000, num_proc=1, cache_dir=str(tmp_path)
    )
    make = lambda files, crash_at=None: CrashingSource(**{**args, "data_files": files}, crash_at=crash_at)
    with pytest.raises(KeyboardInterrupt):
        prepare(make(parquet_stories, crash_at=3), ByteTokenizer(), tmp_path / "d", {"c": 1}, {})
    assert len(list((tmp_path / "d").glob("*/train_*.bin"))) == 2  # finished shards of the old text
    datasets.Dataset.from_dict({"text": [s.upper() for s in STORIES[:100]]}).to_parquet(parquet_stories["train"])
    source = make(parquet_stories)
    data = prepare(source, ByteTokenizer(), tmp_path / "d", {"c": 1}, {})
    assert source.calls[:5] == [s.upper() for s in STORIES[0:100:20]]  # every train piece again
    assert ByteTokenizer().decode(np.concatenate(data.splits["train"])) == "".join(
        s.upper() + "\n\n" for s in STORIES[:100]
    )


def test_hub_source_errors_name_the_bad_value(tmp_path, parquet_stories):
    args = plugin_args("data", "tinystories", path="parquet", data_files=parquet_stories, cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="data.val_split=test is not a split"):
        _ = HubDataset(**{**args, "val_split": "test"}).splits
    with pytest.raises(ConfigError, match="data.text_field=story is not a column"):
        _ = HubDataset(**{**args, "text_field": "story"}).splits
    with pytest.raises(ConfigError, match="data.test_split=test is not a split .*data.test_split=null"):
        _ = HubDataset(**{**args, "test_split": "test"}).splits


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_hub_data_set_is_one_paragraph(tmp_path, offline):
    proc = run_cli(
        "nanugpt.prepare",
        "data=tinystories",
        cwd=REPO,
        check=False,
        env={offline: "1", "HF_HOME": str(tmp_path / "hf"), "NANUGPT_DATA": str(tmp_path / "d")},
    )
    assert proc.returncode != 0
    err = proc.stderr
    assert "Traceback" not in err and err.count("Could not load") == 1
    assert "Error: Could not load the data set 'roneneldan/TinyStories' for data=tinystories" in err
    assert "HF_HUB_OFFLINE=1" in err and "data.data_files=" in err


def test_unreachable_hub_fails_at_once_without_retries(tmp_path, monkeypatch):
    """No network, no offline setting: one connection attempt, not the hub client's retries.
    The endpoint is a closed local port, so this holds with or without a network."""
    from datasets import config

    monkeypatch.setattr(config, "HF_HUB_OFFLINE", False)
    for proxy in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)  # behind a proxy the check is left to the hub client
    monkeypatch.setattr(config, "HF_ENDPOINT", "http://127.0.0.1:9")
    source = HubDataset(**plugin_args("data", "tinystories", cache_dir=str(tmp_path / "hf")))
    with pytest.raises(
        UnavailableInputError, match=r"the hub at http://127.0.0.1:9 cannot be reached .*HF_HUB_OFFLINE"
    ):
        _ = source.splits


def test_training_on_a_hub_format_data_set(tmp_path, parquet_stories):
    cfg = compose_train(
        [o for o in TINY if not o.startswith("data.")]
        + local("tinystories", parquet_stories, "parquet")
        + ["model.context_length=16", "training.max_steps=4", "eval.every=4", "eval.iters=1"]
    )
    assert train(cfg, tmp_path / "run") < 6.0


@pytest.mark.parametrize("option", ["tinystories", "wikitext103", "openwebtext", "fineweb_edu_10b", "fineweb_10b"])
def test_every_hub_config_prepares_local_files_of_its_layout(option, tmp_path):
    cfg = compose_train([f"data={option}"])
    splits = ["train"] + ([cfg.data.val_split] if cfg.data.val_split else [])  # train-only sets hold out val
    splits += [cfg.data.test_split] if cfg.data.test_split else []
    files = {}
    for split in splits:
        datasets.Dataset.from_dict({cfg.data.text_field: STORIES}).to_parquet(tmp_path / f"{split}.parquet")
        files[split] = str(tmp_path / f"{split}.parquet")
    cfg = compose_train(local(option, files, "parquet", "data.val_fraction=0.05", "data.num_proc=1"))
    source = instantiate(cfg.data)
    data = prepare(source, CharTokenizer(None), tmp_path / "d", {"c": option}, {"chars": None})
    text = CharTokenizer(data.meta["tokenizer_state"]["chars"]).decode(data.splits["train"][0])
    if cfg.data.val_split:
        assert text == "".join(s + cfg.data.text_separator for s in STORIES)
    else:  # data.val_fraction of the documents held out of train
        assert text.count("Once upon") == len(STORIES) - 6
    assert data.meta["source"] == option and data.meta["num_tokens"]["val"] > 0


def test_prepare_killed_mid_way_resumes_to_the_same_tokens(tmp_path):
    """A real crash: SIGKILL the prepare CLI after its first shards land, then run it again."""
    docs = [f"{i}: " + STORIES[i % len(STORIES)] for i in range(3000)]
    datasets.Dataset.from_dict({"text": docs}).to_parquet(tmp_path / "train.parquet")
    datasets.Dataset.from_dict({"text": docs[:50]}).to_parquet(tmp_path / "validation.parquet")
    files = {"train": str(tmp_path / "train.parquet"), "validation": str(tmp_path / "validation.parquet")}
    args = local("tinystories", files, "parquet", "data.shard_docs=10", "data.shard_tokens=2000", "data.num_proc=1")
    env = {**os.environ, "PYTHONPATH": str(REPO), "NANUGPT_DATA": str(tmp_path / "d")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanugpt.prepare", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while (
        not list((tmp_path / "d").glob("*/train_00000[3-9].bin"))
        and time.monotonic() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (path,) = [p for p in (tmp_path / "d").iterdir() if p.is_dir()]
    assert not (path / "meta.json").exists(), "killed too late: prepare had finished"
    progress = json.loads((path / "partial" / "progress.json").read_text())
    done_before = len(progress["splits"]["train"]["files"])
    out = run_cli("nanugpt.prepare", *args, cwd=REPO, env={"NANUGPT_DATA": str(tmp_path / "d")}).stdout
    assert f"Resuming an interrupted prepare: {done_before} finished shard(s)" in out
    resumed = load_prepared(path)
    assert len(resumed.splits["train"]) > done_before
    assert ByteTokenizer().decode(np.concatenate(resumed.splits["train"])) == "".join(d + "\n\n" for d in docs)
    assert not (path / "partial").exists()


def test_prepare_cli_trains_a_bpe_that_training_then_reuses(tmp_path):
    overrides = ["data.max_bytes=60000", "tokenizer=hf", "tokenizer.train=true", "tokenizer.vocab_size=300"]
    out = run_cli("nanugpt.prepare", *overrides, cwd=REPO).stdout
    assert "vocab 300" in out
    path = out.strip().splitlines()[-1].split(":")[0]
    meta = json.loads((Path(path) / "meta.json").read_text())
    assert meta["vocab_size"] == 300 and "tokenizer_json" in meta["tokenizer_state"]
    cfg = compose_train(TINY + overrides + ["training.max_steps=2", "eval.every=2", "eval.iters=1"])
    train(cfg, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["data_meta"]["seconds"] == meta["seconds"]  # the prepared copy, not a second one


def test_local_text_files_not_in_utf8_are_refused_with_file_and_offset(tmp_path):
    (tmp_path / "train.txt").write_text("one upon a time\n" * 20)
    (tmp_path / "validation.txt").write_bytes("the end\nna\u00efve\n".encode("latin-1"))
    files = {"train": str(tmp_path / "train.txt"), "validation": str(tmp_path / "validation.txt")}
    source = instantiate(compose_train(local("tinystories", files, "text", "data.num_proc=1")).data)
    with pytest.raises(ConfigError, match=r"validation.txt is not valid utf-8: byte ef at offset 10 \(line 2\)"):
        prepare(source, CharTokenizer(None), tmp_path / "d", {}, {})
