"""Every model / optim / sched / scaler option composes and trains a few steps on CPU.

Model options are trained at the tiny size of conftest.TINY (the architecture is the option's,
the width is not), then sampled from their checkpoint."""

import sysconfig
from pathlib import Path

import pytest
import torch

from nanugpt.checkpoint import load_checkpoint
from nanugpt.generate import build_from_checkpoint
from nanugpt.metrics import read_metrics
from nanugpt.sampling import generate
from nanugpt.train import train

from .conftest import TINY, compose_train, options

GROUPS = ["model", "optim", "sched", "scaler"]
# Arguments some options need at the tiny size (TINY has 2 heads, width 32).
EXTRA = {
    ("model", "tinyllama_1b"): ["model.n_kv_head=1", "model.intermediate_size=64"],
    ("model", "llama3_1b"): ["model.n_kv_head=1", "model.intermediate_size=64"],
    ("sched", "lr_range_test"): ["sched.max_lr=1e-2"],
}
NEEDS_TRANSFORMERS = {("model", "hf_gpt2"), ("model", "hf_llama")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~300 KB of Python source as a `data=text` file: the same kind of text as the default
    corpus, without walking the whole stdlib tree for every run."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    text = ""
    for f in files:
        text += f.read_text(encoding="utf-8", errors="replace")
        if len(text) > 300_000:
            break
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_trains_a_few_steps(group, option, tmp_path, corpus):
    if (group, option) in NEEDS_TRANSFORMERS:
        pytest.importorskip("transformers", reason="optional extra [hf] not installed")
    tiny = [o for o in TINY if not o.startswith("data.")] + ["data=text", f"data.path={corpus}"]
    cfg = compose_train(
        tiny + [f"{group}={option}", "training.max_steps=12", "eval.every=12"] + EXTRA.get((group, option), [])
    )
    if "warmup_steps" in cfg.sched:
        cfg.sched.warmup_steps = 2
    train(cfg, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[-1]["train/loss"] < rows[0]["train/loss"], [r["train/loss"] for r in rows]
    if group == "model":  # the checkpoint rebuilds (allowlisted target) and samples
        model, _ = build_from_checkpoint(load_checkpoint(tmp_path / "checkpoints" / "last.pt"), torch.device("cpu"))
        out = generate(model, torch.zeros(1, 1, dtype=torch.long), max_new_tokens=40, temperature=1.0)
        assert out.shape == (1, 41)  # longer than the context of 32: the window slides
