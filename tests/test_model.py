"""The contract every model meets (nanugpt/models/base.py), checked for every config in
nanugpt/conf/model/ at tiny sizes; and the model-with-loss module the trainer compiles."""

import pytest
import torch
from hydra.utils import get_object

from nanugpt.data.examples import IGNORE_INDEX
from nanugpt.errors import ConfigError
from nanugpt.losses.autoregressive import AutoregressiveLoss
from nanugpt.models.base import CausalLM
from nanugpt.models.with_loss import ModelWithLoss
from nanugpt.sampling import generate

from .conftest import MODEL_CONFIGS, TINY_MODEL, build_model, model_kwargs

V, T, L, D = (TINY_MODEL[k] for k in ("vocab_size", "context_length", "n_layer", "n_embd"))


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random weight matrices at a larger scale than any init (gpt_modern zero-inits its output
    projections), so the checks see a model that mixes positions and decodes varied tokens."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return model.eval()


def hand_counted(config: str) -> tuple[int, int, int]:
    """(parameters, non-embedding parameters, parameters of one block) by hand, from the config."""
    target, cfg = model_kwargs(config)
    name, d, h = target.rsplit(".", 1)[-1], cfg["n_embd"], cfg.get("intermediate_size")
    if name in ("GPT", "TinyTransformer", "hf_gpt2"):
        ln = 2 * d if cfg.get("bias", True) else d
        # LayerNorm, qkv, out projection, LayerNorm, 4x MLP in and out (+ biases)
        block = ln + (3 * d * d + 3 * d) + (d * d + d) + ln + (4 * d * d + 4 * d) + (4 * d * d + d)
        if name == "TinyTransformer":  # untied head, token and position tables left out of N
            total = V * d + T * d + L * block + ln + V * d
            return total, total - V * d - T * d, block
        multiple = cfg.get("vocab_multiple", 1)
        padded = -(-V // multiple) * multiple
        total = padded * d + T * d + L * block + ln  # the head is the token table
        return total, total - T * d, block
    if name == "GPTModern":  # no biases or norm weights; untied head
        block = 3 * d * d + d * d + 4 * d * d + 4 * d * d
        total = V * d + L * block + V * d
        return total, total - V * d, block
    assert name in ("Llama", "hf_llama"), f"no hand count for {target}: add one"
    kv = cfg["n_kv_head"] * (d // cfg["n_head"])
    # two RMSNorms, q, k, v, o, SwiGLU's gate, up and down
    block = 2 * d + d * d + 2 * d * kv + d * d + 3 * d * h
    table = V * d
    head = 0 if cfg["tie_embeddings"] else V * d
    total = table + L * block + d + head
    return total, total - (table if head else 0), block


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_blocks_are_the_repeated_layers_holding_their_parameters(config):
    model = build_model(config)
    assert isinstance(model, CausalLM)
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == L
    submodules = list(model.modules())
    for block in model.blocks:  # FSDP2 / activation checkpointing wrap these inside the model
        assert any(m is block for m in submodules)
    in_blocks = {id(p) for p in model.blocks.parameters()}
    assert len(in_blocks) == sum(1 for _ in model.blocks.parameters())  # no parameter in two blocks
    _, _, per_block = hand_counted(config)
    assert [sum(p.numel() for p in b.parameters()) for b in model.blocks] == [per_block] * L
    outside = [n for n, p in model.named_parameters() if id(p) not in in_blocks]
    assert all(".h." not in n and "layers." not in n and "blocks." not in n for n in outside), outside


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_sizes_and_flops_match_hand_arithmetic(config):
    model = build_model(config)
    total, non_embedding, _ = hand_counted(config)
    assert model.num_params() == total
    assert model.num_params(non_embedding=True) == non_embedding
    assert model.flops_per_token() == 6 * non_embedding + 12 * L * D * T
    assert (model.vocab_size, model.context_length) == (V, T)


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_changing_a_later_token_never_changes_an_earlier_logit(config):
    model = randomise(build_model(config))
    idx = torch.randint(0, V, (2, T))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % V
    with torch.no_grad():
        a, b = model.logits(model(idx)), model.logits(model(changed))
    assert a.shape == (2, T, V)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_positions_past_the_context_are_one_config_error(config):
    model = build_model(config)
    message = rf"^Positions up to {T + 1} exceed model\.context_length={T}; .* raise model\.context_length"
    with pytest.raises(ConfigError, match=message):
        model(torch.zeros(1, T + 1, dtype=torch.long))
    with pytest.raises(ConfigError, match=message):
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=model.new_kv_cache(1), start_pos=T - 2)


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_cached_decode_equals_the_full_forward(config):
    model = randomise(build_model(config))
    idx, other = torch.randint(0, V, (2, 2, T))
    with torch.no_grad():
        cache = model.new_kv_cache(2)
        # a prefill, a chunk after cached tokens, then one token at a time
        parts = [model(idx[:, :5], kv_cache=cache, start_pos=0), model(idx[:, 5:9], kv_cache=cache, start_pos=5)]
        parts += [model(idx[:, i : i + 1], kv_cache=cache, start_pos=i) for i in range(9, T)]
        torch.testing.assert_close(torch.cat(parts, dim=1), model(idx), rtol=1e-4, atol=1e-4)
        # start_pos=0 prefills afresh over what the cache held
        torch.testing.assert_close(model(other, kv_cache=cache, start_pos=0), model(other), rtol=1e-4, atol=1e-4)
    # generate's window restarts (re-prefills) and cached steps give the tokens recomputing gives
    prompt = torch.tensor([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]])
    cached = generate(model, prompt, 2 * T, temperature=0, use_cache=True)
    assert torch.equal(cached, generate(model, prompt, 2 * T, temperature=0, use_cache=False))
    assert len(set(cached[0, 5:].tolist())) > 2  # a real sequence, not one token repeated


# A value out of range for every key a model config may have (int keys: 0). A float key
# missing here fails the test below: give it a bad value and validate it in the model.
BAD_FLOATS = {"dropout": 1.0, "rope_theta": 0.0, "norm_eps": -1e-5, "logit_softcap": -1.0}


def bad_values(config: str) -> list[tuple[str, object]]:
    _, cfg = model_kwargs(config)
    bad = [(k, 0 if isinstance(v, int) else BAD_FLOATS[k]) for k, v in cfg.items() if not isinstance(v, bool)]
    bad += [("vocab_size", None), ("n_layer", 2.0), ("n_head", 3)]  # 3 does not divide n_embd=32
    if "n_kv_head" in cfg:
        bad.append(("n_kv_head", 3))
    if "dropout" in cfg:
        bad.append(("dropout", -0.1))
    return bad


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_out_of_range_constructor_args_are_config_errors_naming_the_key(config):
    if config.startswith("hf_"):
        pytest.importorskip("transformers", reason="optional extra [hf] not installed")
    target, cfg = model_kwargs(config)
    for key, value in bad_values(config):
        with pytest.raises(ConfigError, match=rf"^model\.{key}={value!r} ") as err:
            get_object(target)(**model_kwargs(config, **{key: value})[1])
        assert "\n" not in str(err.value)
    if "rope_theta" in cfg:  # 36 / 4 = 9 cannot be rotated in pairs; 36 / 3 = 12 can
        odd_heads = {"n_embd": 36, "n_head": 4} | ({"n_kv_head": 4} if "n_kv_head" in cfg else {})
        with pytest.raises(ConfigError, match=r"model\.n_head=4 gives heads of odd width.*pick model\.n_head=3"):
            get_object(target)(**model_kwargs(config, **odd_heads)[1])


def test_gpt2_124m_has_the_known_parameter_count():
    # GPT-2 small: 124,439,808 parameters with the tied head counted once (nanoGPT reports
    # 123.65M without the 786,432 position-embedding weights).
    with torch.device("meta"):
        model = build_model("gpt2_124m", tiny=False, vocab_size=50257, vocab_multiple=1)
    assert model.num_params() == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768


def test_model_with_loss_matches_cross_entropy_and_counts_correct():
    model = build_model("gpt_tiny").eval()
    net = ModelWithLoss(model, AutoregressiveLoss(ignore_index=IGNORE_INDEX))
    x, y = torch.randint(0, V, (3, T)), torch.randint(0, V, (3, T))
    loss, correct, count = net(x, y)
    logits = model.logits(model(x))
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    assert torch.allclose(loss, expected)
    assert correct.item() == (logits.argmax(-1) == y).sum().item()
    assert count.item() == 3 * T


def test_ignore_index_targets_are_not_scored():
    net = ModelWithLoss(build_model("gpt_tiny"), AutoregressiveLoss(ignore_index=IGNORE_INDEX))
    x, y = torch.randint(0, V, (2, T)), torch.randint(0, V, (2, T))
    y[:, :8] = IGNORE_INDEX
    _, correct, count = net(x, y)
    assert count.item() == 2 * (T - 8) and correct.item() <= 2 * (T - 8)
