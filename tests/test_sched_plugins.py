"""linear, constant, wsd, lr_range_test: the lr a real LambdaLR gives at key steps."""

import json
import math
import re

import pytest
import torch

from nanugpt.errors import ConfigError
from nanugpt.metrics import read_metrics
from nanugpt.sched.constant import constant, constant_lr_factor
from nanugpt.sched.cosine import cosine_lr_factor
from nanugpt.sched.linear import linear
from nanugpt.sched.lr_range_test import check_lr_sweep, lr_range_test, range_test_lr, suggest_lr
from nanugpt.sched.wsd import wsd
from nanugpt.train import train

from .conftest import TINY, compose_train, run_cli


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


def test_linear_warms_up_then_decays_to_min_at_the_end():
    got = lrs(lambda o: linear(o, max_steps=110, warmup_steps=10, min_lr_ratio=0.1), 111)
    assert got[0] == pytest.approx(0.1) and got[9] == pytest.approx(1.0)
    assert got[60] == pytest.approx(1.0 - 0.9 * 0.5)  # halfway through the decay
    assert got[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(got[9:], got[10:], strict=False))


def test_constant_warms_up_then_stays():
    got = lrs(lambda o: constant(o, max_steps=50, warmup_steps=5), 50, lr=3e-3)
    assert got[:5] == pytest.approx([6e-4, 1.2e-3, 1.8e-3, 2.4e-3, 3e-3])
    assert got[5:] == pytest.approx([3e-3] * 45)


@pytest.mark.parametrize("shape,mid", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_wsd_has_warmup_stable_and_decay_phases(shape, mid):
    got = lrs(
        lambda o: wsd(o, max_steps=100, warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.0, decay_shape=shape), 101
    )
    assert got[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])  # warmup
    assert got[10:81] == pytest.approx([1.0] * 71)  # stable until the decay starts at step 80
    assert got[90] == pytest.approx(mid)  # halfway through the decay
    assert got[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(got[80:], got[81:], strict=False))


def test_wsd_rejects_a_warmup_that_runs_into_the_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup_steps=90"):
        wsd(opt, max_steps=100, warmup_steps=90, decay_fraction=0.2)
    with pytest.raises(ValueError, match="decay_shape='cube'"):
        wsd(opt, max_steps=100, decay_shape="cube")


def test_lr_range_test_rises_exponentially_from_min_to_max_whatever_the_optimizer_lr():
    got = lrs(lambda o: lr_range_test(o, max_steps=101, min_lr=1e-5, max_lr=1.0), 101, lr=3e-3)
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
    rows = metrics_rows(lambda i: 1e-3 * cosine_lr_factor(i, 5, 40, 0.1), 40)  # warmup, then decay
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli("nanugpt.sched.lr_range_test", str(tmp_path), cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{tmp_path} is not an lr range test: its lr does not rise at step 6 (0.001 at step 5" in proc.stderr
    assert "sched=lr_range_test" in proc.stderr and not (tmp_path / "lr_range_test.png").exists()


@pytest.mark.parametrize(
    "lr_of_step,steps,refusal",
    [
        (lambda i: 1e-3 * constant_lr_factor(i, 3), 30, "does not rise at step 4"),  # flat after warmup
        (lambda i: range_test_lr(i, 300, 1e-5, 1.0), 9, "rose over 9 step(s)"),  # stopped too early
        (lambda i: range_test_lr(i, 300, 1e-5, 1.0), 60, "from 1e-05 to 9.7e-05"),  # less than a decade
    ],
)
def test_check_lr_sweep_needs_a_rising_lr_over_enough_steps(lr_of_step, steps, refusal, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        check_lr_sweep(metrics_rows(lr_of_step, steps), tmp_path)
    check_lr_sweep(metrics_rows(lambda i: range_test_lr(i, 300, 1e-5, 1.0), 300), tmp_path)  # a real sweep passes
