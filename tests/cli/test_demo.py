"""`re2tal demo --quick`: the whole pipeline through the real commands, its table, and resuming."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from re2tal_cli.cli.app import app
from re2tal_cli.demo import STEPS

runner = CliRunner()


def test_quick_demo_runs_every_step_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--json"])
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    assert list(result["steps"]) == list(STEPS)
    for path in ("data/annotations.json", "pretrain/backbone/model.safetensors", "rewired/config.json",
                 "finetune/backbone/config.json", "features", "tal-features/summary.json", "tal-e2e/summary.json",
                 "evaluate.json", "detect/timeline.png", "detect/detections.json", "memprofile.json"):  # fmt: skip
        assert (out / path).exists(), path
    values = {row["what"]: row["value"] for row in result["table"]}
    assert values["reversible gradient error level"] < 1e-4
    e2e = json.loads((out / "tal-e2e" / "summary.json").read_text())["final"]["average_mAP"]
    assert (
        values["average mAP: end to end, reversible"]
        == e2e
        == json.loads((out / "evaluate.json").read_text())["average_mAP"]
    )
    memory = json.loads((out / "memprofile.json").read_text())
    assert {w["wiring"] for w in memory["wirings"]} == {"plain", "checkpoint", "reversible"}

    (out / "tal-e2e" / "summary.json").unlink()  # a finished step is not run again: its output is not looked at
    again = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["table"] == result["table"]
    assert "end to end" in runner.invoke(app, ["demo", "--quick", "--out", str(out)]).stdout
