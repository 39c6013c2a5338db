"""ActionFormer's losses: sigmoid focal loss on every valid point, DIoU loss on the positive points' offsets, both
divided by an exponential moving average of the number of positives (steadier than the count of one small batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["detection_losses", "diou_loss_1d", "sigmoid_focal_loss"]


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Elementwise focal loss (RetinaNet) of independent sigmoids; targets in [0, 1] (soft targets allowed).

    loss = α_t · (1 - p_t)^γ · BCE(logit, target), with p_t = p·y + (1 - p)·(1 - y), α_t = α·y + (1 - α)·(1 - y).
    Computed in float32 whatever the input dtype.
    """
    logits, targets = logits.float(), targets.float()
    p = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * bce


def diou_loss_1d(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Distance-IoU loss of segments given as (left, right) distances ≥ 0 from the same point: (N, 2), (N, 2) → (N,).

    loss = 1 - IoU + (centre distance / enclosing length)²; both segments contain the point, so the intersection
    is min(l_p, l_g) + min(r_p, r_g) and the enclosing segment max(l_p, l_g) + max(r_p, r_g). In float32.
    """
    pred, target = pred.float(), target.float()
    left_p, right_p = pred.unbind(-1)
    left_g, right_g = target.unbind(-1)
    intersection = torch.minimum(left_p, left_g) + torch.minimum(right_p, right_g)
    union = (left_p + right_p) + (left_g + right_g) - intersection
    iou = intersection / union.clamp(min=eps)
    enclosing = torch.maximum(left_p, left_g) + torch.maximum(right_p, right_g)
    centre_distance = 0.5 * ((right_p - left_p) - (right_g - left_g))  # centre = point + (right - left) / 2
    return 1.0 - iou + (centre_distance / enclosing.clamp(min=eps)) ** 2


def detection_losses(
    cls_logits: torch.Tensor,
    offsets: torch.Tensor,
    valid: torch.Tensor,
    cls_targets: torch.Tensor,
    reg_targets: torch.Tensor,
    normalizer: torch.Tensor,
    *,
    focal_alpha: float,
    focal_gamma: float,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two sums, each divided by `normalizer`. All points of a batch flattened: cls_logits (B, P, K),
    offsets (B, P, 2), valid (B, P) bool, cls_targets (B, P, K), reg_targets (B, P, 2), normalizer a scalar.
    Returns (cls_loss, reg_loss, num_positives). No host synchronisation (zero positives give reg_loss 0)."""
    num_classes = cls_logits.shape[-1]
    positive = valid & (cls_targets.sum(dim=-1) > 0)  # (B, P)
    # Masks select terms with torch.where, not boolean indexing: indexing would read the mask's count on the host
    # (a device sync per step) and give shapes that depend on data. Unselected terms get zero gradient; negatives'
    # offsets are compared with a dummy (1, 1) so that no 0/0 enters the DIoU of a term that is then dropped.
    targets = cls_targets * (1 - label_smoothing) + label_smoothing / (num_classes + 1)
    focal = sigmoid_focal_loss(cls_logits, targets, focal_alpha, focal_gamma)  # (B, P, K)
    cls_loss = torch.where(valid[..., None], focal, 0.0).sum() / normalizer
    chosen = positive[..., None]
    diou = diou_loss_1d(torch.where(chosen, offsets, 1.0), torch.where(chosen, reg_targets, 1.0))  # (B, P)
    reg_loss = torch.where(positive, diou, 0.0).sum() / normalizer
    return cls_loss, reg_loss, positive.sum()
