"""A damaged line in metrics.jsonl: only a torn last line is a crash artefact; a bad line
anywhere else is skipped with a warning, and every row after it is kept by the report and by a
resumed run."""

from __future__ import annotations

import json
import logging

from nanugpt.metrics import read_metrics
from nanugpt.report import write_report
from nanugpt.train import train

from .conftest import TINY, compose_train

ROWS = [{"step": s, "train/loss": 5.0 - s} for s in range(1, 5)]


def test_a_bad_middle_line_is_skipped_with_a_warning_a_torn_last_line_quietly(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in ROWS]
    path.write_text("\n".join([lines[0], '{"step": 2, "train/lo\x00\x00\x00', *lines[2:], '{"step": 5, "tr']))
    with caplog.at_level(logging.WARNING, logger="nanugpt.metrics"):
        rows = read_metrics(path)
    assert rows == [ROWS[0], *ROWS[2:]]
    [warning] = caplog.records
    assert f"{path}: line 2 is not a metrics row" in warning.getMessage()

    caplog.clear()
    path.write_text("\n".join([*lines, "[1, 2]", lines[0]]) + "\n")  # valid JSON, but not a row
    with caplog.at_level(logging.WARNING, logger="nanugpt.metrics"):
        assert read_metrics(path) == [*ROWS, ROWS[0]]
    assert "line 5 is not a metrics row" in caplog.records[0].getMessage()


def test_report_and_resume_keep_the_rows_after_a_damaged_line(tmp_path, caplog):
    args = [*TINY, "eval.every=2", "eval.iters=1"]
    train(compose_train([*args, "training.max_steps=4"]), tmp_path)
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:25] + "\x00" * 20 + "\n"  # step 2's row, damaged
    path.write_text("".join(lines))

    _, [run] = write_report(tmp_path)
    assert [r["step"] for r in run.rows] == [1, 3, 4] and run.status == "finished"
    assert "| finished | 4/4 |" in (tmp_path / "report.md").read_text()

    with caplog.at_level(logging.WARNING, logger="nanugpt.metrics"):
        train(compose_train([*args, "training.max_steps=6"]), tmp_path)  # resumes from step 4
    assert [r["step"] for r in read_metrics(path)] == [1, 3, 4, 5, 6]
    assert any("line 2 is not a metrics row" in r.getMessage() for r in caplog.records)
