"""scaler= amp / none / per_tensor_norm: loss scaling, unscale-before-clip, per-tensor norms.

float16 training itself needs CUDA; the GradScaler's scaling and unscaling run on CPU too, so
these tests enable it on CPU with a float32 model and check the arithmetic for real."""

import pytest
import torch

from nanugpt.errors import ConfigError
from nanugpt.scalers.amp import AmpScaler
from nanugpt.scalers.per_tensor_norm import PerTensorNormScaler

from .conftest import build_model, plugin


def model_and_loss():
    model = build_model(
        "llama_tiny", vocab_size=30, context_length=8, n_head=2, n_kv_head=2, n_embd=16, intermediate_size=32
    )
    idx = torch.randint(0, 30, (4, 8))
    loss = torch.nn.functional.cross_entropy(model.logits(model(idx)).reshape(-1, 30), idx.roll(-1, 1).reshape(-1))
    return model, loss


def reference_grads(max_norm: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model, loss = model_and_loss()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm, [p.grad.clone() for p in model.parameters()]


def test_amp_scaler_unscales_before_clipping():
    ref_norm, ref_grads = reference_grads(0.5)
    model, loss = model_and_loss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = plugin("scaler", "scaler=amp", "scaler.enabled=true", "scaler.init_scale=1024.0")("cpu", float16=False)
    scaler.scale(loss).backward()
    raw = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert raw == pytest.approx(1024.0 * ref_norm.item(), rel=1e-4)  # gradients are scaled
    norm = scaler.unscale_and_clip_(opt, model.parameters(), 0.5)
    assert norm.item() == pytest.approx(ref_norm.item(), rel=1e-4)  # the logged norm is the true one
    for p, g in zip(model.parameters(), ref_grads, strict=False):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)  # clipped as if never scaled
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 1024.0


def test_amp_scaler_skips_a_step_with_inf_gradients_and_lowers_the_scale():
    model, loss = model_and_loss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = plugin("scaler", "scaler=amp", "scaler.enabled=true", "scaler.init_scale=1024.0")("cpu", float16=False)
    scaler.scale(loss).backward()
    next(model.parameters()).grad[0, 0] = float("inf")  # what a float16 overflow looks like
    before = [p.detach().clone() for p in model.parameters()]
    scaler.unscale_and_clip_(opt, model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=False))
    assert scaler.get_scale() == 512.0


def test_amp_scaler_is_a_pass_through_unless_float16():
    amp = plugin("scaler", "scaler=amp")
    assert amp("cpu", float16=False).is_enabled() is False
    assert amp("cpu", float16=True).is_enabled() is True
    with pytest.raises(ConfigError, match="scaler=amp"):
        plugin("scaler", "scaler=none")("cpu", float16=True)  # scaler=none with training.dtype=float16


@pytest.mark.parametrize("option,cls", [("none", AmpScaler), ("per_tensor_norm", PerTensorNormScaler)])
def test_every_scaler_takes_amps_scaling_settings(option, cls):
    scaler = plugin("scaler", f"scaler={option}", "scaler.enabled=true", "scaler.init_scale=8.0")("cpu", float16=False)
    assert type(scaler) is cls and scaler.get_scale() == 8.0
    default = plugin("scaler", f"scaler={option}", "scaler.enabled=true")("cpu", float16=False)
    assert default.get_scale() == plugin("scaler", "scaler=amp", "scaler.enabled=true")("cpu", False).get_scale()


def test_no_clip_when_grad_clip_is_zero():
    ref_norm, ref_grads = reference_grads(float("inf"))
    model, loss = model_and_loss()
    loss.backward()
    norm = plugin("scaler", "scaler=none")("cpu", float16=False).unscale_and_clip_(
        torch.optim.SGD(model.parameters(), lr=0.1), model.parameters(), 0.0
    )
    assert norm.item() == pytest.approx(ref_norm.item(), rel=1e-5)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), ref_grads, strict=False))


def test_per_tensor_norm_sets_every_gradient_norm_to_the_clip_value():
    ref_norm, ref_grads = reference_grads(float("inf"))
    model, loss = model_and_loss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = plugin("scaler", "scaler=per_tensor_norm", "scaler.enabled=true", "scaler.init_scale=256.0")(
        "cpu", float16=False
    )
    scaler.scale(loss).backward()
    norm = scaler.unscale_and_clip_(opt, model.parameters(), 0.5)
    assert norm.item() == pytest.approx(ref_norm.item(), rel=1e-4)  # logs the global norm before
    ref_norms = [g.norm().item() for g in ref_grads]
    assert max(ref_norms) / min(ref_norms) > 10  # raw gradient norms differ a lot ...
    for p, g in zip(model.parameters(), ref_grads, strict=False):
        assert p.grad.norm().item() == pytest.approx(0.5, rel=1e-4)  # ... afterwards all are 0.5
        assert torch.nn.functional.cosine_similarity(p.grad.flatten(), g.flatten(), dim=0) > 0.9999  # direction kept


def test_per_tensor_norm_needs_a_positive_clip_value():
    model, loss = model_and_loss()
    loss.backward()
    with pytest.raises(ConfigError, match="training.grad_clip"):
        plugin("scaler", "scaler=per_tensor_norm")("cpu", float16=False).unscale_and_clip_(
            torch.optim.SGD(model.parameters(), lr=0.1), model.parameters(), 0.0
        )
