"""A checkpoint is untrusted input: nothing in it may make nanugpt run code.

`generate` rebuilds the model and tokenizer from the config saved in a checkpoint. Only a class on
nanugpt's allowlist, called with plain values, may be built from it, and no OmegaConf
interpolation in it is ever resolved (`${oc.create:...}` turns a string into a config node with
its own `_target_`). Resume builds from the current config and only compares the saved one.
Each crafted checkpoint below would call `probe` (or the `nanugpt_security_probe` resolver) if
anything resolved or instantiated it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nanugpt.checkpoint import load_checkpoint
from nanugpt.generate import UntrustedCheckpointError, allowed_targets, build_from_checkpoint
from nanugpt.train import train
from tests.conftest import TINY, compose_train, run_cli

CALLS: list[str] = []


def probe(*args, **kwargs) -> None:
    CALLS.append("probe")


def write_marker(path: str, **kwargs) -> None:
    Path(path).write_text("pwned")


def custom_model(**kwargs) -> torch.nn.Module:
    """Stands for a user's own model class, built only with trust_checkpoint=true."""
    CALLS.append("custom_model")
    from nanugpt.models.gpt import GPT

    return GPT(**kwargs)


OmegaConf.register_new_resolver("nanugpt_security_probe", lambda *a: CALLS.append("resolver") or 1, replace=True)

PROBE = "tests.test_security.probe"
# (part, key, crafted value): each must be refused by generate, and ignored by resume
CRAFTED = [
    ("model", "_target_", "os.system"),
    ("model", "_target_", "nanugpt.utils.os.system"),  # hydra resolves this to os.system: why the list is exact
    ("model", "_target_", PROBE),
    ("tokenizer", "_target_", "nanugpt.models.gpt.torch.load"),
    ("model", "n_layer", "${oc.create:{_target_: " + PROBE + "}}"),
    ("model", "dropout", "${oc.decode:'{_target_: " + PROBE + "}'}"),
    ("model", "n_head", "${nanugpt_security_probe:}"),
    ("tokenizer", "extra", "${oc.create:{_target_: " + PROBE + "}}"),
    ("model", "init", {"_target_": PROBE}),
    ("model", "layers", [{"_target_": PROBE}]),
    ("model", "_args_", [{"_target_": PROBE}]),
    ("model", "_partial_", True),
    ("model", "_recursive_", True),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("security_run")
    train(compose_train([*TINY, "training.max_steps=2", "eval.every=2", "eval.iters=2"]), run_dir)
    return run_dir / "checkpoints" / "last.pt"


@pytest.fixture(autouse=True)
def no_calls_yet():
    CALLS.clear()
    yield


def crafted(path: Path, part: str, key: str, value) -> dict:
    ckpt = copy.deepcopy(load_checkpoint(path))
    ckpt["config"][part][key] = value
    return ckpt


@pytest.mark.parametrize(("part", "key", "value"), CRAFTED)
def test_generate_builds_nothing_from_a_crafted_config(checkpoint, part, key, value):
    ckpt = crafted(checkpoint, part, key, value)
    with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint=true"):
        build_from_checkpoint(ckpt, torch.device("cpu"))
    assert CALLS == []


def test_plain_allowlisted_config_builds_and_trust_is_the_opt_in(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    assert ckpt["config"]["model"]["_target_"] in allowed_targets()
    model, tokenizer = build_from_checkpoint(ckpt, torch.device("cpu"))
    assert all(torch.equal(ckpt["model"][k], v) for k, v in model.state_dict().items())
    assert tokenizer.vocab_size == 256
    custom = crafted(checkpoint, "model", "_target_", "tests.test_security.custom_model")
    with pytest.raises(UntrustedCheckpointError):
        build_from_checkpoint(custom, torch.device("cpu"))
    assert CALLS == []
    build_from_checkpoint(custom, torch.device("cpu"), trust=True)  # the user's explicit choice
    assert CALLS == ["custom_model"]


def test_generate_cli_refuses_a_crafted_checkpoint_in_one_paragraph(checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    value = "${oc.create:{_target_: tests.test_security.write_marker, path: " + str(marker) + "}}"
    path = tmp_path / "crafted.pt"
    torch.save(crafted(checkpoint, "model", "n_embd", value), path)
    proc = run_cli("nanugpt.generate", f"ckpt={path}", "max_new_tokens=2", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())
    assert f"The config in {path} is not plain nanugpt data (n_embd: the interpolation" in err
    assert "trust_checkpoint=true" in err and not marker.exists()


def test_resume_never_resolves_or_builds_from_the_saved_config(checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = load_checkpoint(checkpoint)
    for part, key, value in CRAFTED:
        if key != "_target_":
            ckpt["config"][part][key] = value
    ckpt["config"]["model"]["hook"] = (
        "${oc.create:{_target_: tests.test_security.write_marker, path: " + str(marker) + "}}"
    )
    ckpt["config"]["training"] = "${nanugpt_security_probe:}"
    ckpt["config"]["resume"] = {"_target_": PROBE}
    path = tmp_path / "crafted.pt"
    torch.save(ckpt, path)
    small = [*TINY, "eval.every=2", "eval.iters=2"]
    # resume=<path> into a new run dir, then resume=auto from a crafted last.pt in the run dir
    run_dir = tmp_path / "run"
    train(compose_train([*small, "training.max_steps=4", f"resume={path}"]), run_dir)
    (run_dir / "checkpoints" / "last.pt").unlink()
    torch.save(ckpt | {"step": 4}, run_dir / "checkpoints" / "last.pt")
    train(compose_train([*small, "training.max_steps=6"]), run_dir)
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["step"] == 6 and "hook" not in saved["config"]["model"]  # checkpoints carry the current config
    # a shape mismatch compares the saved config with the current one: as plain text only
    with pytest.raises(Exception, match="holds a different model"):
        train(compose_train([*small, "model.n_embd=64", "training.max_steps=8", f"resume={path}"]), tmp_path / "run2")
    assert CALLS == [] and not marker.exists()
