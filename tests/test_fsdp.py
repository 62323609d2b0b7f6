"""FSDP (training.parallel=fsdp) on this CPU machine: real `torchrun` processes on gloo, FSDP2's
`fully_shard` and sharded DCP checkpoints, compared with 2-rank DDP and with one process.

Tolerance: as in tests/test_ddp.py, every run sees the same global batch at every step, so the
gradients agree up to float32 summation order (FSDP reduce-scatters each micro-step's gradient
where DDP all-reduces the accumulated one). Observed (gpt, 2 layers, width 32, 12 steps, torch
2.13 CPU): FSDP within 2.3e-8 relative of one process at every step. We allow 1e-4 relative, far
below one step's change in loss (~3e-2): a wrong shard, a doubled or missing gradient fails.

CI launches torchrun four times (FSDP, DDP with activation checkpointing, and the killed and
resumed FSDP run); the other checks load what those wrote, in this process: ~100 s in all on 2
cores. The other models, Muon, compile and dropout are marked slow.
"""

from __future__ import annotations

import os
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from nanugpt.checkpoint import (
    consolidate_main,
    find_resume_checkpoint,
    load_checkpoint,
    load_sharded,
    pointer,
    read_log,
    save_sharded_checkpoint,
)
from nanugpt.config import validate_train
from nanugpt.errors import CheckpointError, ConfigError
from nanugpt.generate import Sampler
from nanugpt.metrics import read_metrics
from nanugpt.train import train

from .conftest import compose_train
from .test_checkpoint_safety import assert_log_names_only_existing_files, kills_during_saves
from .test_ddp import DDP_TINY, STEPS, data_dir_override, torchrun
from .test_resume import finish, kill_after_step, launch

REL_TOL = 1e-4
FSDP = "training.parallel=fsdp"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "nanugpt.train"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")


def losses(run_dir: Path) -> list[float]:
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["train/loss"] for r in rows]


def assert_close_losses(reference: Path, other: Path, steps: int = STEPS) -> None:
    ref, got = losses(reference), losses(other)
    assert len(ref) == len(got) == steps
    assert got == pytest.approx(ref, rel=REL_TOL)
    assert ref[-1] < ref[0] - 0.05  # it trained, so equality means something


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return data_dir_override(tmp_path_factory)


@pytest.fixture(scope="module")
def single(tmp_path_factory, data) -> Path:
    run_dir = tmp_path_factory.mktemp("single")
    train(compose_train(DDP_TINY + [data]), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory, data) -> Path:
    """2 FSDP ranks, 2 micro-steps each; sharded checkpoints at steps 6 and 12."""
    run_dir = tmp_path_factory.mktemp("fsdp") / "run"
    torchrun(run_dir, data, FSDP)
    return run_dir


def test_two_fsdp_ranks_match_two_ddp_ranks_and_one_process(single, fsdp, data, tmp_path):
    """DDP runs with activation checkpointing (it applies to every parallel mode): recomputing
    each block's activations in backward must not change what is trained."""
    assert_close_losses(single, fsdp)
    ddp_dir = tmp_path / "ddp"
    torchrun(ddp_dir, data, "training.parallel=ddp", "training.activation_checkpointing=true")
    assert_close_losses(single, ddp_dir)
    assert_close_losses(ddp_dir, fsdp)


def test_sharded_checkpoints_are_directories_logged_like_files(fsdp):
    ckpt_dir = fsdp / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        "best",
        "checkpoint_log.yaml",
        "last",
        "step_0000006",
        "step_0000012",
    ]
    assert os.readlink(ckpt_dir / "last") == "step_0000012"
    # each rank wrote its own shard file; rank 0 the metadata and the plain state
    assert {p.name for p in (ckpt_dir / "step_0000012").iterdir()} == {
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "state.pt",
    }
    assert_log_names_only_existing_files(ckpt_dir)
    assert {(e["path"], e["step"]) for e in read_log(ckpt_dir)} >= {("last", 12), ("step_0000006", 6)}
    path, plain = find_resume_checkpoint("auto", fsdp)
    assert path == ckpt_dir / "last" and plain["step"] == STEPS and len(plain["rng"]) == 2
    assert "model" not in plain  # tensors live in the DCP shards only


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_two_rank_checkpoint_resumes_on_one_process(fsdp, data, tmp_path, parallel):
    """Resharding: the 2-rank checkpoint of step 6 into one process, FSDP (a group of one) and
    plain; the next step's loss is the 2-rank run's."""
    run_dir = tmp_path / "one"
    resume = f"resume={fsdp / 'checkpoints' / 'step_0000006'}"
    train(compose_train(DDP_TINY + [data, f"training.parallel={parallel}", resume, "training.max_steps=7"]), run_dir)
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [7]
    assert losses(fsdp)[6] == pytest.approx(read_metrics(run_dir / "metrics.jsonl")[0]["train/loss"], rel=REL_TOL)
    if parallel == "ddp":  # a plain run saves a file again, beside nothing sharded
        assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "checkpoints" / "last").exists()


def test_sigkill_and_resume_continues_exactly(fsdp, data, tmp_path):
    """Killed (with all its processes) after step 7, rerun in the same run dir: resume=auto loads
    the sharded step 6 and every train loss, and the final weights, equal the uninterrupted run's
    bit for bit."""
    run_dir, overrides = tmp_path / "killed", [*DDP_TINY, data, FSDP]
    kill_after_step(launch(TORCHRUN, run_dir, overrides, "killed"), run_dir, 7)
    finish(launch(TORCHRUN, run_dir, overrides, "resume"), "resume")
    log = (tmp_path / "killed-resume.log").read_text()
    assert f"Resumed from {run_dir}/checkpoints/last at step 6" in log
    assert losses(run_dir) == losses(fsdp)
    ref, got = load_checkpoint(fsdp / "checkpoints" / "last"), load_checkpoint(run_dir / "checkpoints" / "last")
    assert ref["model"].keys() == got["model"].keys()
    for name, tensor in ref["model"].items():
        assert torch.equal(tensor, got["model"][name]), name


def test_consolidate_and_generate(single, fsdp, tmp_path):
    """The sharded model as one file: the same tensors as the 1-process run's (up to float32
    rounding), and generate samples the same text from the file and from the run dir."""
    out = consolidate_main(["consolidate", str(fsdp), str(tmp_path / "model.pt")])
    consolidated = torch.load(out, weights_only=True)
    plain = load_checkpoint(single / "checkpoints" / "last.pt")
    assert consolidated["model"].keys() == plain["model"].keys()
    for name, tensor in plain["model"].items():
        torch.testing.assert_close(consolidated["model"][name], tensor, msg=name)
    assert consolidated["step"] == STEPS and consolidated["config"]["training"]["parallel"] == "fsdp"
    assert "optimizer" not in consolidated

    options = {"max_new_tokens": 12, "temperature": 0.0, "progress": False}
    from_file = Sampler.load(out, device="cpu")("def ", **options)
    from_dir = Sampler.load(fsdp, device="cpu")
    assert from_dir.path == fsdp / "checkpoints" / "best"  # consolidated on demand, in memory
    assert from_dir("def ", **options) == from_file
    with pytest.raises(CheckpointError, match="model weights only"):
        train(compose_train(DDP_TINY + [f"resume={out}"]), tmp_path / "from_consolidated")


# ---- in-process: bfloat16, the save's complete-or-absent guarantee, untrusted sharded checkpoints, config


def test_bfloat16_fsdp_trains_what_bfloat16_autocast_trains(data, tmp_path):
    """FSDP's bf16 policy (bf16 blocks, fp32 reduction, fp32 between blocks) on one process
    against plain bf16 autocast: the same losses up to bf16 rounding (observed 1e-5 relative),
    where a wrong policy fails outright (mixed-dtype ops) or drifts by far more."""
    bf16 = [*DDP_TINY, data, "training.dtype=bfloat16", "training.max_steps=4", "eval.every=4"]
    train(compose_train(bf16), tmp_path / "plain")
    train(compose_train([*bf16, FSDP]), tmp_path / "fsdp")
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "plain"), rel=1e-3)


def shard_state(step: int) -> dict:
    """4 MB, so a save is wide enough to be hit by a random kill; numpy-built (a forked child)."""
    return {"model": {"w": torch.from_numpy(np.full(1 << 20, float(step), dtype=np.float32))}}


def save_sharded_forever(ckpt_dir: Path, step: int) -> None:
    while True:
        step += 1
        plain = {"step": step}
        save_sharded_checkpoint(ckpt_dir, shard_state(step), plain, step, 1.0 / step, step % 3 == 1, 2, True)


def test_sigkill_during_sharded_saves_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL a process that only saves sharded checkpoints, 15 times at random moments: after
    each kill resume=auto finds a whole directory (metadata, shards and state.pt of one step),
    the log names only what exists, and best holds a best step. Leftover temp dirs prove that
    kills landed mid-save; they are never taken for a checkpoint."""
    import torch.distributed.checkpoint  # noqa: F401  (imported once here, not in every child)

    ckpt_dir, mid_save = tmp_path / "checkpoints", 0
    for _, landed_mid_save in kills_during_saves(ckpt_dir, save_sharded_forever, 15, (0.1, 0.5)):
        mid_save += landed_mid_save
        assert_log_names_only_existing_files(ckpt_dir)
        resumed = find_resume_checkpoint("auto", tmp_path)
        if resumed is None:  # killed before its first save was complete: no step directory exists
            assert not list(ckpt_dir.glob("step_*"))
            continue
        path, plain = resumed
        assert path == pointer(ckpt_dir, "last") and plain["step"] >= max(e["step"] for e in read_log(ckpt_dir))
        assert torch.equal(load_checkpoint(path)["model"]["w"], shard_state(plain["step"])["model"]["w"])
        best = load_checkpoint(ckpt_dir / "best")
        assert best["step"] % 3 == 1 and torch.equal(best["model"]["w"], shard_state(best["step"])["model"]["w"])
    assert mid_save >= 3 and plain["step"] >= 10, (mid_save, plain["step"])


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_untrusted_sharded_checkpoint_runs_no_code(tmp_path, monkeypatch):
    """DCP unpickles .metadata and non-tensor entries with plain pickle; nanugpt reads the
    metadata with an unpickler that knows only DCP's classes, and refuses non-tensor entries."""
    import torch.distributed.checkpoint as dcp

    monkeypatch.chdir(tmp_path)  # where os.system("touch pwned") would leave its file
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # saving in one process: intended
    ckpt = tmp_path / "step_0000001"
    dcp.save({"model": {"w": torch.ones(2)}}, checkpoint_id=ckpt)
    torch.save({"step": 1}, ckpt / "state.pt")
    assert torch.equal(load_checkpoint(ckpt)["model"]["w"], torch.ones(2))

    (ckpt / ".metadata").write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(CheckpointError, match="not part of a DCP checkpoint's metadata"):
        load_checkpoint(ckpt)
    assert not (tmp_path / "pwned").exists()

    # A non-tensor entry where a resume expects a tensor would be unpickled: refused instead.
    with_bytes = tmp_path / "with_bytes"
    dcp.save({"model": {"w": torch.ones(2), "note": RunsCode()}}, checkpoint_id=with_bytes)
    torch.save({"step": 1}, with_bytes / "state.pt")
    with pytest.raises(CheckpointError, match="non-tensor entry 'model.note'"):
        load_sharded(with_bytes, {"model": {"w": torch.empty(2), "note": torch.empty(1)}})
    assert list(load_checkpoint(with_bytes)["model"]) == ["w"]  # consolidation reads tensors only
    assert not (tmp_path / "pwned").exists()


def test_removed_zero1_key_and_fsdp_float16_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="training.zero1=true was removed.*training.parallel=zero1"):
        validate_train(compose_train(["training.zero1=true"]))
    with pytest.raises(ConfigError, match="float16 with training.parallel=fsdp"):
        validate_train(compose_train([FSDP, "training.dtype=float16"]))


# ---- slow: the other models, Muon, compile, dropout


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        # llama compiled: each block compiled on its own before fully_shard
        ["model=llama_tiny", "model.n_kv_head=1", "training.compile=true"],
        # gpt_modern with Muon, whose Newton-Schulz gathers each sharded matrix; checkpointed blocks
        ["model=gpt_modern", "optim=muon", "training.activation_checkpointing=true"],
        # transformers' own decoder layers as the blocks (the optional [hf] extra)
        ["model=hf_gpt2", "model.dropout=0.0"],
    ],
    ids=["llama", "gpt_modern_muon", "hf_gpt2"],
)
def test_other_models_match_one_process(model, data, tmp_path):
    if model[0].startswith("model=hf_"):
        pytest.importorskip("transformers", reason="optional extra [hf] not installed")
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    plain = [m for m in model if not m.startswith(("training.compile", "training.activation"))]
    train(compose_train(DDP_TINY + [data, *plain]), single_dir)
    torchrun(tmp_path / "fsdp", data, FSDP, *model)
    assert_close_losses(single_dir, tmp_path / "fsdp")


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical_with_dropout(tmp_path):
    """As tests/test_resume.py's DDP case: with dropout each rank's RNG state must come back."""
    from .test_resume import BASE, check_kill_and_resume_is_bit_identical

    overrides = [*BASE, "training.device_batch_size=4", "training.device=cpu", FSDP]
    check_kill_and_resume_is_bit_identical(tmp_path, TORCHRUN, overrides)
