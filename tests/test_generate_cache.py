"""The KV-cache decode path gives the same tokens as recomputing the context every step."""

from __future__ import annotations

import pytest
import torch

from nanugpt.sampling import generate, sample_next

from .conftest import build_model


def trained_ish_model(vocab_multiple: int = 1) -> torch.nn.Module:
    """Random weights scaled up (positions most), so greedy decoding does not collapse to one
    repeated token (a fresh GPT's logits are nearly flat, which would hide cache bugs)."""
    model = build_model("gpt_tiny", vocab_size=50, context_length=16, n_head=2, vocab_multiple=vocab_multiple)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0 if p.dim() >= 2 else 1.0)
        model.transformer.wpe.weight.mul_(5.0)
    return model.eval()


@pytest.mark.parametrize("new_tokens", [5, 40])  # within the 16-token window, and far past it
@pytest.mark.parametrize("window_keep", [None, 16, 1])  # half window (default), slide-by-one, shortest
def test_cached_greedy_equals_uncached(new_tokens: int, window_keep: int | None) -> None:
    model = trained_ish_model()
    prompt = torch.tensor([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]])
    cached = generate(model, prompt, new_tokens, temperature=0, use_cache=True, window_keep=window_keep)
    uncached = generate(model, prompt, new_tokens, temperature=0, use_cache=False, window_keep=window_keep)
    assert cached.shape == (2, 5 + new_tokens)
    assert torch.equal(cached, uncached)
    assert len(set(cached[0, 5:].tolist())) > 2  # a real sequence, not one token repeated


def test_slide_by_one_window_is_the_classic_crop() -> None:
    """window_keep=context_length: every step sees exactly the last context_length tokens."""
    model = trained_ish_model()
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    expected = idx
    for _ in range(30):
        logits = model.logits(model(expected[:, -model.context_length :])[:, -1])
        expected = torch.cat([expected, logits.argmax(-1, keepdim=True)], dim=1)
    got = generate(model, idx, 30, temperature=0, window_keep=model.context_length)
    assert torch.equal(got, expected)


def test_prompt_longer_than_the_window_is_cropped_the_same_way() -> None:
    model = trained_ish_model()
    prompt = torch.arange(40).remainder(50).unsqueeze(0)
    assert torch.equal(
        generate(model, prompt, 10, temperature=0, use_cache=True),
        generate(model, prompt, 10, temperature=0, use_cache=False),
    )


def test_seeded_sampling_matches_with_and_without_cache() -> None:
    model = trained_ish_model()
    prompt = torch.tensor([[1, 2, 3]])
    runs = [
        generate(
            model,
            prompt,
            30,
            temperature=0.9,
            top_k=20,
            top_p=0.9,
            generator=torch.Generator().manual_seed(7),
            use_cache=c,
        )
        for c in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])


def test_should_stop_ends_generation_early() -> None:
    model = trained_ish_model()
    out = generate(model, torch.tensor([[1, 2]]), 50, temperature=0, should_stop=lambda idx: idx.size(1) >= 7)
    assert out.shape == (1, 7)


def test_padded_vocab_is_never_sampled_and_loss_is_unchanged() -> None:
    plain, padded = trained_ish_model(), trained_ish_model(vocab_multiple=64)
    assert padded.lm_head.weight.shape[0] == 64
    with torch.no_grad():
        state = {k: v for k, v in plain.state_dict().items()}
        for name in ("transformer.wte.weight", "lm_head.weight"):
            padded_weight = padded.state_dict()[name].clone()
            padded_weight[:50] = state[name]
            padded_weight[50:] = 100.0  # padding rows that would win every argmax if they were sampled
            state[name] = padded_weight
        padded.load_state_dict(state)
    idx = torch.randint(0, 50, (3, 16))
    targets = torch.randint(0, 50, (3, 16))
    logits = padded.logits(padded(idx))
    assert logits.shape[-1] == 50
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    plain_loss = torch.nn.functional.cross_entropy(plain.logits(plain(idx)).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, plain_loss)
    samples = torch.cat(
        [sample_next(logits[:, -1], 1.0, None, None, torch.Generator().manual_seed(i)) for i in range(20)]
    )
    assert int(samples.max()) < 50


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, None, 0.7, gen)) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 crosses 0.7; tokens 2 and 3 are cut
    with pytest.raises(ValueError, match="top_p=1.5"):
        sample_next(logits, 1.0, None, 1.5, gen)


def test_generate_texts_batches_prompts_and_cuts_at_stop_strings() -> None:
    from nanugpt.generate import Sampler
    from nanugpt.tokenizers.byte import ByteTokenizer

    model = build_model("gpt_tiny", vocab_size=256, context_length=16, n_layer=1, n_head=2, n_embd=16).eval()
    sample = Sampler(model, ByteTokenizer(), torch.device("cpu"))
    opts = dict(num_samples=2, max_new_tokens=40, temperature=1.0, top_k=None, seed=3, progress=False)
    prompts = ["ab", "xyz", "cd"]  # two lengths: two batches, results back in prompt order
    free = sample(prompts, **opts)
    assert [t[: len(p)] for t, p in zip(free, [p for p in prompts for _ in range(2)], strict=False)] == [
        "ab",
        "ab",
        "xyz",
        "xyz",
        "cd",
        "cd",
    ]
    assert all(
        len(t.encode("utf-8", errors="surrogateescape")) > len(p) for t, p in zip(free, ["ab"] * 6, strict=False)
    )
    # Stop at a character that occurs in the first free sample's continuation: the same seeded
    # sample is cut right after it.
    stop_char = free[0][2:][5]
    stopped = sample(prompts, **opts, stop=[stop_char])
    assert stopped[0] == free[0][: 2 + free[0][2:].index(stop_char) + 1]
    for text, prompt in zip(stopped, [p for p in prompts for _ in range(2)], strict=False):
        new = text[len(prompt) :]
        assert stop_char not in new[:-1]  # nothing after the first stop string
