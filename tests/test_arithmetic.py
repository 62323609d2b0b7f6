import json

import pytest
import torch
import torch.nn.functional as F

from nanugpt.data.arithmetic import ArithmeticStrings
from nanugpt.data.examples import IGNORE_INDEX
from nanugpt.errors import ConfigError
from nanugpt.losses.arithmetic import AnswerLoss
from nanugpt.tokenizers.byte import ByteTokenizer
from nanugpt.train import train

from .conftest import compose_train, plugin_args


@pytest.mark.parametrize("op,reverse", [("+", True), ("*", False), ("*", True)])
def test_equations_are_right_and_fixed_width(op, reverse):
    data = ArithmeticStrings(
        **plugin_args("data", "arithmetic", op=op, num_examples=500, reverse_answer=reverse, seed=1)
    )
    prompts, answers = data.equations()
    width = 4 if op == "+" else 6
    for prompt, answer in zip(prompts, answers, strict=False):
        a, b = prompt.rstrip("=").split(op)
        assert len(a) == len(b) == 3 and len(answer) == width
        assert int(answer[::-1] if reverse else answer) == (int(a) + int(b) if op == "+" else int(a) * int(b))


def test_pairs_are_distinct_seeded_and_val_is_never_trained_on():
    args = plugin_args("data", "arithmetic", n_digits=2, num_examples=3000, train_fraction=0.8, seed=5)
    data = ArithmeticStrings(**args)
    assert len(set(data.equations()[0])) == 3000  # of the 10,000 possible questions
    assert data.equations() == ArithmeticStrings(**args).equations()
    ex = data.examples(ByteTokenizer())
    train_rows = {tuple(r) for r in ex["train"][0][:, :6].tolist()}  # the prompt "12+34=" is 6 bytes
    val_rows = {tuple(r) for r in ex["val"][0][:, :6].tolist()}
    assert len(train_rows) == 2400 and len(val_rows) == 600 and not train_rows & val_rows


def test_only_answer_tokens_are_targets():
    tok = ByteTokenizer()
    x, y = ArithmeticStrings(**plugin_args("data", "arithmetic", op="+", n_digits=3, num_examples=50)).examples(tok)[
        "train"
    ]
    assert x.shape == y.shape == (45, 8 + 4 - 1)
    assert (y[:, :7] == IGNORE_INDEX).all() and (y[:, 7:] != IGNORE_INDEX).all()
    prompt, answer = tok.decode(x[0, :8].tolist()), tok.decode(y[0, 7:].tolist())
    a, b = prompt.rstrip("=").split("+")
    assert int(answer[::-1]) == int(a) + int(b)
    assert torch.equal(x[:, 8:], y[:, 7:-1])  # the model reads the answer it has emitted so far


def test_answer_loss_scores_answers_and_counts_exact_matches():
    targets = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 5, 6]])
    logits = torch.full((2, 4, 10), -10.0)
    logits[0, 2, 3] = logits[0, 3, 4] = 10.0  # row 0 fully right
    logits[1, 2, 5] = logits[1, 3, 1] = 10.0  # row 1 has one digit wrong
    logits[:, :2, 7] = 50.0  # prompt positions are not scored, however confident
    loss, correct, count = AnswerLoss(ignore_index=IGNORE_INDEX)(logits, targets)
    assert (correct.item(), count.item()) == (1, 2)
    scored = targets != IGNORE_INDEX
    assert loss.item() == pytest.approx(F.cross_entropy(logits[scored], targets[scored]).item())


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="data.op='-'"):
        ArithmeticStrings(**plugin_args("data", "arithmetic", op="-"))
    with pytest.raises(ConfigError, match="num_examples=200 .*100 distinct"):
        ArithmeticStrings(**plugin_args("data", "arithmetic", n_digits=1, num_examples=200))


def test_experiment_composes():
    cfg = compose_train(["experiment=arithmetic", "data.op=*"])
    assert (
        cfg.data.op == "*"
        and cfg.loss._target_.endswith("AnswerLoss")
        and cfg.tokenizer._target_.endswith("ByteTokenizer")
    )


def test_two_digit_addition_learns_through_the_training_loop(tmp_path):
    """Answer-only loss through the real loop: the loss falls from chance over 256 bytes and
    some whole held-out sums come out exactly right."""
    cfg = compose_train(
        [
            "experiment=arithmetic",
            "data.n_digits=2",
            "data.num_examples=3000",
            "model.n_embd=64",
            "optim.lr=3e-3",
            "training.global_batch_size=128",
            "training.device_batch_size=128",
            "training.max_steps=200",
            "eval.every=100",
            "eval.checkpoint=none",
        ]
    )
    train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/loss"] == pytest.approx(torch.log(torch.tensor(256.0)).item(), abs=0.6)
    assert rows[-1]["val/loss"] < 1.2 and rows[-1]["val/acc"] > 0.1
