"""sched= cosine, linear, constant, wsd (one warmup-stable-decay schedule) and lr_range_test: the
lr a real LambdaLR gives, step by step."""

import io
import json
import math
import re

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from nanugpt.errors import ConfigError
from nanugpt.metrics import read_metrics
from nanugpt.sched.lr_range_test import check_lr_sweep, lr_range_test, range_test_lr, suggest_lr
from nanugpt.train import train

from .conftest import TINY, compose_train, plugin, run_cli


def lrs(make, steps: int, lr: float = 1.0) -> list[float]:
    """The lr used by optimizer steps 1..steps, as train.py logs it (run/lr)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


# The four schedules as they were written before they became one (cosine.py, linear.py,
# constant.py, wsd.py at 908a882): the oracle the configs must still follow.
def old_cosine(step, max_steps, warmup_steps, min_lr_ratio):
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def old_linear(step, max_steps, warmup_steps, min_lr_ratio):
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 1.0 - (1.0 - min_lr_ratio) * progress


def old_constant(step, max_steps, warmup_steps):
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def old_wsd(step, max_steps, warmup_steps, decay_fraction, min_lr_ratio, decay_shape):
    decay_steps = round(decay_fraction * max_steps)
    decay_start = max_steps - decay_steps
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, decay_steps))
    drop = {"linear": progress, "cosine": 0.5 * (1.0 - math.cos(math.pi * progress)), "1-sqrt": math.sqrt(progress)}
    return 1.0 - (1.0 - min_lr_ratio) * drop[decay_shape]


OLD = {"cosine": old_cosine, "linear": old_linear, "constant": old_constant, "wsd": old_wsd}
CASES = [
    ("cosine", dict(max_steps=110, warmup_steps=10, min_lr_ratio=0.1)),
    ("cosine", dict(max_steps=30, warmup_steps=0, min_lr_ratio=0.0)),
    ("cosine", dict(max_steps=20, warmup_steps=20, min_lr_ratio=0.5)),
    ("cosine", dict(max_steps=12, warmup_steps=50, min_lr_ratio=0.1)),  # a short test run: warmup never ends
    ("linear", dict(max_steps=110, warmup_steps=10, min_lr_ratio=0.1)),
    ("linear", dict(max_steps=30, warmup_steps=0, min_lr_ratio=0.0)),
    ("linear", dict(max_steps=12, warmup_steps=50, min_lr_ratio=0.0)),
    ("constant", dict(max_steps=50, warmup_steps=5)),
    ("constant", dict(max_steps=10, warmup_steps=0)),
    ("constant", dict(max_steps=12, warmup_steps=50)),
    *[
        ("wsd", dict(max_steps=100, warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.0, decay_shape=shape))
        for shape in ("linear", "cosine", "1-sqrt")
    ],
    ("wsd", dict(max_steps=101, warmup_steps=3, decay_fraction=0.33, min_lr_ratio=0.1, decay_shape="1-sqrt")),
    ("wsd", dict(max_steps=30, warmup_steps=0, decay_fraction=1.0, min_lr_ratio=0.2, decay_shape="cosine")),
    ("wsd", dict(max_steps=10, warmup_steps=2, decay_fraction=0.04, min_lr_ratio=0.0, decay_shape="linear")),  # 0 steps
]


@pytest.mark.parametrize("option,params", CASES)
def test_each_option_follows_its_old_formula_step_by_step(option, params):
    overrides = [f"sched={option}", f"training.max_steps={params['max_steps']}"]
    overrides += [f"sched.{k}={v}" for k, v in params.items() if k != "max_steps"]
    make = plugin("sched", *overrides)
    got = lrs(make, params["max_steps"] + 1, lr=3e-3)  # every step, and the lr after the last one
    expected = [3e-3 * OLD[option](step, **params) for step in range(params["max_steps"] + 1)]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("shape,mid", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_wsd_has_warmup_stable_and_decay_phases(shape, mid):
    make = plugin("sched", "sched=wsd", "training.max_steps=100", "sched.warmup_steps=10", f"sched.decay_shape={shape}")
    got = lrs(make, 101)
    assert got[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])  # warmup
    assert got[10:81] == pytest.approx([1.0] * 71)  # stable until the decay starts at step 80
    assert got[90] == pytest.approx(mid)  # halfway through the decay
    assert got[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(got[80:], got[81:], strict=False))


def save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # as checkpoints are loaded


@pytest.mark.parametrize("option", ["cosine", "wsd"])
def test_a_resumed_schedule_continues_the_curve_exactly(option):
    make = plugin("sched", f"sched={option}", "training.max_steps=40", "sched.warmup_steps=5")
    full = lrs(make, 41, lr=3e-3)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=3e-3)
    sched = make(opt)
    for _ in range(17):
        opt.step()
        sched.step()
    ckpt = save_load({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    assert isinstance(sched, LambdaLR) and ckpt["scheduler"]["last_epoch"] == 17
    assert ckpt["scheduler"]["lr_lambdas"] == [None]  # a plain function: no code in the checkpoint

    opt = torch.optim.SGD([param], lr=3e-3)
    sched = make(opt)
    opt.load_state_dict(ckpt["optimizer"])  # train.py's order: optimizer, then scheduler
    sched.load_state_dict(ckpt["scheduler"])
    resumed = []
    for _ in range(17, 41):
        resumed.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert resumed == full[17:]  # bit for bit


def test_lr_range_test_rises_exponentially_from_min_to_max_whatever_the_optimizer_lr():
    make = plugin("sched", "sched=lr_range_test", "training.max_steps=101", "sched.min_lr=1e-5", "sched.max_lr=1.0")
    got = lrs(make, 101, lr=3e-3)
    assert got[0] == pytest.approx(1e-5) and got[100] == pytest.approx(1.0)
    assert got[50] == pytest.approx(1e-5 * 1e5**0.5)  # geometric midpoint
    ratios = [b / a for a, b in zip(got, got[1:], strict=False)]
    assert ratios == pytest.approx([ratios[0]] * 100)


def test_lr_range_test_keeps_the_ratio_of_other_param_groups():
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.02}, {"params": [q], "lr": 0.005}])
    sched = lr_range_test(opt, max_steps=11, min_lr=1e-4, max_lr=1e-1)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1) and opt.param_groups[1]["lr"] == pytest.approx(0.025)


def test_suggest_lr_finds_the_dip_of_a_synthetic_curve():
    lr = [1e-5 * 10 ** (5 * i / 199) for i in range(200)]  # 1e-5 .. 1
    # loss falls fastest around 1e-3, bottoms out at 1e-2, explodes after
    loss = [3.0 - 1.0 / (1 + math.exp(-3 * (math.log10(x) + 3))) + (50 * (x - 1e-2) if x > 1e-2 else 0.0) for x in lr]
    s = suggest_lr(lr, loss, beta=0.0)
    assert s["min_loss_lr"] == pytest.approx(1e-2, rel=0.1)
    assert s["suggested_lr"] == pytest.approx(1e-3, rel=0.1)
    assert s["steepest_lr"] == pytest.approx(1e-3, rel=0.3)
    with pytest.raises(ValueError, match="at least 10 finite steps"):
        suggest_lr(lr[:5], loss[:5])


def test_lr_range_test_run_gives_a_plot_and_a_suggested_lr(tmp_path):
    cfg = compose_train(
        TINY
        + [
            "sched=lr_range_test",
            "training.max_steps=80",
            "eval.every=80",
            "eval.checkpoint=none",
            "sched.min_lr=1e-4",
            "sched.max_lr=1.0",
        ]
    )
    train(cfg, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows[0]["run/lr"] == pytest.approx(1e-4) and rows[-1]["run/lr"] == pytest.approx(1.0)
    out = run_cli("nanugpt.sched.lr_range_test", str(tmp_path), cwd=tmp_path)
    png = tmp_path / "lr_range_test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    suggested = float(out.stdout.split("Suggested lr: ")[1].split()[0])
    assert 1e-4 < suggested < 1.0


def metrics_rows(lr_of_step, steps: int) -> list[dict]:
    """Rows as a run with that schedule logs them (run/lr of step s: the schedule after s - 1 steps)."""
    return [{"step": s, "train/loss": 3.0 - 0.01 * s, "run/lr": lr_of_step(s - 1)} for s in range(1, steps + 1)]


def test_lr_range_test_cli_refuses_a_run_that_did_not_sweep_the_lr(tmp_path):
    rows = metrics_rows(lambda i: 1e-3 * old_cosine(i, 40, 5, 0.1), 40)  # warmup, then decay
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli("nanugpt.sched.lr_range_test", str(tmp_path), cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{tmp_path} is not an lr range test: its lr does not rise at step 6 (0.001 at step 5" in proc.stderr
    assert "sched=lr_range_test" in proc.stderr and not (tmp_path / "lr_range_test.png").exists()


@pytest.mark.parametrize(
    "lr_of_step,steps,refusal",
    [
        (lambda i: 1e-3 * old_constant(i, 30, 3), 30, "does not rise at step 4"),  # flat after warmup
        (lambda i: range_test_lr(i, 300, 1e-5, 1.0), 9, "rose over 9 step(s)"),  # stopped too early
        (lambda i: range_test_lr(i, 300, 1e-5, 1.0), 60, "from 1e-05 to 9.7e-05"),  # less than a decade
    ],
)
def test_check_lr_sweep_needs_a_rising_lr_over_enough_steps(lr_of_step, steps, refusal, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        check_lr_sweep(metrics_rows(lr_of_step, steps), tmp_path)
    check_lr_sweep(metrics_rows(lambda i: range_test_lr(i, 300, 1e-5, 1.0), 300), tmp_path)  # a real sweep passes
