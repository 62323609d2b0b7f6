import math
import statistics
from pathlib import Path

import pytest
import torch

from nanugpt.checkpoint import load_checkpoint, read_log
from nanugpt.data.contract import BatchSpec
from nanugpt.errors import NonFiniteLossError
from nanugpt.generate import build_from_checkpoint
from nanugpt.metrics import read_metrics
from nanugpt.train import train

from .conftest import REPO, TINY, compose_train, run_cli


def test_grad_accum_steps_divides_or_explains():
    assert BatchSpec(16, 32, 8, rank=1, world_size=2).grad_accum_steps == 2
    with pytest.raises(ValueError, match=r"global_batch_size=30 .*device_batch_size=8 x world_size=2"):
        BatchSpec(16, 30, 8, world_size=2)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    args = ["training.max_steps=60", "eval.every=20", "optim.lr=3e-3", "sched.warmup_steps=5"]
    train(compose_train(TINY + args + [f"logging.time_phases_every={PHASE_EVERY}"]), run_dir)
    return run_dir


PHASE_EVERY = 7  # logging.time_phases_every in trained_run
PHASES = ("time/data_s", "time/forward_s", "time/backward_s", "time/optimizer_s")


def test_short_training_run_lowers_the_loss(trained_run):
    rows = read_metrics(trained_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert rows[-1]["train/loss"] < rows[0]["train/loss"] - 1.0
    val = [r["val/loss"] for r in rows if "val/loss" in r]
    assert len(val) == 3 and val[-1] < val[0]
    assert rows[0]["train/loss"] == pytest.approx(math.log(256), abs=0.3)  # starts at chance
    for key in ("train/acc", "train/ppl", "train/tokens_per_sec", "train/pre_clip_norm", "run/lr", "run/eta_hr"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert all("val/generalization_gap" in r for r in rows if "val/loss" in r)


def test_the_reference_systems_run_metrics(trained_run):
    rows = read_metrics(trained_run / "metrics.jsonl")
    # tokens seen: every step's global batch (8 sequences of 32 tokens)
    assert [r["run/tokens"] for r in rows] == [r["step"] * 8 * 32 for r in rows]
    # weight norm and peak memory on the console's steps (logging.every=10) and eval steps only
    state_rows = [r for r in rows if "train/weight_norm" in r]
    assert [r["step"] for r in state_rows] == [10, 20, 30, 40, 50, 60]
    assert all("run/peak_rss_gib" in r and "run/peak_gpu_mem_gib" not in r for r in state_rows)  # a CPU run
    peaks = [r["run/peak_rss_gib"] for r in state_rows]
    assert 0.05 < peaks[0] and peaks == sorted(peaks) and peaks[-1] < 64
    # the norm of the weights that the last step left: those of last.pt, summed independently here
    model, _ = build_from_checkpoint(load_checkpoint(trained_run / "checkpoints" / "last.pt"), torch.device("cpu"))
    norm = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in model.parameters()))
    assert state_rows[-1]["train/weight_norm"] == pytest.approx(norm, rel=1e-6)
    assert state_rows[0]["train/weight_norm"] != state_rows[-1]["train/weight_norm"]
    # best val loss and its step, on the eval rows, as the eval rows so far say
    evals = [r for r in rows if "val/loss" in r]
    for i, row in enumerate(evals):
        best = min(evals[: i + 1], key=lambda r: r["val/loss"])
        assert (row["run/best_val_loss"], row["run/best_val_step"]) == (best["val/loss"], best["step"])
    assert not any("run/best_val_loss" in r for r in rows if "val/loss" not in r)
    assert load_checkpoint(trained_run / "checkpoints" / "best.pt")["best_val_step"] == evals[-1]["run/best_val_step"]
    # hours since the start grow; the checkpoint's age falls back after each save (steps 20, 40)
    elapsed = [r["run/elapsed_hr"] for r in rows]
    assert elapsed == sorted(elapsed) and 0 < elapsed[-1] < 1
    age = {r["step"]: r["run/checkpoint_age_hr"] for r in rows}
    assert age[20] == pytest.approx(elapsed[19], abs=1e-6) and age[21] < age[20] and age[41] < age[40]


def test_phase_times_only_on_sampled_steps_and_they_add_up_to_the_step(trained_run):
    rows = read_metrics(trained_run / "metrics.jsonl")
    timed = [r for r in rows if "time/step_s" in r]
    assert [r["step"] for r in timed] == list(range(PHASE_EVERY, 61, PHASE_EVERY))
    assert not any(k.startswith("time/") for r in rows if r not in timed for k in r)
    # Measured inside the one train_step: only the loop's bookkeeping around it (microseconds) is
    # left out. The median, so that a preemption of this process in that gap (a shared CPU) is not a failure.
    shares = []
    for row in timed:
        total = sum(row[k] for k in PHASES)
        assert all(row[k] > 0 for k in PHASES) and total <= row["time/step_s"]
        shares.append(total / row["time/step_s"])
    assert statistics.median(shares) > 0.9


def test_a_run_between_rare_evals_saves_on_time_without_a_val_loss(tmp_path):
    """eval.every beyond max_steps: only the last step evaluates, and time-based saves (a minute
    value far below one step's time, so every step from the first allowed one is due) fill in."""
    args = ["training.max_steps=6", "eval.every=100", "eval.keep_last=10"]
    args += ["eval.checkpoint_every_minutes=1e-9", "eval.checkpoint_not_before_step=3"]
    train(compose_train(TINY + args), tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    log = {e["path"]: e for e in read_log(ckpt_dir)}
    assert sorted(log) == ["best.pt", "last.pt", *(f"step_000000{s}.pt" for s in (3, 4, 5, 6))]
    assert all(log[f"step_000000{s}.pt"]["val_loss"] is None for s in (3, 4, 5))  # no eval, no val loss
    [val_row] = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "val/loss" in r]
    assert log["best.pt"]["step"] == val_row["step"] == 6 and log["best.pt"]["val_loss"] == val_row["val/loss"]
    time_saved = load_checkpoint(ckpt_dir / "step_0000004.pt")
    assert time_saved["step"] == 4 and time_saved["best_val_loss"] == math.inf and time_saved["best_val_step"] is None


def test_checkpoints_and_log_agree(trained_run):
    ckpt_dir = trained_run / "checkpoints"
    log = read_log(ckpt_dir)
    # one entry per file that exists: last.pt's and best.pt's replaced at each save, not appended
    assert sorted(e["path"] for e in log) == sorted(p.name for p in ckpt_dir.glob("*.pt"))
    assert [e["step"] for e in log if e["path"] == "last.pt"] == [60]
    assert [e["path"] for e in log].count("best.pt") == 1
    best = min(e["val_loss"] for e in log)
    assert load_checkpoint(ckpt_dir / "best.pt")["best_val_loss"] == pytest.approx(best)
    ckpt = load_checkpoint(ckpt_dir / "last.pt")
    assert ckpt["step"] == 60 and ckpt["config"]["model"]["vocab_size"] == 256


def test_save_load_round_trip_gives_identical_logits(trained_run):
    ckpt = load_checkpoint(trained_run / "checkpoints" / "last.pt")
    a, _ = build_from_checkpoint(ckpt, torch.device("cpu"))
    b, _ = build_from_checkpoint(load_checkpoint(trained_run / "checkpoints" / "last.pt"), torch.device("cpu"))
    idx = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        assert torch.equal(a.logits(a(idx)), b.logits(b(idx)))
    assert all(torch.equal(ckpt["model"][k], v) for k, v in a.state_dict().items())


def test_generate_cli_samples_from_the_checkpoint(trained_run):
    ckpt = trained_run / "checkpoints" / "best.pt"
    args = [f"ckpt={ckpt}", 'prompt="def "', "max_new_tokens=40", "seed=7"]
    proc = run_cli("nanugpt.generate", *args, cwd=REPO)
    out = proc.stdout
    assert out.startswith("def ") and len(out.rstrip("\n")) >= 30
    assert (
        "generating:" in proc.stderr and "/40 [" in proc.stderr and "generating" not in out
    )  # the bar, on stderr only
    assert run_cli("nanugpt.generate", *args, cwd=REPO).stdout == out  # seeded
    greedy = run_cli("nanugpt.generate", *args, "temperature=0", "num_samples=2", cwd=REPO).stdout
    samples = greedy.split("---------- sample 2/2\n")
    assert len(samples) == 2 and samples[0].split("\n", 1)[1] == samples[1]  # greedy is deterministic


def test_generate_rejects_a_prompt_longer_than_the_context(trained_run):
    proc = run_cli(
        "nanugpt.generate",
        f"ckpt={trained_run / 'checkpoints' / 'best.pt'}",
        "prompt=" + "x" * 40,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode != 0 and "longer than the model's context of 32" in proc.stderr


def test_train_cli_end_to_end_prints_how_to_sample(tmp_path):
    run_dir = tmp_path / "cli_run"
    proc = run_cli(
        "nanugpt.train", *TINY, "training.max_steps=12", "eval.every=6", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    out = proc.stdout
    assert "step 12/12" in out and "ETA" in out
    assert f"Checkpoint: {run_dir}/checkpoints/best.pt" in out
    assert f"python -m nanugpt.generate ckpt={run_dir}/checkpoints/best.pt" in out
    assert (run_dir / "log.txt").read_text().count("step 12/12") == 1
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert len(read_metrics(run_dir / "metrics.jsonl")) == 12


def test_indivisible_batch_is_a_clear_cli_error(tmp_path):
    proc = run_cli(
        "nanugpt.train", *TINY, "training.global_batch_size=12", f"hydra.run.dir={tmp_path}", cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    assert "training.global_batch_size=12 is not divisible" in proc.stderr


# ---- debug=default / anomaly / overfit: each composes and runs, and does what it is for

# An lr that makes the second step's loss NaN, so that backward produces NaN.
DIVERGE = ["optim.lr=1e30", "sched=constant"]


@pytest.fixture
def anomaly_mode_off_afterwards():
    yield
    torch.autograd.set_detect_anomaly(False)  # train() sets it for the process; leave none behind


def test_debug_default_is_a_few_steps_with_a_tiny_eval_and_no_wandb(tmp_path):
    preset = compose_train(["debug=default"])
    assert preset.logging.wandb.mode == "disabled" and preset.eval.iters == 2 and preset.logging.every == 1
    cfg = compose_train(["debug=default", *TINY])  # the command line still wins over the preset
    train(cfg, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, cfg.training.max_steps + 1))
    assert [r["step"] for r in rows if "val/loss" in r] == [5, 10]
    assert not (tmp_path / "wandb_run_id").exists()


@pytest.mark.filterwarnings("ignore:Error detected in:UserWarning")  # anomaly mode's own report of the op
def test_debug_anomaly_names_the_backward_op_that_made_a_nan(tmp_path, anomaly_mode_off_afterwards):
    with pytest.raises(NonFiniteLossError):  # without it: the run stops at the NaN loss, op unknown
        train(compose_train(["debug=default", *TINY, *DIVERGE]), tmp_path / "plain")
    with pytest.raises(RuntimeError, match=r"Function '\w+Backward\d*' returned nan values"):
        train(compose_train(["debug=anomaly", *TINY, *DIVERGE]), tmp_path / "anomaly")


def test_debug_overfit_memorises_one_batch(tmp_path):
    cfg = compose_train(["debug=overfit", *TINY])
    assert cfg.training.overfit_batches == 1
    train(cfg, tmp_path / "overfit")
    overfit = read_metrics(tmp_path / "overfit" / "metrics.jsonl")
    # The same steps on fresh batches, for comparison: one batch is learnt far faster than the corpus.
    steps = cfg.training.max_steps
    train(compose_train([*TINY, f"training.max_steps={steps}", f"eval.every={steps}"]), tmp_path / "fresh")
    fresh = read_metrics(tmp_path / "fresh" / "metrics.jsonl")
    assert overfit[-1]["train/loss"] < 0.5 * fresh[-1]["train/loss"]
    assert overfit[-1]["train/loss"] < overfit[-1]["val/loss"] - 1.0  # memorised, not learnt
