"""A tiny ActionFormer memorises a handful of synthetic sequences well enough that predict() finds every segment."""

import torch

from re2tal_cli.localizers import ActionFormer
from re2tal_cli.localizers.postprocess import segment_iou
from tests.localizers.helpers import tiny_config

# per sequence: (start, end, class); the feature of class c is 1 on steps start..end (inclusive), so the segment
# [start, end] runs from the centre of its first step to the centre of its last (the module's coordinate convention)
ACTIONS = [
    [(5, 17, 0), (30, 34, 1)],
    [(10, 40, 1)],
    [(2, 8, 0), (44, 60, 0)],
    [(20, 26, 1), (50, 53, 0)],
]


def _synthetic(num_channels=4, length=64):
    generator = torch.Generator().manual_seed(1)
    feats, segments, labels = [], [], []
    for actions in ACTIONS:
        x = 0.1 * torch.randn(num_channels, length, generator=generator)
        for start, end, label in actions:
            x[label, start : end + 1] += 1.0
        feats.append(x)
        segments.append(torch.tensor([[float(s), float(e)] for s, e, _ in actions]))
        labels.append(torch.tensor([label for *_, label in actions]))
    return torch.stack(feats), segments, labels


def test_tiny_model_overfits_and_predict_recovers_the_segments():
    feats, segments, labels = _synthetic()
    mask = torch.ones(feats.shape[0], feats.shape[2], dtype=torch.bool)
    model = ActionFormer(4, 2, tiny_config(init_loss_normalizer=10.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(200):
        losses = model.loss(model(feats, mask), segments, labels)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    assert losses["loss"].item() < 0.1

    model.eval()
    for detections, video_segments, video_labels in zip(
        model.predict(model(feats, mask)), segments, labels, strict=True
    ):
        for segment, label in zip(video_segments, video_labels, strict=True):
            same_class = detections.labels == label
            best = detections.segments[same_class][: len(video_segments)]  # as many guesses as there are actions
            assert segment_iou(segment[None], best).max() > 0.7, (segment, detections)
            assert detections.scores[same_class][0] > 0.5
