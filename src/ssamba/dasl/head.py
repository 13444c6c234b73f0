"""The per-chunk head: patch tokens averaged per chunk of time, then classified.

The encoder runs on the whole recording; each patch column ``t`` (fbank frames
``[t * tstride, t * tstride + 16)``) is assigned to the chunk (``chunk_seconds`` long, 1 s by
default) that contains its centre in time (:func:`ssamba.models.patches.column_times`); the patch
tokens of every frequency row of the columns of a chunk are averaged and ``model.mlp_head`` is
applied to each chunk. Class tokens are never pooled. A chunk that no column centre falls in
(only possible when chunks are shorter than the column spacing, e.g. 0.1 s chunks at stride 16)
takes the column whose centre is nearest to the chunk's centre.

The reference (SSAMBA repo, ``finetuningavgtok_1sec`` in ``src/models/both_models.py``) instead
cuts the token sequence *including the class token* into 60 runs of ``len // 60`` consecutive
tokens. Since tokens are ordered frequency-band-major (token = f * t_dim + t), those runs are
pieces of frequency rows rather than seconds (and the class token lands in the first one, a few
trailing tokens in none). We pool by time column, which is what the task means.
"""

from __future__ import annotations

import math

import torch

from ssamba.constants import FRAMES_PER_SECOND
from ssamba.errors import UsageError
from ssamba.models.patches import column_times

IGNORE = -100  # label of chunks past the end of a shorter recording


def default_num_chunks(frames: int, chunk_seconds: float = 1.0) -> int:
    """The duration of ``frames`` fbank frames in chunks, rounded (at least 1)."""
    return max(1, round(frames / FRAMES_PER_SECOND / chunk_seconds))


def chunk_assignment(
    t_dim: int, tstride: int, n_chunks: int, chunk_seconds: float = 1.0
) -> torch.Tensor:
    """(n_chunks, t_dim) averaging weights: row ``c`` is uniform over the columns of chunk ``c``.

    Column ``t`` belongs to chunk ``floor(centre_t / chunk_seconds)``; columns past the last chunk
    are dropped; a chunk with no column takes the column nearest to its centre.
    """
    if chunk_seconds <= 0:
        raise UsageError(f"chunk_seconds must be > 0, got {chunk_seconds}")
    if n_chunks < 1:
        raise UsageError(f"n_chunks must be >= 1, got {n_chunks}")
    centres = column_times(t_dim, tstride)
    chunk = torch.floor(centres / chunk_seconds).long()
    weights = torch.zeros(n_chunks, t_dim, dtype=torch.float64)
    inside = chunk < n_chunks
    weights[chunk[inside], torch.arange(t_dim)[inside]] = 1.0
    for c in (weights.sum(1) == 0).nonzero().flatten().tolist():
        mid = (c + 0.5) * chunk_seconds
        weights[c, int(torch.argmin((centres - mid).abs()))] = 1.0
    return weights / weights.sum(1, keepdim=True)


def pool_chunks(enc, tstride: int, n_chunks: int, chunk_seconds: float = 1.0) -> torch.Tensor:
    """Average the patch tokens of an :class:`~ssamba.models.model.EncoderOutput` per chunk.

    Returns (B, n_chunks, E): the mean over every patch (all frequency rows) whose column lies in
    the chunk. ``enc.class_tokens`` is not used.
    """
    f_dim, t_dim = enc.grid
    tokens = enc.patch_tokens
    b, n, e = tokens.shape
    if n != f_dim * t_dim:
        raise UsageError(f"{n} patch tokens do not fill the grid {f_dim}x{t_dim}")
    columns = tokens.reshape(b, f_dim, t_dim, e).mean(dim=1)  # (B, t_dim, E)
    w = chunk_assignment(t_dim, tstride, n_chunks, chunk_seconds)
    return torch.einsum("ct,bte->bce", w.to(columns.dtype).to(columns.device), columns)


def chunk_logits(
    model, fbank: torch.Tensor, chunk_seconds: float = 1.0, n_chunks: int | None = None
) -> torch.Tensor:
    """Per-chunk class logits (B, n_chunks, C) of an AudioModel with a classification head.

    ``fbank`` (B, T, 128) is the whole recording; ``n_chunks`` defaults to its duration in chunks
    (:func:`default_num_chunks`).
    """
    if model.mlp_head is None:
        raise UsageError("the model has no classification head: build it with num_classes > 0")
    if n_chunks is None:
        n_chunks = default_num_chunks(fbank.shape[1], chunk_seconds)
    enc = model.encode(fbank)
    pooled = pool_chunks(enc, model.config.tstride, n_chunks, chunk_seconds)
    return model.mlp_head(pooled)


def chunk_labels(
    second_labels: list[int], n_chunks: int, chunk_seconds: float = 1.0
) -> torch.Tensor:
    """(n_chunks,) long: the label of the second containing each chunk's centre (IGNORE past the
    end of ``second_labels``)."""
    out = torch.full((n_chunks,), IGNORE, dtype=torch.long)
    for c in range(n_chunks):
        s = math.floor((c + 0.5) * chunk_seconds)
        if s < len(second_labels):
            out[c] = second_labels[s]
    return out
