"""DASL scores: per-chunk ("frame-level") accuracy, per-recording accuracy, balanced accuracy."""

from __future__ import annotations

import numpy as np
import torch

from ssamba.dasl.head import IGNORE
from ssamba.errors import EvaluationError


def dasl_metrics(preds: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int) -> dict:
    """Per-chunk metrics over recordings (``preds``/``labels``: one (n_chunks,) tensor each).

    ``acc``: correct chunks / labelled chunks (frame-level accuracy); ``clip_acc``: mean over
    recordings of each one's accuracy; ``balanced_acc``: mean recall over classes present.
    """
    p = torch.cat([x.flatten() for x in preds]) if preds else torch.zeros(0, dtype=torch.long)
    y = torch.cat([x.flatten() for x in labels]) if labels else torch.zeros(0, dtype=torch.long)
    keep = y != IGNORE
    p, y = p[keep], y[keep]
    if y.numel() == 0:
        raise EvaluationError("no labelled chunks to evaluate")
    correct = (p == y).double()
    per_clip = []
    for a, b in zip(preds, labels, strict=True):
        m = b != IGNORE
        if m.any():
            per_clip.append(float((a[m] == b[m]).double().mean()))
    recalls = [float(correct[y == c].mean()) for c in range(num_classes) if (y == c).any()]
    return {
        "acc": float(correct.mean()),
        "clip_acc": float(np.mean(per_clip)),
        "balanced_acc": float(np.mean(recalls)),
        "chunks": int(y.numel()),
        "recordings": len(per_clip),
    }
