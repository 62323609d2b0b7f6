"""nanugpt/memory.py against real tensors: the parameter, gradient and optimizer-state bytes after
one real optimizer step, in one process and on each of 2 gloo ranks under torchrun with FSDP2
(`fully_shard` per block and the root) and ZeRO-1; and the traced activation count extrapolated
from small sizes against a direct trace at the real size. The activation estimate against measured
peak memory is `python -m nanugpt.bench memory` (docs/benchmarks.md).

Run as a script under torchrun, this file is the 2-rank worker: it trains the cases of the JSON
file given as its argument one step each and writes what every rank holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nanugpt.memory import estimate_for_config, estimate_memory, saved_bytes, traced_saved_bytes
from nanugpt.optim import state_bytes

# Odd sizes, so FSDP pads: 61 vocab rows and 3 x 24 = 72 attention rows split over 2 ranks as 31 + 30
# and 36 + 36; llama's 37-row SwiGLU matrices as 19 + 18.
GPT = ["model=gpt_tiny", "model.vocab_size=61", "model.vocab_multiple=1", "model.n_embd=24", "model.n_head=2"]
LLAMA = ["model=llama_tiny", "model.vocab_size=61", "model.n_embd=24", "model.n_head=4", "model.n_kv_head=2"]
LLAMA += ["model.intermediate_size=37"]
SIZES = ["model.n_layer=2", "model.context_length=16", "training.device_batch_size=2", "training.global_batch_size=2"]
CASES = {  # name: (overrides, parallel mode on 2 ranks)
    "gpt_adamw_fsdp": (GPT + ["optim=adamw"], "fsdp"),
    "llama_muon_fsdp": (LLAMA + ["optim=muon"], "fsdp"),
    "gpt_adamw_zero1": (GPT + ["optim=adamw"], "zero1"),
}


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors`: an FSDP shard's padded storage, and the one
    reduce-scatter output a group's gradients are views of, counted once."""
    storages = {local(t).untyped_storage().data_ptr(): local(t).untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """`state_bytes` on local shards (a DTensor's numel is the global one)."""
    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer: this rank's optimizer
    subs = [inner.muon, inner.adamw] if hasattr(inner, "muon") else [inner]
    return sum(
        local(v).numel() * local(v).element_size()
        for opt in subs
        for state in opt.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


def one_step(model: torch.nn.Module, net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """One real step on random tokens; the bytes held just before zero_grad."""
    x = torch.randint(0, model.vocab_size, (2, model.context_length))
    loss = F.cross_entropy(model.logits(net(x)).flatten(0, 1), x.flatten())
    loss.backward()
    optimizer.step()
    params = list(dict.fromkeys(model.parameters()))
    return {
        "params": storage_bytes(params),
        "grads": storage_bytes([p.grad for p in params]),
        "optimizer": optimizer_state_bytes(optimizer),
    }


def worker(cases_file: str) -> None:
    """One rank: each case built, wrapped, stepped once; this rank's bytes to <cases_file>.<rank>.json."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from nanugpt.train import shard_optimizer_state

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    measured = {}
    for name, case in json.loads(Path(cases_file).read_text()).items():
        torch.manual_seed(0)
        model = instantiate(OmegaConf.create(case["model"]))
        net = model
        if case["parallel"] == "fsdp":
            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)
            optimizer = instantiate(OmegaConf.create(case["optim"]))(model)
        else:
            net = DistributedDataParallel(model)
            optimizer = shard_optimizer_state(instantiate(OmegaConf.create(case["optim"]))(model))
        measured[name] = one_step(model, net, optimizer)
    Path(f"{cases_file}.{rank}.json").write_text(json.dumps(measured))
    torch.distributed.destroy_process_group()


def config(overrides: list[str]):
    from .conftest import compose_train

    return compose_train(SIZES + overrides)


@pytest.mark.parametrize("overrides", [GPT + ["optim=adamw"], GPT + ["optim=sgd"], LLAMA + ["optim=muon"]])
def test_one_process_bytes_equal_the_real_tensors_after_a_step(overrides):
    cfg = config(overrides)
    estimate = estimate_for_config(cfg, "single", 1, torch.float32)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    optimizer = instantiate(cfg.optim)(model)
    measured = one_step(model, model, optimizer)
    assert measured["optimizer"] == state_bytes(optimizer) > 0  # the helper counts what the trainer logs
    assert (estimate.params, estimate.grads, estimate.optimizer) == (
        measured["params"],
        measured["grads"],
        measured["optimizer"],
    )
    assert estimate.buffers == sum(b.numel() * b.element_size() for b in model.buffers())
    assert estimate.comm == 0 and estimate.activations > 0


@pytest.mark.parametrize(
    "model_overrides, dropout",
    [(GPT, "model.dropout=0.0"), (GPT, "model.dropout=0.1"), (LLAMA, None)],
    ids=["gpt-flash", "gpt-dropout-math", "llama-gqa"],
)
@pytest.mark.parametrize("amp_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fake_tensor_trace_counts_what_a_real_forward_saves(model_overrides, dropout, amp_dtype):
    """The estimate's trace of the meta-built model on fake tensors against the same forward and
    loss on real tensors, at batch 3 x 40 tokens: SDPA's flash path (O(T) saved) and its math path
    with dropout (T x T), grouped-query attention with rotary tables, fp32 and bf16 autocast."""
    cfg = config(model_overrides + ([dropout] if dropout else []) + ["model.context_length=40"])
    loss_fn = instantiate(cfg.loss)
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    tokens = torch.randint(0, model.vocab_size, (3, 40))
    with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype != torch.float32):
        real = saved_bytes(
            lambda: loss_fn(model.logits(model(tokens)), tokens), [*model.parameters(), *model.buffers()]
        )
    with torch.device("meta"):
        meta_model = instantiate(cfg.model)
    assert traced_saved_bytes(meta_model, loss_fn, 3, 40, amp_dtype, checkpointing=False) == real > 0


@pytest.mark.slow
def test_two_ranks_fsdp_and_zero1_bytes_equal_each_ranks_real_tensors(tmp_path):
    cases, configs = {}, {}
    for name, (overrides, parallel) in CASES.items():
        cfg = configs[name] = config(overrides)
        container = OmegaConf.to_container(cfg, resolve=True)
        cases[name] = {"model": container["model"], "optim": container["optim"], "parallel": parallel}
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(cases))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            __file__,
            str(cases_file),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    for rank in (0, 1):
        measured = json.loads(Path(f"{cases_file}.{rank}.json").read_text())
        for name, (_, parallel) in CASES.items():
            cfg = configs[name]
            with torch.device("meta"):
                model = instantiate(cfg.model)
                optimizer = instantiate(cfg.optim)(model)
            estimate = estimate_memory(
                model, optimizer, instantiate(cfg.loss), parallel, 2, 2, 16, torch.float32, rank=rank
            )
            got = measured[name]
            assert (estimate.params, estimate.grads, estimate.optimizer) == (
                got["params"],
                got["grads"],
                got["optimizer"],
            ), (name, rank)
    # sharding saved something: each fsdp rank holds about half the parameters of one process
    single = estimate_for_config(configs["gpt_adamw_fsdp"], "single", 1, torch.float32)
    fsdp = json.loads(Path(f"{cases_file}.0.json").read_text())["gpt_adamw_fsdp"]
    assert single.params / 2 <= fsdp["params"] < 0.6 * single.params


if __name__ == "__main__":
    worker(sys.argv[1])
