"""Real Slurm: a one-node cluster on localhost (launch/slurm/local_cluster.sh), driven through
hydra-submitit-launcher exactly as users do (`python -m nanugpt.train -m hydra/launcher=slurm`).
No mocks. The `slurm` fixture uses a running cluster or, as root, starts one (installing
slurm-wlm + munge with apt when missing) and stops it afterwards; that is how CI (.ci/run, root)
runs them. Not root and no cluster: skipped with the reason, except under CI=1, where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanugpt.checkpoint import read_log
from nanugpt.metrics import read_metrics

from .conftest import REPO, TINY
from .test_ddp import DDP_TINY, assert_same_losses, data_dir_override, single  # noqa: F401 (single: a fixture)

CLUSTER = REPO / "launch" / "slurm" / "local_cluster.sh"
DEFAULT_CONF = Path(os.environ.get("NANUGPT_SLURM_DIR", "/tmp/nanugpt-slurm")) / "slurm.conf"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Each job: 2 tasks of 1 CPU forming a 2-rank gloo group; 8 sequences = 2 per rank x 2 ranks x 2 accum.
SLURM_TINY = [o for o in TINY if not o.startswith("training.device_batch_size")] + [
    "training.device_batch_size=2",
    "training.device=cpu",
    "hydra/launcher=slurm",
    "hydra.launcher.tasks_per_node=2",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=10",
]


def slurm_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=check)


def cluster_answers() -> bool:
    return (
        shutil.which("sinfo") is not None
        and subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0
    )


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """Environment for talking to a local cluster: one already running (SLURM_CONF, or the
    script's default dir), else one this fixture starts (as root; the script apt-installs
    slurm-wlm + munge when missing) and stops again, cancelling its jobs."""
    if "SLURM_CONF" not in os.environ and DEFAULT_CONF.is_file():
        os.environ["SLURM_CONF"] = str(DEFAULT_CONF)
    started = False
    if not cluster_answers():
        if os.geteuid() != 0:
            reason = "no Slurm cluster answers and starting one needs root: sudo launch/slurm/local_cluster.sh start"
            if IN_CI:
                pytest.fail(f"CI=1: {reason}")
            pytest.skip(reason)
        subprocess.run([str(CLUSTER), "start"], check=True, timeout=900)
        os.environ["SLURM_CONF"] = str(DEFAULT_CONF)
        started = True
    yield {"SLURM_CONF": os.environ.get("SLURM_CONF", "")}
    if started:
        subprocess.run([str(CLUSTER), "stop"], check=True, timeout=120)


def sweep(sweep_dir: Path, *overrides: str, slurm_env: dict[str, str], wait: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanugpt.train", "-m", *SLURM_TINY, *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=sweep_dir.parent,
        env={**os.environ, **slurm_env, "PYTHONPATH": str(REPO), "NANUGPT_DATA": str(sweep_dir.parent / "data")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if wait:
        finish(proc)
    return proc


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as err:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"sweep did not finish in {timeout} s:\n{out[-4000:]}") from err
    assert proc.returncode == 0, f"sweep failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def job_outputs(sweep_dir: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(sweep_dir.glob(".submitit/*/*log.*")))


@pytest.mark.slow
def test_slurm_sweep_two_jobs_each_a_two_rank_ddp_group(slurm, tmp_path):
    sweep_dir = tmp_path / "sweep"
    steps = 10
    proc = sweep(
        sweep_dir, f"training.max_steps={steps}", "eval.every=5", "optim.lr=1e-3,3e-3", slurm_env=slurm, wait=False
    )
    out = finish(proc)
    for job, lr in (("0", 1e-3), ("1", 3e-3)):
        job_dir = sweep_dir / job
        assert job_dir.is_dir(), f"no job dir {job_dir}:\n{out[-3000:]}\n{job_outputs(sweep_dir)}"
        # trained as one 2-rank DDP group: the banner counts ranks, and Slurm ran two tasks
        log = (job_dir / "log.txt").read_text()
        assert "global batch 8 = 2 device x 2 ranks x 2 accum" in log, log
        task_logs = {p.name.split("_")[-2] for p in sweep_dir.glob(f".submitit/*_{job}/*_log.out")}
        assert task_logs == {"0", "1"}, job_outputs(sweep_dir)
        # its own sweep point, all steps, checkpoints
        overrides = (job_dir / ".hydra" / "overrides.yaml").read_text()
        assert f"optim.lr={lr}" in overrides
        assert [r["step"] for r in read_metrics(job_dir / "metrics.jsonl")] == list(range(1, steps + 1))
        assert [e["step"] for e in read_log(job_dir / "checkpoints") if e["path"] == "last.pt"] == [10]
        assert (job_dir / "checkpoints" / "last.pt").is_file()
    # final metrics collected in the sweep dir
    summary = [json.loads(line) for line in (sweep_dir / "summary.jsonl").read_text().splitlines()]
    assert [s["job"] for s in summary] == ["0", "1"]
    for s, lr in zip(summary, (1e-3, 3e-3), strict=False):
        assert f"optim.lr={lr}" in s["overrides"] and s["step"] == steps
        assert s["val/loss"] == read_metrics(sweep_dir / s["job"] / "metrics.jsonl")[-1]["val/loss"]
    assert summary[0]["val/loss"] != summary[1]["val/loss"]  # two different runs, not one twice


@pytest.mark.slow
def test_requeued_job_resumes_from_its_checkpoint(slurm, tmp_path):
    """`scontrol requeue` kills the running job and queues it again (what preemption with
    PreemptMode=REQUEUE does); the rerun finds checkpoints/last.pt in the same run dir."""
    sweep_dir = tmp_path / "sweep"
    name = f"nanugpt-requeue-{uuid.uuid4().hex[:8]}"
    steps = 150  # 15-300 ms a step here, load-dependent: the requeue lands long before the end (asserted below)
    proc = sweep(
        sweep_dir,
        f"training.max_steps={steps}",
        "eval.every=10",
        "logging.every=10",
        f"hydra.launcher.name={name}",
        slurm_env=slurm,
        wait=False,
    )
    job_dir, last = sweep_dir / "0", sweep_dir / "0" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, f"no checkpoint appeared:\n{job_outputs(sweep_dir)}"
        time.sleep(0.1)
    job_id = slurm_cmd("squeue", "-h", "-n", name, "-o", "%i").stdout.split()[0]
    slurm_cmd("scontrol", "requeue", job_id)
    requeued_at_step = read_log(job_dir / "checkpoints")[0]["step"]
    assert read_metrics(job_dir / "metrics.jsonl")[-1]["step"] < steps, (
        "the job finished before it could be requeued; raise steps"
    )
    # Once the first run has ended, Slurm queues the job again but holds it back (BeginTime, ~2
    # min); let it start at once.
    deadline = time.monotonic() + 60
    while slurm_cmd("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip() != "PENDING":
        assert time.monotonic() < deadline, slurm_cmd("scontrol", "show", "job", job_id, check=False).stdout
        time.sleep(0.2)
    slurm_cmd("scontrol", "update", f"jobid={job_id}", "StartTime=now")
    finish(proc)

    log = (job_dir / "log.txt").read_text()
    # SIGTERM made both ranks checkpoint at the end of the step they were in, and stop ...
    stopped = re.findall(r"Stopping at step (\d+) on a preemption", log)
    assert len(stopped) == 1, log[-3000:]
    assert requeued_at_step <= int(stopped[0]) < steps
    # ... and the requeued job resumed from exactly there, not from scratch
    resumed = re.findall(r"Resumed from \S+last\.pt at step (\d+)", log)
    assert resumed == stopped, log[-3000:]
    assert "Restarts=1" in slurm_cmd("scontrol", "show", "job", job_id).stdout
    # finished with the same number of steps, each step once (the redone ones replaced)
    assert [r["step"] for r in read_metrics(job_dir / "metrics.jsonl")] == list(range(1, steps + 1))
    assert read_log(job_dir / "checkpoints")[-1]["step"] == steps


@pytest.mark.slow
def test_sbatch_template_runs_torchrun_ddp(slurm, tmp_path):
    """launch/slurm/train.sbatch as users submit it (srun -> torchrun -> 2 gloo ranks here; the
    template asks for GPUs, overridden on the command line as users would on a CPU partition)."""
    steps = 6
    overrides = [o for o in SLURM_TINY if not o.startswith("hydra")] + [f"training.max_steps={steps}", "eval.every=3"]
    proc = subprocess.run(
        [
            "sbatch",
            "--gpus-per-node=0",
            "--cpus-per-task=2",
            "--time=10",
            f"--output={tmp_path}/slurm-%j.out",
            str(REPO / "launch" / "slurm" / "train.sbatch"),
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            **slurm,
            "PYTHONPATH": str(REPO),
            "NANUGPT_DATA": str(tmp_path / "data"),
            "NPROC_PER_NODE": "2",
        },
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    job_id = re.search(r"Submitted batch job (\d+)", proc.stdout).group(1)
    deadline = time.monotonic() + 240  # not `sbatch --wait`: it polls at doubling intervals (~30 s late)
    while slurm_cmd("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip():
        assert time.monotonic() < deadline, slurm_cmd("scontrol", "show", "job", job_id, check=False).stdout
        time.sleep(0.5)
    assert "ExitCode=0:0" in slurm_cmd("scontrol", "show", "job", job_id).stdout
    outputs = "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("slurm-*.out"))
    run_dir = tmp_path / "outputs" / "slurm" / job_id
    assert "global batch 8 = 2 device x 2 ranks x 2 accum" in (run_dir / "log.txt").read_text(), outputs
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, steps + 1))
    assert (run_dir / "checkpoints" / "last.pt").is_file()


# The parallel modes the two-node test runs, each as the override that selects it: a new mode is one line.
PARALLEL_OVERRIDES = {
    "ddp": "training.parallel=ddp",
    "fsdp": "training.parallel=fsdp",
}


def rendezvous_lines() -> str:
    """The sbatch template's rendezvous block, between its markers."""
    text = (REPO / "launch" / "slurm" / "train.sbatch").read_text()
    return text.split("# ---- rendezvous", 1)[1].split("# ---- end rendezvous", 1)[0].split("\n", 1)[1]


@pytest.mark.slow
@pytest.mark.parametrize("parallel", list(PARALLEL_OVERRIDES))
def test_sbatch_rendezvous_two_agents_match_one_process(slurm, single, parallel, tmp_path, tmp_path_factory):  # noqa: F811
    """Two nodes on this one host: the template's rendezvous lines run in a fake two-node
    allocation (what Slurm sets on each node; `scontrol show hostnames` is real), and each of the
    two agents they make is started as srun would start it on its node: `torchrun --nnodes=2
    --nproc_per_node=1 --rdzv_backend=c10d`. The 2 ranks train the same per-step losses as one
    process (and so as one node with 2 ranks, tests/test_ddp.py)."""
    job_id = str(40000 + os.getpid() % 10000)
    script = tmp_path / "agent.sh"
    script.write_text(f'set -euo pipefail\n{rendezvous_lines()}\nexec "${{AGENT[@]}}" -m nanugpt.train "$@"\n')
    run_dir = tmp_path / "run"
    overrides = [
        *DDP_TINY,
        data_dir_override(tmp_path_factory),
        PARALLEL_OVERRIDES[parallel],
        f"hydra.run.dir={run_dir}",
    ]
    allocation = {"SLURM_JOB_NODELIST": "localhost,localhost", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": job_id}
    agents = [
        subprocess.Popen(
            ["bash", str(script), *overrides],
            cwd=tmp_path,
            env={
                **os.environ,
                **slurm,
                **allocation,
                "SLURM_NODEID": str(node),
                "NPROC_PER_NODE": "1",
                "PYTHONPATH": str(REPO),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "global batch 8 = 2 device x 2 ranks x 2 accum" in (run_dir / "log.txt").read_text()
    assert_same_losses(single, run_dir)
