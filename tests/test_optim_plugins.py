"""adamw (and adamw_nanogpt, its other config), muon (+ AdamW), sgd: parameter grouping,
weight decay on all parameters when asked, Muon's momentum warmup (also through the training loop
and a resume), checkpoint round-trips, state size. Optimizers are built from their configs, as in
training."""

import io
from pathlib import Path

import pytest
import torch

from nanugpt.checkpoint import load_checkpoint
from nanugpt.errors import CheckpointError, ConfigError
from nanugpt.optim import state_bytes
from nanugpt.optim.muon import Muon, MuonWithAdamW, muon_param_groups, newton_schulz
from nanugpt.train import train

from .conftest import TINY, build_model, compose_train, plugin

V = 40


def optim(option: str, *overrides: str):
    return plugin("optim", f"optim={option}", *overrides)


def cosine(*overrides: str):
    return plugin("sched", "sched=cosine", *overrides)


def llama() -> torch.nn.Module:
    return build_model(
        "llama_tiny", vocab_size=V, context_length=8, n_head=2, n_kv_head=1, n_embd=16, intermediate_size=32
    )


def train_steps(model, optimizer, steps: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, V, (2, 8), generator=gen)
        loss = torch.nn.functional.cross_entropy(model.logits(model(idx)).reshape(-1, V), idx.roll(-1, 1).reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_muon_groups_hidden_matrices_apart_from_embeddings_head_and_norms():
    model = llama()
    groups = muon_param_groups(model)
    assert names(model, groups["embed"]) == {"tok_embeddings.weight"}
    assert names(model, groups["head"]) == {"lm_head.weight"}
    assert names(model, groups["scalar"]) == {"norm.weight"} | {
        f"layers.{i}.{n}_norm.weight" for i in range(2) for n in ("attn", "mlp")
    }
    assert names(model, groups["hidden"]) == {
        f"layers.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.w1", "mlp.w2", "mlp.w3")
    }
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))


def test_muon_treats_a_tied_head_as_the_embedding_once():
    model = build_model("gpt_tiny", vocab_size=V, context_length=8, n_layer=1, n_head=2, n_embd=16)
    groups = muon_param_groups(model)
    assert names(model, groups["embed"]) == {"transformer.wpe.weight", "transformer.wte.weight"}  # wte is lm_head
    assert groups["head"] == [] and all(p.dim() == 2 for p in groups["hidden"])
    assert names(model, groups["scalar"]) >= {"transformer.h.0.attn.c_attn.bias", "transformer.ln_f.weight"}


def test_muon_optimizer_has_one_group_per_kind_with_its_own_lr_and_trains():
    model = llama()
    opt = optim(
        "muon",
        "optim.lr=0.02",
        "optim.embed_lr=0.3",
        "optim.head_lr=0.004",
        "optim.scalar_lr=0.05",
        "optim.adamw_weight_decay=0.1",
    )(model)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [
        ("hidden", 0.02),
        ("embed", 0.3),
        ("head", 0.004),
        ("scalar", 0.05),
    ]
    assert [g["weight_decay"] for g in opt.param_groups[1:]] == [0.1, 0.1, 0.0]  # norms never decay
    assert isinstance(opt.muon, torch.optim.Muon) and isinstance(opt.adamw, torch.optim.AdamW)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, opt, 2)
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())  # every group moved


def test_a_scheduler_on_the_muon_wrapper_scales_every_inner_group():
    model = llama()
    opt = optim("muon", "optim.lr=0.02", "optim.embed_lr=0.01", "optim.head_lr=0.01", "optim.scalar_lr=0.01")(model)
    sched = cosine("training.max_steps=10", "sched.warmup_steps=4")(opt)
    train_steps(model, opt, 1)
    sched.step()
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.02 * 2 / 4)
    assert [g["lr"] for g in opt.adamw.param_groups] == pytest.approx([0.01 * 2 / 4] * 3)


def save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # as checkpoints are loaded


def test_muon_state_dict_round_trips_through_a_checkpoint_and_resumes_identically():
    model_a = llama()
    make_opt, make_sched = optim("muon"), cosine("training.max_steps=20", "sched.warmup_steps=2")
    opt_a = make_opt(model_a)
    sched_a = make_sched(opt_a)
    train_steps(model_a, opt_a, 3)
    sched_a.step()
    ckpt = save_load(
        {"model": model_a.state_dict(), "optimizer": opt_a.state_dict(), "scheduler": sched_a.state_dict()}
    )
    assert set(ckpt["optimizer"]) == {"muon", "adamw"}
    assert ckpt["optimizer"]["muon"]["state"]  # momentum buffers were saved

    model_b = llama()
    opt_b = make_opt(model_b)
    sched_b = make_sched(opt_b)
    model_b.load_state_dict(ckpt["model"])
    opt_b.load_state_dict(ckpt["optimizer"])
    sched_b.load_state_dict(ckpt["scheduler"])
    for opt, sched, model in ((opt_a, sched_a, model_a), (opt_b, sched_b, model_b)):
        for _ in range(2):
            train_steps(model, opt, 1, seed=7)
            sched.step()
    for (n, a), b in zip(model_a.named_parameters(), model_b.parameters(), strict=False):
        assert torch.equal(a, b), n
    assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]
    assert opt_b.param_groups[0] is opt_b.muon.param_groups[0]  # still linked after loading


@pytest.mark.parametrize("adjust_lr_fn,nesterov", [("original", True), ("match_rms_adamw", False)])
def test_muon_in_bf16_is_torchs_muon_bit_for_bit(adjust_lr_fn, nesterov):
    """Our step (public API only) against torch.optim.Muon's: square, wide and tall matrices
    (adjust_lr_fn scales by their shape), and one matrix without a gradient, which both skip."""
    models = [llama() for _ in range(2)]
    hidden = [muon_param_groups(m)["hidden"] for m in models]
    assert {p.shape[0] > p.shape[1] for p in hidden[0]} == {True, False}
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    reference = torch.optim.Muon(hidden[0], **kw)
    ours_bf16 = Muon(hidden[1], ns_dtype=torch.bfloat16, **kw)
    before = hidden[0][0].detach().clone()
    for model, params, opt in zip(models, hidden, (reference, ours_bf16), strict=False):
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            idx = torch.randint(0, V, (2, 8), generator=gen)
            logits = model.logits(model(idx)).reshape(-1, V)
            torch.nn.functional.cross_entropy(logits, idx.roll(-1, 1).reshape(-1)).backward()
            params[0].grad = None  # as a frozen or unused weight
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b in zip(*hidden, strict=False):
        assert torch.equal(a, b)  # the same update as torch's, step for step
    assert torch.equal(hidden[1][0], before)  # no gradient: not even decayed
    assert ours_bf16.state_dict()["state"].keys() == reference.state_dict()["state"].keys()
    fresh = muon_param_groups(llama())["hidden"]
    assert not any(torch.equal(p, q) for p, q in zip(hidden[1][1:], fresh[1:], strict=True))  # the rest moved


def test_muon_newton_schulz_in_float32_and_cpu_defaults_to_it():
    # float32: the same orthogonalisation, rounded less (singular values in NS's ~(0.7, 1.2) band)
    g = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    bf16, fp32 = (
        newton_schulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7, dt).float() for dt in (torch.bfloat16, torch.float32)
    )
    assert 0 < (bf16 - fp32).norm() / fp32.norm() < 0.05
    sv = torch.linalg.svdvals(fp32)
    assert 0.6 < sv.min() and sv.max() < 1.25
    assert optim("muon")(llama()).muon.ns_dtype == torch.float32  # CPU params: bf16 matmuls may be emulated there


def test_loading_another_optimizers_state_into_muon_names_the_fix():
    model = llama()
    with pytest.raises(CheckpointError, match="resume=never"):
        optim("muon")(model).load_state_dict(optim("adamw")(model).state_dict())


def modded_nanogpt_momentum(step: int, warmup_steps: int, start: float = 0.85, end: float = 0.95) -> float:
    """modded-nanogpt train_gpt.py (records from 2024-11-08 on), for optimizer step `step` (0-based):
    frac = min(step / 300, 1); momentum = (1 - frac) * 0.85 + frac * 0.95."""
    frac = min(step / warmup_steps, 1)
    return (1 - frac) * start + frac * end


def test_muon_momentum_warmup_ramps_the_hidden_group_and_is_off_by_default():
    model = llama()
    opt = optim("muon", "optim.momentum_warmup_steps=3", "optim.momentum_start=0.5", "optim.momentum=0.9")(model)
    hidden = opt.muon.param_groups[0]
    seen = [hidden["momentum"]]  # before the first step: the first step's momentum
    for _ in range(5):
        train_steps(model, opt, 1)
        seen.append(hidden["momentum"])  # the momentum the step just taken used
    assert seen == [modded_nanogpt_momentum(k, 3, 0.5, 0.9) for k in (0, 0, 1, 2, 3, 4)]
    assert {opt.muon.state[p]["step"] for p in hidden["params"]} == {5}
    plain_model = llama()
    plain = optim("muon", "optim.momentum=0.9")(plain_model)  # momentum_warmup_steps: 0 in muon.yaml
    train_steps(plain_model, plain, 2)
    assert plain.muon.param_groups[0]["momentum"] == 0.9
    with pytest.raises(
        ConfigError, match=r"optim.momentum_warmup_steps=-1 is out of range: it must be an integer >= 0"
    ):
        optim("muon", "optim.momentum_warmup_steps=-1")(model)
    with pytest.raises(
        ConfigError, match=r"optim.momentum_start=1.0 is out of range: it must be a number >= 0 and < 1"
    ):
        optim("muon", "optim.momentum_start=1.0")(model)


def test_muon_momentum_warmup_through_the_training_loop_and_a_resume(tmp_path, monkeypatch):
    """The hidden group's momentum at each step of a real run follows modded-nanogpt's ramp, and a
    run stopped at step 3 and resumed continues it (and its weights) exactly. Muon.step is wrapped
    to record the momentum each step used; the real step runs."""
    used: list[float] = []
    real_step = Muon.step

    def recording_step(self, closure=None):
        loss = real_step(self, closure)
        used.append(self.param_groups[0]["momentum"])
        return loss

    monkeypatch.setattr(Muon, "step", recording_step)
    run = [
        *TINY,
        "data.max_bytes=60000",
        "optim=muon",
        "optim.momentum_warmup_steps=4",
        "sched=constant",  # its lr does not depend on training.max_steps, which the resume raises
        "sched.warmup_steps=0",
        "eval.every=3",
    ]
    train(compose_train([*run, "training.max_steps=6"]), tmp_path / "whole")
    whole = list(used)
    assert whole == [modded_nanogpt_momentum(k, 4) for k in range(6)]
    used.clear()
    train(compose_train([*run, "training.max_steps=3"]), tmp_path / "resumed")
    train(compose_train([*run, "training.max_steps=6"]), tmp_path / "resumed")
    assert used == whole

    def last(run_dir: Path) -> dict:
        return load_checkpoint(run_dir / "checkpoints" / "last.pt")

    a, b = last(tmp_path / "whole"), last(tmp_path / "resumed")
    assert b["step"] == 6 and {s["step"] for s in b["optimizer"]["muon"]["state"].values()} == {6}
    assert b["optimizer"]["muon"]["param_groups"][0]["momentum"] == modded_nanogpt_momentum(5, 4)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("option", ["adamw", "adamw_nanogpt", "sgd"])
def test_decay_all_decays_norms_and_biases_too(option):
    """One AdamW step with zero gradients moves a parameter only by weight decay: p *= 1 - lr wd."""
    lr, wd = 0.1, 0.5
    for decay_all in (False, True):
        model = build_model("gpt_tiny", vocab_size=V, context_length=8, n_layer=1, n_head=2, n_embd=16)
        opt = optim(option, f"optim.lr={lr}", f"optim.weight_decay={wd}", f"optim.decay_all={decay_all}")(model)
        assert [g["weight_decay"] for g in opt.param_groups] == [wd, wd if decay_all else 0.0]
        if option == "sgd":
            continue
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        for n, p in model.named_parameters():
            decayed = decay_all or p.dim() >= 2
            assert torch.allclose(p, before[n] * (1 - lr * wd) if decayed else before[n]), (n, decay_all)
        assert {n for n, p in model.named_parameters() if p.dim() < 2} >= {"transformer.ln_f.weight"}
    with pytest.raises(ConfigError, match="optim.decay_all='yes' is a str: it must be true or false"):
        optim(option, "optim.decay_all=yes")(model)


def test_muon_decay_all_decays_norm_gains_with_adamws_weight_decay():
    for decay_all, scalar_decay in ((False, 0.0), (True, 0.2)):
        opt = optim("muon", "optim.adamw_weight_decay=0.2", f"optim.decay_all={decay_all}")(llama())
        assert {g["name"]: g["weight_decay"] for g in opt.adamw.param_groups} == {
            "embed": 0.2,
            "head": 0.2,
            "scalar": scalar_decay,
        }


@pytest.mark.parametrize("option", ["adamw", "adamw_nanogpt"])
def test_adamw_decays_matrices_only_and_picks_the_multi_tensor_path_on_cpu(option):
    model = llama()
    opt = optim(option, "optim.weight_decay=0.3")(model)
    assert isinstance(opt, torch.optim.AdamW)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.3 and all(p.dim() == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    assert optim(option, "optim.fused=true")(model).defaults["fused"] is True  # torch's CPU kernel, when asked


def test_sgd_momentum_trains_and_decays_matrices_only():
    model = llama()
    opt = optim("sgd", "optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=0.01")(model)
    assert opt.defaults["nesterov"] and [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    before = model.lm_head.weight.detach().clone()
    train_steps(model, opt, 2)
    assert not torch.equal(before, model.lm_head.weight)


def test_optimizer_state_size_counts_moments_and_momentum_buffers():
    model = build_model("gpt_modern", vocab_size=V, context_length=8, n_head=2, n_embd=16)
    n_params = sum(p.numel() for p in model.parameters())
    hidden = sum(p.numel() for p in muon_param_groups(model)["hidden"])
    for option, expected in [
        ("adamw", 2 * n_params * 4),  # exp_avg + exp_avg_sq, float32
        ("sgd", n_params * 4),  # momentum buffer
        ("muon", hidden * 4 + 2 * (n_params - hidden) * 4),  # Muon: momentum; AdamW: 2 moments
    ]:
        opt = optim(option)(model)
        assert state_bytes(opt) == 0  # created lazily on the first step
        train_steps(model, opt, 1)
        step_counters = 8 * len([1 for p in model.parameters()])  # AdamW's per-parameter `step` scalars (float32)
        got = state_bytes(opt)
        assert expected <= got <= expected + step_counters, (type(opt).__name__, got, expected)
    assert isinstance(optim("muon")(model), MuonWithAdamW)
