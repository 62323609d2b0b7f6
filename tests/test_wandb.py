"""W&B in offline mode: real wandb, writing its local run files, which these tests read back.

wandb >= 0.2x no longer ships a Python reader for its `.wandb` transaction log, so `records`
reads the format (a 7-byte `:W&B` header, then LevelDB log blocks holding protobuf `Record`s)
and decodes each with wandb's own protobuf classes.
"""

from __future__ import annotations

import json
from pathlib import Path

from wandb.proto import wandb_internal_pb2

from nanugpt.metrics import read_metrics
from nanugpt.observe import RUN_ID_FILE, default_run_name, wandb_init_args, wandb_mode
from nanugpt.report import write_report

from .conftest import TINY, compose_train, run_cli

BLOCK = 32768  # LevelDB log block size


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    out, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # FULL, FIRST
            pending = b""
        pending += chunk
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def key(item) -> str:
    return item.key or "/".join(item.nested_key)


def of_type(recs: list, kind: str) -> list:
    return [getattr(r, kind) for r in recs if r.WhichOneof("record_type") == kind]


def history(recs: list) -> dict[int, dict]:
    rows = {}
    for h in of_type(recs, "history"):
        row = {key(i): json.loads(i.value_json) for i in h.item}
        rows[row["_step"]] = row
    return rows


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))


def test_offline_run_logs_config_summary_steps_artifacts_and_resumes_into_the_same_run(tmp_path):
    run_dir, wandb_dir = tmp_path / "run", tmp_path / "wandb_dir"
    env = {"WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    args = [
        *TINY,
        "eval.every=10",
        "logging.wandb.mode=offline",
        "logging.wandb.project=nanugpt-test",
        "logging.wandb.group=lr-sweep",
        "tags=[tiny,ci]",
        "logging.wandb.log_checkpoints=true",
        f"hydra.run.dir={run_dir}",
    ]
    run_cli("nanugpt.train", *args, "training.max_steps=20", cwd=tmp_path, env=env)

    [first] = offline_runs(wandb_dir)
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    recs = records(first)
    [run] = of_type(recs, "run")
    assert run.run_id == run_id and run.project == "nanugpt-test" and run.run_group == "lr-sweep"
    assert list(run.tags) == ["tiny", "ci"] and run.display_name == default_run_name(run_dir)[0]
    config = {key(u): json.loads(u.value_json) for u in run.config.update}
    assert config["training"]["max_steps"] == 20 and config["model"]["n_embd"] == 32
    assert "${" not in config["paths"]["data_dir"]  # resolved

    summary = {key(u): json.loads(u.value_json) for s in of_type(recs, "summary") for u in s.update}
    assert summary["params"] == json.loads((run_dir / "run_info.json").read_text())["params"] > 0
    assert summary["global_batch_size"] == 8 and summary["tokens_per_step"] == 8 * 32

    logged = history(recs)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert sorted(logged) == [r["step"] for r in metrics] == list(range(1, 21))
    for row in metrics:  # every metrics.jsonl value reached W&B at its step
        for k, v in row.items():
            if k != "step":
                assert logged[row["step"]][k] == v, (row["step"], k)
    assert "val/loss" in logged[10] and "val/loss" not in logged[9]

    artifacts = {a.name: a for a in of_type(recs, "artifact")}
    assert artifacts[f"config-{run_id}"].type == "config"
    assert artifacts[f"checkpoint-log-{run_id}"].type == "checkpoint-log"
    files = {e.path for e in artifacts[f"checkpoint-log-{run_id}"].manifest.contents}
    assert files == {"checkpoint_log.yaml"}
    # the run's provenance with its config; the final checkpoints (logging.wandb.log_checkpoints=true)
    files = {e.path for e in artifacts[f"config-{run_id}"].manifest.contents}
    assert {"resolved_config.yaml", "run_info.json", "command.sh", "env.json"} <= files
    assert files - {"code.diff"} == {"resolved_config.yaml", "run_info.json", "command.sh", "env.json"}
    assert artifacts[f"checkpoint-{run_id}"].type == "checkpoint"
    files = {e.path: e.size for e in artifacts[f"checkpoint-{run_id}"].manifest.contents}
    assert files == {name: (run_dir / "checkpoints" / name).stat().st_size for name in ("last.pt", "best.pt")}

    # Resume: the same run dir continues the same W&B run from the checkpoint's step.
    run_cli("nanugpt.train", *args, "training.max_steps=30", cwd=tmp_path, env=env)
    second = [p for p in offline_runs(wandb_dir) if p != first]
    assert len(second) == 1 and second[0].name == f"run-{run_id}.wandb"
    recs = records(second[0])
    [run] = of_type(recs, "run")
    assert run.run_id == run_id
    assert sorted(history(recs)) == list(range(21, 31))


def test_wandb_mode_defaults_to_disabled_when_not_logged_in(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert wandb_mode(None) == "disabled"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(None) == "offline"
    assert wandb_mode("disabled") == "disabled"


def test_a_disabled_run_writes_no_wandb_files(tmp_path):
    run_dir = tmp_path / "run"
    env = {"WANDB_DIR": str(tmp_path / "wandb_dir"), "WANDB_MODE": ""}
    run_cli(
        "nanugpt.train",
        *TINY,
        "training.max_steps=3",
        "logging.wandb.mode=disabled",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env=env,
    )
    assert not (tmp_path / "wandb_dir").exists() and not (run_dir / RUN_ID_FILE).exists()


WANDB_ENV = {
    "WANDB_PROJECT": "env-project",
    "WANDB_ENTITY": "env-entity",
    "WANDB_NAME": "env-name",
    "WANDB_RUN_GROUP": "env-group",
    "WANDB_TAGS": "env-a,env-b",
}


def test_wandb_settings_come_from_the_command_line_then_wandbs_variables_then_nanugpts_defaults(tmp_path, monkeypatch):
    run_dir = tmp_path / "2026-01-02" / "03-04-05"
    for name in WANDB_ENV:
        monkeypatch.delenv(name, raising=False)
    defaults = wandb_init_args(compose_train(), run_dir)
    assert defaults == {"project": "nanugpt", "entity": None, "name": "2026-01-02/03-04-05", "group": None, "tags": []}

    for name, value in WANDB_ENV.items():
        monkeypatch.setenv(name, value)
    from_env = wandb_init_args(compose_train(), run_dir)
    assert from_env == {
        "project": "env-project",
        "entity": "env-entity",
        "name": "env-name",
        "group": "env-group",
        "tags": ["env-a", "env-b"],
    }

    cli = [f"logging.wandb.{k}=cli-{k}" for k in ("project", "entity", "name", "group")] + ["tags=[cli]"]
    from_cli = wandb_init_args(compose_train(cli), run_dir)
    assert from_cli == {
        "project": "cli-project",
        "entity": "cli-entity",
        "name": "cli-name",
        "group": "cli-group",
        "tags": ["cli"],
    }
    assert wandb_init_args(compose_train(["tags=[]"]), run_dir)["tags"] == []  # an explicit empty list wins too


def test_wandbs_variables_reach_the_offline_run_and_the_tags_reach_run_info_and_the_report(tmp_path):
    run_dir, wandb_dir = tmp_path / "run", tmp_path / "wandb_dir"
    env = {"WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true", "WANDB_MODE": "offline", **WANDB_ENV}
    run_cli("nanugpt.train", *TINY, "training.max_steps=2", f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env)

    [run] = of_type(records(offline_runs(wandb_dir)[0]), "run")
    assert (run.project, run.entity, run.display_name, run.run_group) == (
        "env-project",
        "env-entity",
        "env-name",
        "env-group",
    )
    assert list(run.tags) == ["env-a", "env-b"]
    assert json.loads((run_dir / "run_info.json").read_text())["tags"] == ["env-a", "env-b"]
    report, _ = write_report(run_dir)
    header, _, row = report.read_text().splitlines()[2:5]
    assert "| tags |" in header and "| env-a, env-b |" in row
