"""Llama, speedrun-style GPT and transformers-built models: architecture properties."""

import math

import pytest
import torch

from nanugpt.models.rope import Rotary

from .conftest import TINY_MODEL, build_model, model_kwargs

V, T = TINY_MODEL["vocab_size"], TINY_MODEL["context_length"]


# llama_tiny / gpt_modern at the tiny sizes: 2 layers, 4 heads (2 kv heads), width 32, SwiGLU 64
tiny_llama = lambda **kw: build_model("llama_tiny", **kw)
tiny_modern = lambda **kw: build_model("gpt_modern", **kw)


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """gpt_modern starts with zero output projections (its logits are all zero); give every
    weight random values so property tests see a model that actually mixes positions."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def test_rope_scores_depend_only_on_relative_position():
    rotary = Rotary(head_dim=8, context_length=64, theta=10000.0)
    q, k = torch.randn(8), torch.randn(8)

    def score(m: int, n: int) -> float:
        x = torch.zeros(1, 1, 64, 8)
        x[0, 0, m], y = q, torch.zeros(1, 1, 64, 8)
        y[0, 0, n] = k
        return (rotary(x)[0, 0, m] @ rotary(y)[0, 0, n]).item()

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4) == pytest.approx(score(3, 0), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)
    # a rotation: norms are kept, and position 0 is the identity
    x = torch.randn(2, 3, 64, 8)
    assert torch.allclose(rotary(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(rotary(x)[:, :, 0], x[:, :, 0])
    # `start` continues positions (the decode path of a cache)
    assert torch.allclose(rotary(x[:, :, 10:12], start=10), rotary(x)[:, :, 10:12], atol=1e-6)


def test_grouped_query_attention_equals_mha_with_each_kv_head_repeated_for_its_group():
    gqa = tiny_llama(n_kv_head=2).eval()
    mha = tiny_llama(n_kv_head=4).eval()
    head_dim = 32 // 4
    state = gqa.state_dict()
    for key, value in list(state.items()):
        if key.endswith(("wk.weight", "wv.weight")):  # (2 heads x head_dim, C) -> (4 x head_dim, C)
            state[key] = value.view(2, head_dim, -1).repeat_interleave(2, dim=0).reshape(4 * head_dim, -1)
    mha.load_state_dict(state)
    idx = torch.randint(0, V, (2, T))
    with torch.no_grad():
        assert torch.allclose(gqa.logits(gqa(idx)), mha.logits(mha(idx)), atol=1e-5)
    assert gqa.num_params() < mha.num_params()


def test_llama_attention_matches_a_hand_written_causal_softmax_attention():
    model = tiny_llama(n_kv_head=4).eval()
    attn, x = model.layers[0].attn, torch.randn(2, T, 32)
    q = attn.rotary(attn.wq(x).view(2, T, 4, 8).transpose(1, 2))
    k = attn.rotary(attn.wk(x).view(2, T, 4, 8).transpose(1, 2))
    v = attn.wv(x).view(2, T, 4, 8).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    expected = attn.wo((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, T, 32))
    with torch.no_grad():
        assert torch.allclose(attn(x), expected, atol=1e-5)


# The published sizes: TinyLlama-1.1B (its model card / HF LlamaForCausalLM) and Llama-3.2-1B (tied head).
PUBLISHED_LLAMAS = [("tinyllama_1b", 32000, 1_100_048_384), ("llama3_1b", 128256, 1_235_814_400)]


@pytest.mark.parametrize("name,vocab,expected", PUBLISHED_LLAMAS)
def test_llama_configs_give_the_published_counts(name, vocab, expected):
    with torch.device("meta"):  # no 4 GB allocation
        assert build_model(name, tiny=False, vocab_size=vocab).num_params() == expected


def test_gpt_modern_starts_uniform_and_soft_caps_its_logits():
    model = tiny_modern().eval()
    idx = torch.randint(0, V, (2, T))
    with torch.no_grad():
        assert torch.equal(model.logits(model(idx)), torch.zeros(2, T, V))  # zero-initialised head
        randomise(model)
        model.lm_head.weight.mul_(1000.0)
        logits = model.logits(model(idx))
    assert logits.abs().max() <= 30.0 and logits.abs().max() > 29.0
    assert model.lm_head.weight is not model.wte.weight


def test_gpt_modern_blocks_start_as_identity():
    model = tiny_modern()
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0 and torch.count_nonzero(block.mlp.c_proj.weight) == 0


def test_gpt_modern_qk_norm_makes_attention_blind_to_query_and_key_scale():
    model = randomise(tiny_modern()).eval()
    idx = torch.randint(0, V, (2, T))
    with torch.no_grad():
        before = model.logits(model(idx))
        for block in model.blocks:
            block.attn.c_attn.weight[: 2 * 32].mul_(7.0)  # q and k rows; v untouched
        after = model.logits(model(idx))
        assert torch.allclose(before, after, atol=1e-4)
        model.blocks[0].attn.c_attn.weight[2 * 32 :].mul_(7.0)  # v is not normalised
        assert not torch.allclose(before, model.logits(model(idx)), atol=1e-3)


def test_gpt_modern_mlp_is_relu_squared():
    mlp = tiny_modern().blocks[0].mlp
    torch.nn.init.normal_(mlp.c_proj.weight)
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.allclose(mlp(x), mlp.c_proj(torch.relu(mlp.c_fc(x)) ** 2))


# ---- transformers-built models (optional extra [hf]; skipped without it)


def test_hf_models_at_the_plain_configs_sizes_give_the_published_counts():
    _, gpt2 = model_kwargs("gpt2_124m", tiny=False, vocab_size=50257)
    _, tinyllama = model_kwargs("tinyllama_1b", tiny=False, vocab_size=32000)
    with torch.device("meta"):
        hf_gpt2 = build_model(
            "hf_gpt2", tiny=False, **{k: v for k, v in gpt2.items() if k not in ("bias", "vocab_multiple")}
        )
        assert hf_gpt2.num_params() == 124_439_808  # GPT-2 small
        assert build_model("hf_llama", tiny=False, **tinyllama).num_params() == 1_100_048_384


def test_plain_llama_computes_what_transformers_llama_computes():
    """Same weights, same logits: our RMSNorm / RoPE / GQA / SwiGLU agree with LlamaForCausalLM."""
    ours = tiny_llama(rope_theta=500000.0).eval()
    theirs = build_model("hf_llama", rope_theta=500000.0).eval()
    names = {
        "tok_embeddings": "model.embed_tokens",
        "attn_norm": "input_layernorm",
        "mlp_norm": "post_attention_layernorm",
        "attn.wq": "self_attn.q_proj",
        "attn.wk": "self_attn.k_proj",
        "attn.wv": "self_attn.v_proj",
        "attn.wo": "self_attn.o_proj",
        "mlp.w1": "mlp.gate_proj",
        "mlp.w3": "mlp.up_proj",
        "mlp.w2": "mlp.down_proj",
    }
    state = {}
    for key, value in ours.state_dict().items():
        hf_key = "model." + key if key.startswith(("layers.", "norm.")) else key
        for a, b in names.items():
            hf_key = hf_key.replace(a, b)
        state["hf." + hf_key] = value
    theirs.load_state_dict(state, strict=True)
    idx = torch.randint(0, V, (2, T))
    with torch.no_grad():
        assert torch.allclose(ours.logits(ours(idx)), theirs.logits(theirs(idx)), atol=1e-4)


def test_hf_models_without_transformers_name_the_extra(monkeypatch):
    from nanugpt.models.hf import hf_gpt2

    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install -e "\.\[hf\]"'):
        hf_gpt2(**model_kwargs("hf_gpt2")[1])
