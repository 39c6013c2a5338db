"""The frames-input TAL loop: time axes, padding masks, schedule, frozen vs end-to-end updates, predictions."""

from __future__ import annotations

import json

import pytest
import torch

from re2tal_cli.data.synth import SynthConfig, generate
from re2tal_cli.errors import BadInputError
from re2tal_cli.evaluate import evaluate
from re2tal_cli.localizers.actionformer import ActionFormer
from re2tal_cli.models.registry import get_arch
from re2tal_cli.train.tal import (
    TALModel,
    TALTrainConfig,
    _feature_mask,
    lr_factor,
    positions_to_seconds,
    predict_dataset,
    seconds_to_positions,
    train_tal,
    training_set,
)
from tests.localizers.helpers import tiny_config

# the tiny localizer with the release's dropout, path drop and two embedding convs
SMALL_LOCALIZER = tiny_config(
    num_embed_convs=2, dropout=0.1, path_drop=0.1, regression_ranges=((0, 4), (4, 8), (8, 1e4))
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(
        videos=4, classes=2, size=32, min_action=1.0, max_action=4.0, actions_per_video=(1, 2), clips_per_class=1
    )
    generate(root, cfg)
    return root


def make_model(arch: str = "swin3d-tiny", freeze: bool = False) -> TALModel:
    spec = get_arch(arch)
    backbone = spec.create(num_classes=0)
    return TALModel(backbone, ActionFormer(backbone.out_channels, 2, SMALL_LOCALIZER), spec.input, freeze)


def test_positions_are_feature_centres():
    # 10 fps, 2 frames per position: feature 0 covers [0, 0.2) s, centred at 0.1 s = position 0
    t0 = 3.0
    positions = seconds_to_positions(torch.tensor([3.1, 3.3, 3.0]), t0, 10.0, 2)
    assert positions.tolist() == pytest.approx([0, 1, -0.5], abs=1e-5)
    p = torch.tensor([0.0, 2.25, 7.5])
    assert positions_to_seconds(seconds_to_positions(p, t0, 25.0, 4), t0, 25.0, 4).tolist() == pytest.approx(p.tolist())


def test_feature_mask_marks_repeated_tail_frames_as_padding():
    times = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    # the video of row 0 ends at frame 4: feature 2 (frames 4, 5) holds one real frame, feature 3 none
    assert _feature_mask(times, 2).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_lr_warms_up_then_decays_to_zero():
    values = [lr_factor(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:], strict=False))
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)


def test_config_rejects_bad_values():
    with pytest.raises(BadInputError, match="num_frames"):
        TALTrainConfig(num_frames=0)
    with pytest.raises(BadInputError, match="lr"):
        TALTrainConfig(lr=0.0)


def test_window_must_fit_the_pyramid(synth):
    model = make_model()  # temporal stride 2 × downsampling 4 = 8 frames per coarsest position
    with pytest.raises(BadInputError, match="multiple of 8"):
        training_set(synth, model, TALTrainConfig(num_frames=60, size=32))


@pytest.mark.parametrize("freeze", [False, True], ids=["end-to-end", "frozen"])
def test_training_updates_what_it_should(synth, freeze):
    model = make_model(freeze=freeze)
    config = TALTrainConfig(num_frames=64, size=32, epochs=2, batch_size=2, freeze_backbone=freeze)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    localizer_before = {k: v.clone() for k, v in model.localizer.state_dict().items()}
    steps = []
    stats = list(train_tal(model, training_set(synth, model, config), config, on_step=lambda s, n, v: steps.append(s)))
    assert [s.epoch for s in stats] == [1, 2] and steps == list(range(1, 2 * stats[0].steps + 1))
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in stats)
    backbone_changed = [not torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone_before.items()]
    assert any(backbone_changed) != freeze
    assert any(not torch.equal(v, model.localizer.state_dict()[k]) for k, v in localizer_before.items())
    if freeze:
        assert not model.backbone.training and model.localizer.training


def test_predictions_are_seconds_inside_each_video_and_evaluate(synth, tmp_path):
    model = make_model()
    config = TALTrainConfig(num_frames=64, size=32, epochs=1)
    list(train_tal(model, training_set(synth, model, config), config))
    classes = training_set(synth, model, config).classes
    results = predict_dataset(model, synth, classes, config, subset="test")
    annotations = json.loads((synth / "annotations.json").read_text())["database"]
    assert set(results) == {v for v, a in annotations.items() if a["subset"] == "test"}
    for vid, detections in results.items():
        assert detections, f"no detection for {vid}"
        for d in detections:
            assert 0.0 <= d["segment"][0] < d["segment"][1] <= annotations[vid]["duration"] + 1e-6
            assert d["label"] in classes and 0.0 <= d["score"] <= 1.0
    (tmp_path / "predictions.json").write_text(json.dumps({"results": results}))
    result = evaluate(synth, tmp_path / "predictions.json", protocol="thumos", subset="test")
    assert result.mAP.shape == (5,) and (result.mAP >= 0).all()
