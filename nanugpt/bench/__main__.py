"""`python -m nanugpt.bench <what> [overrides] [bench.key=value]`: the first argument picks the
benchmark, Hydra composes nanugpt/conf/bench.yaml from the rest."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from nanugpt.bench.common import Result, report
from nanugpt.bench.eval import bench_eval
from nanugpt.bench.generate import bench_generate
from nanugpt.bench.gpu import bench_gpu
from nanugpt.bench.loader import bench_loader
from nanugpt.bench.memory import bench_memory
from nanugpt.bench.prepare import bench_prepare
from nanugpt.bench.speedrun import bench_speedrun
from nanugpt.bench.train import bench_train
from nanugpt.config import BenchConfig, register_configs, validate_bench
from nanugpt.errors import report_user_errors
from nanugpt.utils import CONF_DIR

# A benchmark takes the composed config and returns its figures (None: it reported them itself).
BENCHMARKS: dict[str, Callable[[DictConfig], Result | None]] = {
    "train": bench_train,
    "eval": bench_eval,
    "generate": bench_generate,
    "prepare": bench_prepare,
    "loader": bench_loader,
    "speedrun": bench_speedrun,
    "gpu": bench_gpu,
    "memory": bench_memory,
}


def split_command(argv: list[str]) -> tuple[str, list[str]]:
    """The benchmark the first argument names, and the Hydra overrides after it. An unknown
    bench.* key fails here, with the known ones (Hydra's own message would not list them)."""
    usage = f"usage: python -m nanugpt.bench {{{'|'.join(BENCHMARKS)}}} [overrides] [bench.KEY=VALUE]"
    if not argv or argv[0] not in BENCHMARKS:
        raise SystemExit(f"{usage}; got {argv[:1]}")
    known = [f.name for f in dataclasses.fields(BenchConfig)]
    for arg in argv[1:]:
        key = arg.lstrip("+~").split("=", 1)[0]
        if key.startswith("bench.") and key.removeprefix("bench.") not in known:
            raise SystemExit(f"Unknown bench option {key}; known: {', '.join('bench.' + k for k in known)}.")
    return argv[0], argv[1:]


def speedrun_experiment(overrides: list[str]) -> str:
    """speedrun trains `experiment=<bench.experiment>`; the bench composes that experiment too, so
    that overrides of its groups (data.local_path=... for shakespeare_char) apply."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("bench.experiment=")]
    return f"experiment={given[-1] if given else BenchConfig.experiment}"


def main() -> None:
    what, overrides = split_command(sys.argv[1:])
    command = " ".join(["python -m nanugpt.bench", what, *overrides])
    if what == "speedrun":
        overrides = [speedrun_experiment(overrides), *overrides]
    sys.argv = [sys.argv[0], *overrides]  # what Hydra parses
    register_configs()

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
    @report_user_errors
    def run(cfg: DictConfig) -> None:
        validate_bench(cfg)  # the bench.* values; train.yaml's callback checked the training ones
        result = BENCHMARKS[what](cfg)
        if result is not None:
            report(what, cfg, command, result)

    run()


if __name__ == "__main__":
    main()
