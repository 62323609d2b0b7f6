import pytest
import torch

from nanugpt.data.examples import IGNORE_INDEX
from nanugpt.losses.autoregressive import AutoregressiveLoss
from nanugpt.models.gpt import GPT
from nanugpt.models.with_loss import ModelWithLoss


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(**{"vocab_size": 50, "context_length": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, **kw})


def test_gpt2_124m_has_the_known_parameter_count():
    # GPT-2 small: 124,439,808 parameters with the tied head counted once (nanoGPT reports
    # 123.65M without the 786,432 position-embedding weights).
    model = GPT(vocab_size=50257, context_length=1024, n_layer=12, n_head=12, n_embd=768)
    assert model.num_params() == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768


@pytest.mark.parametrize("bias", [True, False])
def test_changing_a_later_token_never_changes_an_earlier_logit(bias):
    model = tiny_gpt(bias=bias).eval()
    idx = torch.randint(0, 50, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 50
    with torch.no_grad():
        a, b = model.logits(model(idx)), model.logits(model(changed))
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_head_is_tied_to_token_embedding():
    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_too_long_input_names_the_context_length():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="context_length=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_model_with_loss_matches_cross_entropy_and_counts_correct():
    model = tiny_gpt().eval()
    net = ModelWithLoss(model, AutoregressiveLoss(ignore_index=IGNORE_INDEX))
    x, y = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    loss, correct, count = net(x, y)
    logits = model.logits(model(x))
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), y.reshape(-1))
    assert torch.allclose(loss, expected)
    assert correct.item() == (logits.argmax(-1) == y).sum().item()
    assert count.item() == 48


def test_ignore_index_targets_are_not_scored():
    net = ModelWithLoss(tiny_gpt(), AutoregressiveLoss(ignore_index=IGNORE_INDEX))
    x, y = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))
    y[:, :8] = IGNORE_INDEX
    _, correct, count = net(x, y)
    assert count.item() == 16 and correct.item() <= 16
