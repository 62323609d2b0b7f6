import json

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from nanugpt.data.contract import BatchSpec
from nanugpt.data.examples import IGNORE_INDEX, ExampleBatches, eval_batches
from nanugpt.data.grokking import OPERATIONS, ModularArithmetic, modular_table
from nanugpt.errors import ConfigError
from nanugpt.losses.autoregressive import AutoregressiveLoss
from nanugpt.losses.grokking import LastTokenLoss
from nanugpt.tokenizers.grokking import GrokkingTokenizer
from nanugpt.train import train

from .conftest import compose_train, plugin_args


def test_tokenizer_has_one_token_per_number_and_round_trips():
    tok = GrokkingTokenizer(97)
    assert tok.vocab_size == 97 + 5
    ids = tok.encode("96 / 5 = 0")
    assert ids.tolist() == [96, 97 + 3, 5, 97 + 4, 0]
    assert tok.decode(ids) == "96 / 5 = 0"
    with pytest.raises(ValueError, match=r"'97' .*numbers 0..96"):
        tok.encode("97 + 1 =")


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_table_is_the_operation_mod_p(op):
    p = 13
    table = modular_table(p, op)
    assert len(table) == (p * (p - 1) if op == "/" else p * p)
    for a, b, c in table:
        assert 0 <= c < p
        if op == "+":
            assert (a + b - c) % p == 0
        elif op == "-":
            assert (a - b - c) % p == 0
        elif op == "*":
            assert (a * b - c) % p == 0
        else:
            assert b != 0 and (c * b - a) % p == 0  # c = a / b: the inverse, not integer division


# Power et al.'s other operations (their Appendix A.1) and the reference system's x^3+xy^2+x, each
# as a check on one row (a, b, c) written with Python's modular pow, apart from the data's formulas.
DIRECT = {
    "x**2+y**2": lambda a, b, c, p: c == (pow(a, 2, p) + pow(b, 2, p)) % p,
    "x**2+x*y+y**2": lambda a, b, c, p: c == (pow(a, 2, p) + a * b % p + pow(b, 2, p)) % p,
    "x**2+x*y+y**2+x": lambda a, b, c, p: c == (pow(a, 2, p) + a * b % p + pow(b, 2, p) + a) % p,
    "x**3+x*y": lambda a, b, c, p: c == (pow(a, 3, p) + a * b % p) % p,
    "x**3+x*y**2+x": lambda a, b, c, p: c == (pow(a, 3, p) + a * pow(b, 2, p) + a) % p,
    "x**3+x*y**2+y": lambda a, b, c, p: c == (pow(a, 3, p) + a * pow(b, 2, p) + b) % p,
    # x / y mod p for odd y (c * y = x), x - y for even y
    "x/y_if_y_odd_else_x-y": lambda a, b, c, p: (c * b - a) % p == 0 if b % 2 else c == (a - b) % p,
}


def test_every_operation_has_a_direct_check():
    assert set(OPERATIONS) == {"+", "-", "*", "/"} | set(DIRECT)


@pytest.mark.parametrize("op", sorted(DIRECT))
@pytest.mark.parametrize("p", [13, 97])
def test_other_operations_tables_match_a_direct_formula(op, p):
    table = modular_table(p, op)
    assert [(a, b) for a, b, _ in table] == [(a, b) for a in range(p) for b in range(p)]  # every pair, b = 0 too
    wrong = [(a, b, c) for a, b, c in table if not (0 <= c < p and DIRECT[op](a, b, c, p))]
    assert not wrong, wrong[:5]


def test_the_references_x3_xy2_x_is_what_its_name_says_not_its_code():
    """sytelus/nanuGPT's "x^3+xy^2+x" computes x^3+xy^2+y; here the two differ wherever x != y."""
    plus_x, plus_y = modular_table(13, "x**3+x*y**2+x"), modular_table(13, "x**3+x*y**2+y")
    assert [a == b for (a, b, _) in plus_x] == [r == s for r, s in zip(plus_x, plus_y, strict=True)]


def test_an_other_operation_is_one_more_token_after_the_four():
    assert GrokkingTokenizer(7, "/").symbols == GrokkingTokenizer(7).symbols  # + - * /: the vocab as before
    tok = GrokkingTokenizer(7, "x**3+x*y")
    assert tok.vocab_size == 7 + 6 and tok.symbols[7:] == ["+", "-", "*", "/", "=", "x**3+x*y"]
    assert tok.encode("3 x**3+x*y 5 = 0").tolist() == [3, 12, 5, 11, 0]
    assert tok.decode(tok.encode("3 x**3+x*y 5 = 0")) == "3 x**3+x*y 5 = 0"
    cfg = compose_train(["experiment=grokking", "data.op=x**3+x*y", "data.p=23"])
    assert (cfg.tokenizer.op, cfg.tokenizer.p) == ("x**3+x*y", 23)
    with pytest.raises(ValueError, match=r"no token for data.op='x\*\*3\+x\*y'"):
        ModularArithmetic(7, "x**3+x*y", 0.5, 0).examples(GrokkingTokenizer(7))
    with pytest.raises(ValueError, match="data.p=9 must be a prime"):
        ModularArithmetic(9, "x/y_if_y_odd_else_x-y", 0.5, 0).examples(GrokkingTokenizer(9, "x/y_if_y_odd_else_x-y"))


def test_split_is_seeded_disjoint_and_covers_the_table():
    tok = GrokkingTokenizer(11)
    a, b = ModularArithmetic(11, "/", 0.5, seed=0).examples(tok), ModularArithmetic(11, "/", 0.5, seed=0).examples(tok)
    other = ModularArithmetic(11, "/", 0.5, seed=1).examples(tok)
    assert torch.equal(a["train"][0], b["train"][0]) and not torch.equal(a["train"][0], other["train"][0])
    train = {tuple(r) for r in a["train"][0].tolist()}
    val = {tuple(r) for r in a["val"][0].tolist()}
    assert len(train) == 55 and len(val) == 55 and not train & val  # 11 * 10 equations, half each
    assert {tok.decode(r) for r in train | val} == {f"{x} / {y} =" for x, y, _ in modular_table(11, "/")}


def test_rows_score_only_the_answer():
    tok = GrokkingTokenizer(7)
    x, y = ModularArithmetic(7, "-", 0.5, seed=0).examples(tok)["train"]
    assert x.shape[1] == 4 and y.shape == x.shape
    assert (y[:, :-1] == IGNORE_INDEX).all()
    for row, target in zip(x.tolist(), y[:, -1].tolist(), strict=False):
        a, op, b, eq = tok.decode(row).split()
        assert (op, eq) == ("-", "=") and (int(a) - int(b)) % 7 == target


def test_last_token_loss_reads_only_the_last_position():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4, 12), torch.randint(0, 12, (6, 4))
    loss, correct, count = LastTokenLoss()(logits, targets)
    assert loss == pytest.approx(F.cross_entropy(logits[:, -1], targets[:, -1]).item())
    assert count == 6 and correct == (logits[:, -1].argmax(-1) == targets[:, -1]).sum()
    changed = logits.clone()
    changed[:, :-1] += 100 * torch.randn(6, 3, 12)
    assert LastTokenLoss()(changed, targets)[0] == loss
    masked = targets.clone()
    masked[:, :-1] = IGNORE_INDEX  # on the data's masked targets it agrees with the general loss
    assert AutoregressiveLoss(ignore_index=IGNORE_INDEX)(logits, masked)[0].item() == pytest.approx(loss.item())


def test_example_batches_split_ranks_cover_epochs_and_resume_exactly():
    inputs = torch.arange(40).view(20, 2)
    targets = inputs + 100
    single = ExampleBatches(inputs, targets, BatchSpec(2, 8, 4, seed=3))
    ranks = [ExampleBatches(inputs, targets, BatchSpec(2, 8, 2, rank=r, world_size=2, seed=3)) for r in range(2)]
    for _ in range(5):  # 40 rows drawn: two whole epochs of 20
        one = torch.cat([x for x, _ in single.next_step()])
        both = torch.cat([x for rank in ranks for x, _ in rank.next_step()])
        assert sorted(one[:, 0].tolist()) == sorted(both[:, 0].tolist())
    epoch = ExampleBatches(inputs, targets, BatchSpec(2, 4, 4, seed=0))
    rows = torch.cat([epoch.next_step()[0][0] for _ in range(5)])
    assert sorted(rows[:, 0].tolist()) == list(range(0, 40, 2))  # each row once per epoch
    x, y = epoch.next_step()[0]
    assert torch.equal(y, x + 100)
    state = json.loads(json.dumps({k: v.tolist() for k, v in epoch.state_dict().items()}))  # survives a copy
    expected = [epoch.next_step()[0][0] for _ in range(7)]
    epoch.load_state_dict(
        {k: torch.tensor(v, dtype=torch.uint8 if k == "generator" else torch.long) for k, v in state.items()}
    )
    assert all(torch.equal(a, epoch.next_step()[0][0]) for a in expected)


def test_eval_batches_hold_the_whole_split_across_ranks():
    inputs = torch.arange(50).view(25, 2)
    whole = torch.cat([x for x, _ in eval_batches(inputs, inputs, BatchSpec(2, 12, 4))])
    assert torch.equal(whole, inputs)
    parts = [x for r in range(3) for x, _ in eval_batches(inputs, inputs, BatchSpec(2, 12, 4, rank=r, world_size=3))]
    assert sorted(torch.cat(parts)[:, 0].tolist()) == inputs[:, 0].tolist()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"p": 91, "op": "/"}, "data.p=91 must be a prime"),
        ({"op": "%"}, "data.op='%'"),
        ({"train_fraction": 1.0}, "train_fraction=1.0"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModularArithmetic(**plugin_args("data", "grokking", **kwargs))


def test_experiment_composes_the_paper_setup():
    cfg = compose_train(["experiment=grokking"])
    assert (cfg.data.p, cfg.data.op, cfg.data.train_fraction, cfg.tokenizer.p) == (97, "/", 0.5, 97)
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (2, 128, 4)
    assert (cfg.optim.lr, list(cfg.optim.betas), cfg.training.global_batch_size) == (1e-3, [0.9, 0.98], 512)
    assert cfg.optim.decay_all  # openai/grok passes every parameter to its AdamW
    assert compose_train(["experiment=grokking", "data.p=223"]).tokenizer.p == 223


def test_the_reference_systems_p223_run_composes_as_published():
    """sytelus/nanuGPT configs/grokking/prime223.yaml over base_config.yaml."""
    cfg = compose_train(["experiment=grokking_p223_nanugpt"])
    assert (cfg.data.p, cfg.data.op, cfg.data.train_fraction, cfg.tokenizer.p) == (223, "/", 0.5, 223)
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (2, 128, 4)
    o, t = cfg.optim, cfg.training
    assert (o.lr, list(o.betas), o.eps, o.weight_decay, o.decay_all) == (1e-3, [0.9, 0.98], 1e-8, 0.1, True)
    assert (t.max_steps, t.global_batch_size, t.grad_clip, t.dtype, t.seed) == (10_000, 512, 0.0, "float32", 42)
    assert (cfg.sched.warmup_steps, cfg.sched.decay_fraction, cfg.eval.every) == (10, 0.0, 100)
    model = instantiate(cfg.model, vocab_size=223 + 5)
    optimizer = instantiate(cfg.optim)(model)
    assert all(g["weight_decay"] == 0.1 for g in optimizer.param_groups)  # biases and norms too


def test_an_other_operation_trains_through_the_loop(tmp_path):
    """x**2+y**2 mod 23 (80% train): its extra token, rows and answers are learnt, and the held-out
    equations are answered (val acc > 90%; chance is 4%), which fails if its table were wrong."""
    cfg = compose_train(
        [
            "experiment=grokking",
            "data.p=23",
            "data.op=x**2+y**2",
            "data.train_fraction=0.8",
            "optim.lr=3e-3",
            "model.n_embd=64",
            "training.global_batch_size=64",
            "training.device_batch_size=64",
            "training.max_steps=150",
            "eval.every=50",
            "eval.checkpoint=none",
        ]
    )
    train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/loss"] == pytest.approx(torch.log(torch.tensor(23.0 + 6)).item(), abs=0.5)
    assert [r["val/acc"] for r in rows if "val/acc" in r][-1] > 0.9


def test_small_modular_addition_memorises_then_generalises(tmp_path):
    """Through the real training loop: train accuracy reaches 100% (memorisation) and val
    accuracy on held-out equations rises far above chance (1/23), which fails if the split, the
    tokens or the scored position were wrong."""
    cfg = compose_train(
        [
            "experiment=grokking",
            "data.p=23",
            "data.op=+",
            "data.train_fraction=0.8",
            "optim.lr=3e-3",
            "model.n_embd=64",
            "training.global_batch_size=64",
            "training.device_batch_size=64",
            "training.max_steps=300",
            "eval.every=50",
            "eval.checkpoint=none",
        ]
    )
    train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val/acc" in r]
    assert rows[0]["train/loss"] == pytest.approx(torch.log(torch.tensor(28.0)).item(), abs=0.5)  # starts at chance
    assert max(r["train/acc"] for r in rows) == 1.0
    assert evals[0]["val/acc"] < 0.2 and evals[-1]["val/acc"] > 0.5


@pytest.mark.parametrize(
    "name,op,p,wd",
    [
        ("grokking_add", "+", 97, 1.0),
        ("grokking_sub", "-", 97, 1.0),
        ("grokking_mul", "*", 97, 1.0),
        ("grokking_p223", "/", 223, 1.0),
        ("grokking_wd0", "/", 97, 0.0),
    ],
)
def test_variants_change_only_their_setting(name, op, p, wd):
    cfg = compose_train([f"experiment={name}"])
    assert (cfg.data.op, cfg.data.p, cfg.tokenizer.p, cfg.optim.weight_decay) == (op, p, p, wd)
    assert cfg.optim.decay_all
    assert cfg.training.global_batch_size == 512 and cfg.model._target_.endswith("TinyTransformer")


@pytest.mark.parametrize(
    "overrides",
    [["optim=muon", "~optim.betas"], ["sched=lr_range_test", "~sched.warmup_steps"], ["optim=sgd", "~optim.betas"]],
)
def test_other_optimizers_and_schedules_build_with_the_experiment_as_its_header_says(overrides):
    """experiment=grokking sets optim.betas and sched.warmup_steps; an option without them
    drops them with `~key`. (tests/test_plugins_train.py trains every option.)"""
    cfg = compose_train(["experiment=grokking", *overrides])
    model = instantiate(cfg.model, vocab_size=cfg.data.p + 5)
    optimizer = instantiate(cfg.optim)(model)
    instantiate(cfg.sched)(optimizer)
    assert optimizer.param_groups[0]["weight_decay"] == 1.0  # the experiment's setting reached the new option
