"""The masked-patch objectives exactly as the reference computes them (docs/pretraining.md)."""

from __future__ import annotations

import torch


def info_nce(targets: torch.Tensor, predictions: torch.Tensor):
    """Per clip, S = targets @ predictions^T (M x M); negatives are the clip's other masked patches.

    Returns (accuracy, loss) averaged over all B * M masked patches. Accuracy follows the
    reference: softmax over predictions (last dim) first, then argmax over targets per column.
    """
    scores = torch.bmm(targets, predictions.transpose(1, 2))  # (B, M, M)
    log_probs = torch.log_softmax(scores, dim=-1)
    loss = -log_probs.diagonal(dim1=1, dim2=2).mean()
    with torch.no_grad():
        hits = scores.softmax(dim=-1).argmax(dim=1)
        arange = torch.arange(scores.shape[1], device=scores.device)
        accuracy = (hits == arange).float().mean()
    return accuracy, loss


def masked_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and raw masked patches."""
    return (predictions - targets).pow(2).mean()
