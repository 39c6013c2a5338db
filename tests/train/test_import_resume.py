"""An imported ActionFormer-release checkpoint trains further (`train-tal --resume`) and evaluates like any run."""

import json

import torch

from re2tal_cli.train.run import RunDir
from re2tal_cli.train_tal import model_from_run
from tests.cli.test_import import release_state, training_checkpoint
from tests.train.conftest import invoke, ok


def test_imported_run_resumes_training_and_evaluates(features_run, synth, recipe, tmp_path):
    run, _ = features_run
    source, _, _ = model_from_run(RunDir(run))
    src = tmp_path / "epoch_003.pth.tar"
    state = release_state(source.localizer.state_dict())
    training_checkpoint(src, state, state)
    feats, out = run.parent / "feats", tmp_path / "imported"
    result = ok(invoke("import", src, "--out", out, "--recipe", recipe, "--data", synth, "--features", feats,
                       "--set", "train.epochs=1", "--json"))  # fmt: skip
    assert json.loads(result.stdout)["classes"] == json.loads((run / "checkpoints/last/meta.json").read_text())[
        "model"]["classes"]  # fmt: skip
    imported, _, _ = model_from_run(RunDir(out))
    feats_in, mask = torch.randn(1, source.localizer.in_channels, 64), torch.ones(1, 64, dtype=torch.bool)
    a, b = imported.localizer(feats_in, mask), source.localizer(feats_in, mask)
    assert all(torch.equal(x, y) for x, y in zip(a.cls_logits + a.offsets, b.cls_logits + b.offsets, strict=True))

    summary = json.loads(ok(invoke("train-tal", "--out", out, "--resume", "--json")).stdout)
    assert summary["final"]["epoch"] == 1 and (out / "predictions.json").is_file()
    ok(invoke("evaluate", synth, out, "--protocol", "thumos", "--json"))


def test_import_with_evaluate_writes_the_predictions_the_source_run_would(features_run, synth, recipe, tmp_path):
    """`--evaluate`: the imported detector on the validation subset gives the source run's own evaluation (same
    weights, features and post-processing), and `re2tal evaluate` reads its predictions."""
    run, summary = features_run
    source, _, meta = model_from_run(RunDir(run))  # the best checkpoint
    src = tmp_path / "best.pth.tar"
    state = release_state(source.localizer.state_dict())
    training_checkpoint(src, state, state)
    out = tmp_path / "imported"
    result = json.loads(ok(invoke("import", src, "--out", out, "--recipe", recipe, "--data", synth, "--features",
                                  run.parent / "feats", "--evaluate", "--json")).stdout)  # fmt: skip
    assert result["average_mAP"] == summary["best"]["average_mAP"] and meta["epoch"] == summary["best"]["epoch"]
    evaluated = json.loads(ok(invoke("evaluate", synth, out, "--protocol", "thumos", "--json")).stdout)
    assert evaluated["average_mAP"] == result["average_mAP"]
    assert "give --data" in invoke("import", src, "--out", tmp_path / "x", "--recipe", recipe, "--evaluate").stderr
