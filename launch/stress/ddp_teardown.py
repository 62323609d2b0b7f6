"""Stress the end of a distributed run: repeat a 2-rank start/train/exit cycle under CPU load and
count the runs that did not exit cleanly (torchrun exit code != 0, or an abort in a worker).

Not a test (it takes minutes and needs a loaded machine to show a race); run it by hand:

    python launch/stress/ddp_teardown.py --runs 50 --load 4            # 4 busy-loop processes
    python launch/stress/ddp_teardown.py --runs 50 --load 4 -- training.parallel=zero1

Each run is `torchrun --standalone --nproc_per_node=2 -m nanugpt.train` with a tiny model on
gloo (CPU), a few steps and a checkpoint at the end; anything after `--` is passed on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.context_length=32",
    "training.global_batch_size=8", "training.device_batch_size=2", "training.threads=1",
    "training.device=cpu", "data.max_bytes=300000", "eval.iters=2", "eval.every=3",
    "training.max_steps=6", "logging.wandb.mode=disabled",
]  # fmt: skip


def busy(stop: multiprocessing.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy-loop processes beside the runs")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    stop = multiprocessing.Event()
    loaders = [multiprocessing.Process(target=busy, args=(stop,), daemon=True) for _ in range(args.load)]
    for p in loaders:
        p.start()
    failures = []
    repo = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="nanugpt-teardown-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(repo), "NANUGPT_DATA": f"{tmp}/data", "OMP_NUM_THREADS": "1"}
        for i in range(args.runs):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "nanugpt.train", *TINY, *args.overrides, f"hydra.run.dir={tmp}/run{i}"]  # fmt: skip
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            out = proc.stdout + proc.stderr
            bad = proc.returncode != 0 or "terminate called" in out or "Aborted" in out or "SIGABRT" in out
            print(f"run {i + 1}/{args.runs}: exit {proc.returncode} in {time.perf_counter() - t:.1f} s"
                  + ("  <-- FAILED" if bad else ""), flush=True)  # fmt: skip
            if bad:
                failures.append(i)
                Path(f"teardown-failure-{i}.log").write_text(out)
    stop.set()
    print(f"\n{len(failures)} of {args.runs} runs did not exit cleanly (load: {args.load} busy processes)"
          + ("; logs: teardown-failure-*.log" if failures else ""))  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
