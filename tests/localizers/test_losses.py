import math

import torch

from re2tal_cli.localizers.losses import detection_losses, diou_loss_1d, sigmoid_focal_loss

LN2 = math.log(2.0)


def test_focal_loss_hand_values():
    logits = torch.tensor([0.0, 0.0, math.log(3.0), 0.0, math.log(3.0)])
    targets = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0])
    expected = torch.tensor(
        [
            0.25 * 0.5**2 * LN2,  # p = 0.5, positive: α = 0.25
            0.75 * 0.5**2 * LN2,  # negative: 1 - α
            0.25 * 0.25**2 * -math.log(0.75),  # p = 0.75, positive: (1 - 0.75)² · -log 0.75
            0.5 * 0.5**2 * LN2,  # soft target 0.5: α_t = 0.5, p_t = 0.5, BCE = log 2
            0.75 * 0.75**2 * -math.log(0.25),  # p = 0.75, negative: p_t = 0.25
        ]
    )
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), expected)
    assert sigmoid_focal_loss(logits.bfloat16(), targets).dtype == torch.float32


def test_diou_loss_hand_values():
    pred = torch.tensor([[1.0, 3.0], [0.0, 1.0], [2.0, 2.0], [5.0, 0.0]])
    target = torch.tensor([[2.0, 2.0], [2.0, 2.0], [2.0, 2.0], [0.0, 5.0]])
    # 1: ∩ 1 + 2 = 3, ∪ 4 + 4 - 3 = 5, IoU 0.6; centres +1 vs 0, enclosing 2 + 3 = 5 → 1 - 0.6 + (1/5)² = 0.44
    # 2: ∩ 1, ∪ 4, IoU 0.25; centres +0.5 vs 0, enclosing 4 → 0.75 + (0.5/4)² = 0.765625
    # 3: identical → 0.   4: disjoint halves: IoU 0, centres -2.5 vs +2.5, enclosing 10 → 1 + 0.25
    torch.testing.assert_close(diou_loss_1d(pred, target), torch.tensor([0.44, 0.765625, 0.0, 1.25]))


def test_detection_losses_normalise_and_mask():
    logits = torch.zeros(1, 4, 2)  # p = 0.5 everywhere
    cls_targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    valid = torch.tensor([[True, True, True, False]])  # the 4th point is padding: no loss at all
    offsets = torch.tensor([[[1.0, 3.0], [9.0, 9.0], [2.0, 2.0], [9.0, 9.0]]])
    reg_targets = torch.tensor([[[2.0, 2.0], [0.0, 0.0], [2.0, 2.0], [0.0, 0.0]]])
    cls, reg, positives = detection_losses(
        logits,
        offsets,
        valid,
        cls_targets,
        reg_targets,
        torch.tensor(4.0),
        focal_alpha=0.25,
        focal_gamma=2.0,
        label_smoothing=0.0,
    )
    assert positives == 2
    # 2 positive and 4 negative (point, class) entries over valid points
    torch.testing.assert_close(cls, torch.tensor((2 * 0.25 + 4 * 0.75) * 0.25 * LN2 / 4))
    torch.testing.assert_close(reg, torch.tensor((0.44 + 0.0) / 4))


def test_label_smoothing_moves_targets_toward_one_over_k_plus_one():
    logits = torch.zeros(1, 1, 3)
    targets = torch.tensor([[[1.0, 0.0, 0.0]]])
    smoothed = torch.tensor([[1 * 0.8 + 0.2 / 4, 0.2 / 4, 0.2 / 4]])
    args = (torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool), targets, torch.ones(1, 1, 2), torch.tensor(1.0))
    cls, _, _ = detection_losses(logits, *args, focal_alpha=0.25, focal_gamma=2.0, label_smoothing=0.2)
    torch.testing.assert_close(cls, sigmoid_focal_loss(logits[0], smoothed).sum())
