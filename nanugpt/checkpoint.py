"""Checkpoints: crash-safe saves, a human-readable log of them, and safe loads.

    <run dir>/checkpoints/last.pt              newest state (written atomically)
                         /best.pt              hard link to the last.pt with the best val loss
                         /checkpoint_log.yaml  one entry per save: step, path, val loss

Loads use `torch.load(weights_only=True)`: a checkpoint is untrusted input and must not be able
to run code. So everything saved is tensors and plain Python containers.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from nanugpt.utils import atomic_write, fsync_dir

LOG_NAME = "checkpoint_log.yaml"


def clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `_orig_mod.` (torch.compile) and `module.` (DDP) prefixes wrappers add."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            key = key.replace(prefix, "")
        cleaned[key] = value
    return cleaned


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy(), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(ckpt_dir: Path, state: dict[str, Any], step: int, val_loss: float | None, is_best: bool) -> Path:
    """Atomically write `last.pt` (and `best.pt` when `is_best`), then append to the log."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last = ckpt_dir / "last.pt"
    atomic_write(last, lambda f: torch.save(state, f))
    entries = read_log(ckpt_dir)
    entries.append({"step": step, "path": "last.pt", "val_loss": val_loss})
    if is_best:
        best = ckpt_dir / "best.pt"
        tmp = ckpt_dir / ".best.pt.link.tmp"
        tmp.unlink(missing_ok=True)
        os.link(last, tmp)  # same bytes, no second write; renaming over last.pt later keeps them
        os.replace(tmp, best)
        fsync_dir(ckpt_dir)
        entries.append({"step": step, "path": "best.pt", "val_loss": val_loss})
    atomic_write(ckpt_dir / LOG_NAME, lambda f: yaml.safe_dump(entries, f, sort_keys=False), mode="w")
    return last


def read_log(ckpt_dir: Path) -> list[dict[str, Any]]:
    path = ckpt_dir / LOG_NAME
    return (yaml.safe_load(path.read_text()) or []) if path.is_file() else []


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; pass the path of a .pt file that nanugpt.train wrote.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        others = sorted(p.name for p in path.parent.glob("*.pt") if p != path)
        hint = f" Other checkpoints there: {', '.join(others)}." if others else ""
        raise RuntimeError(f"Checkpoint {path} could not be loaded ({type(err).__name__}: {err}); it is truncated, corrupt or not a nanugpt checkpoint.{hint}") from err
