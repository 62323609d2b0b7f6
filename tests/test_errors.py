"""Bad input ends in one paragraph that names the bad value and the fix, not a traceback.

Most cases run the real CLI as a user would and check the exit code, the message on stderr, and
that no Python traceback is printed (Hydra's one line about HYDRA_FULL_ERROR is allowed). A few
call `train()` in-process to save CI time: they check the UserError's message, which the CLIs
print the same way (`nanugpt.errors.report_user_errors`, proven by the CLI cases).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nanugpt.checkpoint import load_checkpoint
from nanugpt.errors import ConfigError, UserError, find_user_error
from nanugpt.generate import encode_prompt
from nanugpt.metrics import read_metrics
from nanugpt.tokenizers.char import CharTokenizer
from nanugpt.train import train

from .conftest import REPO, TINY, compose_train, run_cli

SMALL = [*TINY, "training.max_steps=4", "eval.every=2", "eval.iters=2"]


def fails_cleanly(module: str, *args: str, cwd: Path, env: dict | None = None) -> str:
    """Run a CLI that must fail; return its stderr after checking it is a clean message."""
    proc = run_cli(module, *args, cwd=cwd, env=env, check=False)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return " ".join(proc.stderr.split())  # messages wrap nowhere, but compare whitespace-insensitively


def train_fails(tmp_path: Path, *overrides: str, env: dict | None = None) -> str:
    base = [o for o in SMALL if not o.startswith("data.")] if "data=text" in overrides else SMALL
    return fails_cleanly("nanugpt.train", *base, *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)


def train_error(tmp_path: Path, *overrides: str) -> str:
    """In-process: the UserError train() raises (possibly wrapped by hydra's instantiate)."""
    base = [o for o in SMALL if not o.startswith("data.")] if "data=text" in overrides else SMALL
    with pytest.raises(Exception) as raised:
        train(compose_train([*base, *overrides]), tmp_path / "run")
    err = find_user_error(raised.value)
    assert isinstance(err, UserError), raised.value
    return str(err)


# Lines Hydra adds around the one paragraph: where the job failed, and how to get the full trace.
HYDRA_LINES = ("Error executing job with overrides:", "Set the environment variable HYDRA_FULL_ERROR=1")


def one_paragraph(module: str, *args: str, cwd: Path, env: dict | None = None) -> str:
    """Run a CLI that must fail at start-up; return its message after checking that it is the
    one `Error: ...` line (besides Hydra's own lines), with no traceback."""
    proc = run_cli(module, *args, cwd=cwd, env=env, check=False)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(HYDRA_LINES)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


def test_out_of_range_value_is_one_paragraph_and_leaves_no_run_dir(tmp_path):
    msg = one_paragraph("nanugpt.train", "eval.iters=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert msg == "Error: eval.iters=0 is out of range: it must be an integer >= 1. The default is eval.iters=20."
    assert not (tmp_path / "run").exists()  # checked before Hydra creates the run dir


def test_unknown_choice_lists_the_valid_ones(tmp_path):
    err = train_fails(tmp_path, "training.dtype=fp16")
    assert "Invalid value 'fp16', expected one of [auto, float32, bfloat16, float16]" in err


def test_run_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "a_file").write_text("")
    msg = one_paragraph("nanugpt.train", f"paths.output_root={tmp_path / 'a_file'}", cwd=tmp_path)
    assert f"cannot be a directory: {tmp_path / 'a_file'} is a file. Point paths.output_root" in msg
    sweep = one_paragraph(
        "nanugpt.train", "-m", f"paths.sweep_root={tmp_path / 'a_file'}", "optim.lr=1e-3,2e-3", cwd=tmp_path
    )
    assert f"hydra.sweep.dir='{tmp_path / 'a_file'}/" in sweep and "Point paths.sweep_root" in sweep


def test_empty_data_dir_variable(tmp_path):
    msg = one_paragraph("nanugpt.prepare", cwd=tmp_path, env={"NANUGPT_DATA": ""})
    assert "paths.data_dir='' (from NANUGPT_DATA) is empty" in msg and "Unset NANUGPT_DATA" in msg
    assert list(tmp_path.iterdir()) == []  # nothing prepared into the current directory


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_requested_on_a_machine_without_one(tmp_path):
    msg = one_paragraph("nanugpt.train", "training.device=cuda", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "training.device=cuda, but torch sees no CUDA device" in msg and "training.device=auto" in msg


def test_generate_without_a_checkpoint_and_with_a_bad_sampler_value(tmp_path):
    msg = one_paragraph("nanugpt.generate", cwd=tmp_path)
    assert msg.startswith("Error: ckpt has no value and no default; pass it on the command line, e.g. ckpt=")
    msg = one_paragraph("nanugpt.generate", "ckpt=model.pt", "top_p=1.5", cwd=tmp_path)
    assert "top_p=1.5 is out of range: it must be a number > 0 and <= 1, or null (no nucleus cut)." in msg


def test_config_key_typo(tmp_path):
    err = train_fails(tmp_path, "training.max_stpes=5")
    assert "Key 'max_stpes' not in 'TrainingConfig'" in err


def test_config_group_option_typo(tmp_path):
    err = train_fails(tmp_path, "model=gpt_tiyn")
    assert "Could not find 'model/gpt_tiyn'" in err and "gpt_tiny" in err  # lists the real options


def test_global_batch_not_divisible(tmp_path):
    err = train_error(tmp_path, "training.global_batch_size=12")
    assert "training.global_batch_size=12 is not divisible by training.device_batch_size=8 x world_size=1" in err
    assert "multiple of 8" in err


def test_data_path_missing(tmp_path):
    err = train_fails(tmp_path, "data=text", f"data.path={tmp_path / 'nope.txt'}")
    assert f"data.path={tmp_path / 'nope.txt'} does not exist" in err


def test_data_path_empty(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    err = train_error(tmp_path, "data=text", f"data.path={tmp_path / 'empty.txt'}")
    assert "holds no text" in err and "empty.txt" in err


def test_corpus_smaller_than_a_context_window(tmp_path):
    (tmp_path / "tiny.txt").write_text("x" * 200)  # 180 train / 20 val bytes; context is 32
    err = train_error(tmp_path, "data=text", f"data.path={tmp_path / 'tiny.txt'}")
    assert "The val split has 20 tokens, fewer than one context window of 32" in err
    assert "model.context_length" in err


def test_float16_on_cpu(tmp_path):
    err = train_error(tmp_path, "training.dtype=float16", "training.device=cpu")
    assert "training.dtype=float16 needs a CUDA device" in err and "bfloat16" in err


def test_compile_without_a_compiler(tmp_path):
    # CXX names a compiler that does not exist: torch.compile's codegen could not build anything.
    err = train_fails(tmp_path, "training.compile=true", env={"CXX": str(tmp_path / "no-such-c++")})
    assert "training.compile=true needs a C++ compiler" in err and "training.compile=false" in err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tiny_run")
    run_cli("nanugpt.train", *SMALL, f"hydra.run.dir={tmp / 'run'}", cwd=tmp)
    return tmp / "run"


def test_checkpoint_shape_mismatch_on_resume(tiny_run, tmp_path):
    # Same run dir (resume=auto) but a wider model: name both shapes and the fix.
    err = fails_cleanly("nanugpt.train", *SMALL, "model.n_embd=64", f"hydra.run.dir={tiny_run}", cwd=tmp_path)
    assert f"Checkpoint {tiny_run}/checkpoints/last.pt holds a different model than the config builds" in err
    assert "model.n_embd=32 (config: 64)" in err
    assert "transformer.wte.weight: checkpoint (256, 32) vs config (256, 64)" in err
    assert "resume=never" in err


def test_checkpoint_vocab_mismatch_on_resume(tiny_run):
    with pytest.raises(UserError) as raised:
        train(compose_train([*SMALL, "model.vocab_size=300"]), tiny_run)
    err = str(raised.value)
    assert "model.vocab_size=256 (config: 300)" in err and "checkpoint (256, 32) vs config (300, 32)" in err


def test_generate_missing_checkpoint(tmp_path):
    err = fails_cleanly("nanugpt.generate", f"ckpt={tmp_path / 'nope.pt'}", cwd=tmp_path)
    assert f"Checkpoint {tmp_path / 'nope.pt'} does not exist" in err


def test_generate_prompt_the_tokenizer_cannot_encode():
    tokenizer = CharTokenizer("abc ")  # nanugpt's char tokenizer, with a 4-character vocab
    assert encode_prompt(tokenizer, "ab c", 8) == [0, 1, 3, 2]
    with pytest.raises(ConfigError) as raised:
        encode_prompt(tokenizer, "abz", 8)
    assert "The char tokenizer cannot encode prompt='abz'" in str(raised.value)
    assert "Characters 'z' are not in the char vocab of 4 characters" in str(raised.value)
    with pytest.raises(ConfigError, match="prompt is empty"):
        encode_prompt(tokenizer, "", 8)
    with pytest.raises(ConfigError, match="The prompt is 9 tokens, longer than the model's context of 8"):
        encode_prompt(tokenizer, "abcabcabc", 8)  # the CLI case: tests/test_train.py


# lr=100 without clipping: losses grow for 4 steps, then the grad norm at step 5 is inf.
EXPLODE = ["optim.lr=100", "sched.warmup_steps=0", "training.grad_clip=0", "training.max_steps=10", "eval.every=2"]


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    err = train_fails(tmp_path, *EXPLODE)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert "Training stopped at step 5: the train loss is" in err and "grad norm inf" in err
    assert f"the last good checkpoint {ckpt_dir / 'last.pt'} (step 4) is intact" in err
    assert "training.skip_nonfinite=true" in err
    ckpt = load_checkpoint(ckpt_dir / "last.pt")
    assert ckpt["step"] == 4 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_skip_nonfinite_skips_the_bad_steps_and_finishes(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli(
        "nanugpt.train", *SMALL, *EXPLODE, "training.skip_nonfinite=true", f"hydra.run.dir={run_dir}", cwd=tmp_path
    ).stdout
    assert "Step 5: train loss" in out and "skipping its optimizer step" in out
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert [r["step"] for r in rows if r.get("train/skipped_nonfinite")] == list(range(5, 11))
    # Skipped steps leave the weights alone: every later eval sees the step-4 weights exactly.
    val = {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}
    assert val[6] == val[8] == val[10] == val[4] and math.isfinite(val[4])
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["step"] == 10 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_repo_has_no_pickle_or_eval_of_user_files():
    """Security: checkpoints load with weights_only=True, and nothing unpickles or evals input."""
    sources = {p: p.read_text() for p in (REPO / "nanugpt").rglob("*.py")}
    for path, text in sources.items():
        assert "pickle.load" not in text and "eval(" not in text.replace("_eval(", "").replace(".eval(", ""), path
        for unsafe in (
            "exec(",
            "yaml.load(",
            "yaml.unsafe_load",
            "allow_pickle=True",
            "trust_remote_code",
            "weights_only=False",
        ):
            assert unsafe not in text, f"{path}: {unsafe}"
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
