"""Tables a user loads with pandas in one line: `--csv FILE` of evaluate, memprofile and data info, and a run's
RUN/epochs.csv — each read back with pandas.read_csv and compared with the command's --json numbers (or, for
epochs.csv, with metrics.jsonl's records)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from tests.train.conftest import invoke, ok, one_line_error, records


def _json_and_csv(tmp_path, *args) -> tuple[dict, pd.DataFrame]:
    csv = tmp_path / "table.csv"
    data = json.loads(ok(invoke(*args, "--json", "--csv", csv)).stdout)
    return data, pd.read_csv(csv)


def test_evaluate_csv_holds_every_number_of_the_json(end_to_end_run, synth, tmp_path):
    run, _ = end_to_end_run
    data, table = _json_and_csv(tmp_path, "evaluate", synth, run, "--breakdown", "--per-class", "--tiou", "0.3,0.5")
    assert sorted(set(table["table"])) == ["class", "length", "mAP"]

    def ap(kind: str, name: str, tiou: float | None) -> float:
        rows = table[(table["table"] == kind) & (table["name"] == name)]
        rows = rows[rows["tiou"].isna()] if tiou is None else rows[rows["tiou"] == tiou]
        assert len(rows) == 1
        return rows.iloc[0]

    for t, m in zip(data["tiou"], data["mAP"], strict=True):
        assert ap("mAP", "all", t)["ap"] == pytest.approx(m, abs=1e-12)
    assert ap("mAP", "all", None)["ap"] == pytest.approx(data["average_mAP"], abs=1e-12)
    for c in data["per_class"]:
        assert [ap("class", c["label"], t)["ap"] for t in data["tiou"]] == pytest.approx(c["ap"], abs=1e-12)
        assert ap("class", c["label"], None)["num_gt"] == c["num_gt"]
    assert ap("mAP", "all", None)["num_gt"] == sum(c["num_gt"] for c in data["per_class"])
    for name, b in data["breakdown"].items():
        row = ap("length", name, None)
        assert row["num_gt"] == b["num_gt"] and row["low_s"] == b["range_s"][0]
        assert (math.isnan(row["high_s"]) and b["range_s"][1] is None) or row["high_s"] == b["range_s"][1]
        for t, m, fn in zip(data["tiou"], b["mAP"], b["fn_rate"], strict=True):
            got = ap("length", name, t)
            assert (m is None and math.isnan(got["ap"])) or got["ap"] == pytest.approx(m, abs=1e-12)
            assert (fn is None and math.isnan(got["fn_rate"])) or got["fn_rate"] == pytest.approx(fn, abs=1e-12)


def test_data_info_csv_has_its_subsets_bins_and_classes(synth, tmp_path):
    data, table = _json_and_csv(tmp_path, "data", "info", synth)
    by = {kind: rows.set_index("name") for kind, rows in table.groupby("table")}
    for name, s in data["subsets"].items():
        row = by["subset"].loc[name]
        assert (row["videos"], row["instances"], row["ambiguous_spans"]) == (s["videos"], s["instances"],
                                                                             s["ambiguous_spans"])  # fmt: skip
        assert row["duration_s"] == pytest.approx(s["duration_s"])
    assert by["length_bin"]["instances"].to_dict() == {b["name"]: b["count"] for b in data["length_bins"]["bins"]}
    assert by["class"]["instances"].to_dict() == data["classes"]


@pytest.mark.parametrize("sweep", [False, True])
def test_memprofile_csv_matches_the_json(sweep, tmp_path):
    args = ["memprofile", "--arch", "vit-tiny", "--frames", "8", "--size", "32"]
    if sweep:
        data, table = _json_and_csv(tmp_path, *args, "--sweep", "frames")
        for wiring, peaks in data["peak_bytes"].items():
            rows = table[table["wiring"] == wiring]
            assert rows["point"].astype(str).tolist() == [str(p) for p in data["points"]]
            assert rows["peak_bytes"].tolist() == peaks and rows["x"].tolist() == pytest.approx(data["x"])
        return
    data, table = _json_and_csv(tmp_path, *args, "--gpu", "gtx-1080-ti")
    assert table["wiring"].tolist() == [r["wiring"] for r in data["wirings"]]
    for (_, row), r in zip(table.iterrows(), data["wirings"], strict=True):
        b = r["estimate"]["bytes"]
        assert row["peak"] == b["peak"] and row["parameters"] == sum(b["parameters"].values())
        assert row["activations_kept"] == sum(b["activations_kept"].values())
        assert row["peak_backward"] == r["estimate"]["phases"]["backward"]["peak"]
        assert (row["verdict"], row["headroom_bytes"]) == (r["gpu"]["verdict"], r["gpu"]["headroom_bytes"])


def test_a_run_writes_its_epochs_table(end_to_end_run):
    """RUN/epochs.csv against metrics.jsonl, summarised here by plain loops."""
    run, _ = end_to_end_run
    table = pd.read_csv(run / "epochs.csv")
    epochs, steps, evals = records(run, "epoch"), records(run, "step"), records(run, "eval")
    assert table["epoch"].tolist() == [e["epoch"] for e in epochs]
    for (_, row), epoch in zip(table.iterrows(), epochs, strict=True):
        mine = [s for s in steps if s["epoch"] == epoch["epoch"]]
        assert row["step"] == epoch["step"] and row["loss"] == pytest.approx(epoch["loss"])
        assert row["guard_fallbacks"] == epoch["guard"]["fallbacks"]
        assert row["lr"] == pytest.approx(mine[-1]["lr"])
        assert row["steps_per_s"] == pytest.approx(sum(s["steps_per_s"] for s in mine) / len(mine))
        assert row["peak_memory_bytes"] == max(s["peak_memory_bytes"] for s in mine)
        evaluated = next(e for e in evals if e["epoch"] == epoch["epoch"])
        assert row["average_mAP"] == pytest.approx(evaluated["average_mAP"])
        assert all(row[f"mAP@{t}"] == pytest.approx(m) for t, m in evaluated["mAP"].items())


def test_a_table_file_must_be_csv_and_is_refused_before_any_work(synth, tmp_path):
    message = one_line_error(invoke("data", "info", synth, "--csv", tmp_path / "info.parquet"))
    assert "pyarrow" in message and "info.parquet" in message and not (tmp_path / "info.parquet").exists()
    assert ".csv" in one_line_error(invoke("memprofile", "--arch", "vit-tiny", "--csv", tmp_path / "m.txt"))
