"""The teacher objective of ``ssamba pretrain --objective teacher`` (data2vec 2.0 / EAT family;
docs/pretraining.md, "The teacher objective").

An EMA copy of the encoder (the teacher) encodes each whole clip once; the mean of its top K
layer outputs, each instance-normalised, gives one target vector per patch. The student sees
``M`` views of the clip, each with most patches hidden by inverse block masking, and a light
convolutional decoder on the patch grid predicts the targets at the hidden patches. The
student's class token also regresses the teacher's mean target over the clip (the utterance
term). Only the student and the decoder learn; after every optimiser update the teacher moves
towards the student (:func:`ema_update`).

Written for this package from the published descriptions (data2vec 2.0, Baevski et al. 2022;
EAT, Chen et al. 2024); the choices that are ours are named where they are made.
"""

from __future__ import annotations

import copy
import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssamba.configs import PretrainConfig
from ssamba.models.patches import inverse_block_mask

DECODER_KERNEL = 3  # the decoder's convolutions see a 3 x 3 neighbourhood of patches
DECODER_GROUPS = 16  # grouped convolutions keep the decoder light (as data2vec 2.0's)
INSTANCE_NORM_EPS = 1e-5
# What the teacher does not need of the model: the masked-patch heads, the mask token and a
# classification head (the teacher never sees a masked input and is never fine-tuned).
STUDENT_ONLY = ("cpredlayer", "gpredlayer", "mask_embed", "mlp_head")


# ---------------------------------------------------------------------------- masks
def view_masks(indices, grid, num_masked: int, views: int, block: int, key: str) -> torch.Tensor:
    """``views`` inverse block masks per clip, (B, views, num_masked): view ``m`` of the clip with
    dataset index ``i`` is drawn from ``random.Random(f"{key}:{i}:{m}")``, so masks depend on the
    clip and the step, never on ranks, workers or the clip's place in a batch."""
    rows = [
        [
            inverse_block_mask(grid, num_masked, block, random.Random(f"{key}:{int(i)}:{m}"))
            for m in range(views)
        ]
        for i in indices
    ]
    return torch.tensor(rows, dtype=torch.long)


# ---------------------------------------------------------------------------- the teacher
def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` without what only the student uses (:data:`STUDENT_ONLY`), in
    eval mode: no drop path, so its targets are a deterministic function of its weights."""
    teacher = copy.deepcopy(model)
    for name in STUDENT_ONLY:
        if getattr(teacher, name, None) is not None:
            delattr(teacher, name)
    teacher.requires_grad_(False)
    return teacher.eval()


def ema_decay_at(step: int, start: float, end: float, anneal_steps: int) -> float:
    """The EMA decay of update ``step`` (0-based): ``start`` rising linearly to ``end`` over
    ``anneal_steps`` updates, then ``end`` (data2vec's schedule). A teacher that follows the
    student quickly at first and ever more slowly gives targets that improve early and then
    stay stable."""
    if step >= anneal_steps:
        return end
    return start + (end - start) * step / anneal_steps


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student``, parameter by parameter (the
    teacher's parameters are a subset of the student's, by name); buffers are copied."""
    params = dict(student.named_parameters())
    for name, t in teacher.named_parameters():
        t.mul_(decay).add_(params[name].detach(), alpha=1 - decay)
    buffers = dict(student.named_buffers())
    for name, b in teacher.named_buffers():
        b.copy_(buffers[name])


def instance_norm(x: torch.Tensor) -> torch.Tensor:
    """(B, N, E) -> each clip's channels normalised over its N positions (zero mean, unit
    variance, no affine): a layer's scale and offset, which drift as the teacher trains, are
    taken out of the targets, so no layer dominates their mean and none collapses to a
    constant unnoticed."""
    return F.instance_norm(x.float().transpose(1, 2), eps=INSTANCE_NORM_EPS).transpose(1, 2)


def top_layers(layers: list[torch.Tensor], num_class_tokens: int, k: int) -> list[torch.Tensor]:
    """The patch tokens of the top ``k`` layer outputs (all of them when there are fewer)."""
    return [y[:, num_class_tokens:] for y in layers[-min(k, len(layers)) :]]


def teacher_targets(layers: list[torch.Tensor], num_class_tokens: int, k: int) -> torch.Tensor:
    """Per-patch targets: the mean of the top ``k`` layer outputs (all of them when there are
    fewer), patch tokens only, each instance-normalised: (B, N, E), float32."""
    top = top_layers(layers, num_class_tokens, k)
    return torch.stack([instance_norm(y) for y in top]).mean(dim=0)


def utterance_targets(layers: list[torch.Tensor], num_class_tokens: int, k: int) -> torch.Tensor:
    """The clip-level target: the mean over patches of the same top ``k`` layer outputs, each
    normalised per patch over its channels (zero mean, unit variance), then averaged: (B, E).

    Not the mean of :func:`teacher_targets`: instance normalisation gives every channel zero
    mean over the clip's patches, so that mean is zero for every clip (tested) and would only
    teach the class token to output nothing. Normalising each patch over its channels instead
    takes out the layers' scale as well but keeps what the clip's patches share."""
    top = top_layers(layers, num_class_tokens, k)
    normed = [F.layer_norm(y.float(), y.shape[-1:], eps=INSTANCE_NORM_EPS) for y in top]
    return torch.stack(normed).mean(dim=0).mean(dim=1)


# ---------------------------------------------------------------------------- the decoder
class PatchDecoder(nn.Module):
    """A light decoder on the (frequency, time) patch grid: ``layers`` x [grouped 3 x 3
    convolution -> LayerNorm -> GELU] (residual after the first), then a linear map to the
    targets' width. Convolutions over the grid let every hidden patch draw on its visible
    neighbours wherever they sit in the sequence, which a decoder that only sees the student's
    token order (a Mamba scan runs frequency band by frequency band) would not; and a small
    decoder leaves the work of understanding the clip to the encoder.

    With ``fills`` (``hide_masked="drop"``), ``mask_token`` fills the positions of the dropped
    patches; without, the student's own outputs cover the grid and there is none (a parameter
    without a gradient would stop DDP)."""

    def __init__(self, dim: int, layers: int, fills: bool = True):
        super().__init__()
        groups = math.gcd(dim, DECODER_GROUPS)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if fills else None
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, DECODER_KERNEL, padding=DECODER_KERNEL // 2, groups=groups)
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(
            nn.LayerNorm(dim, elementwise_affine=False) for _ in range(layers)
        )
        self.proj = nn.Linear(dim, dim)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def fill(self, patches: torch.Tensor, visible: torch.Tensor | None, n: int) -> torch.Tensor:
        """The student's patch outputs laid on all ``n`` grid positions: as they are when the
        hidden patches stayed in the sequence (``visible`` None), else scattered to their ids
        with :attr:`mask_token` everywhere else."""
        if visible is None:
            return patches
        b, _, e = patches.shape
        grid = self.mask_token.to(patches.dtype).expand(b, n, e)
        return grid.scatter(1, visible.unsqueeze(-1).expand(-1, -1, e), patches)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, E) tokens in grid order (token = f * t_dim + t) -> (B, N, E) predictions."""
        x = tokens.transpose(1, 2).unflatten(2, grid)  # (B, E, f_dim, t_dim)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            y = F.gelu(norm(conv(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
            x = y if i == 0 else x + y
        return self.proj(x.flatten(2).transpose(1, 2))


# ---------------------------------------------------------------------------- the objective
def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B, K) of every (B, N, E) sequence: (B, K, E)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class TeacherObjective(nn.Module):
    """The module DDP wraps: one forward = one teacher pass over the clips and one student pass
    over their ``M`` masked views; the teacher (frozen) and the decoder live here beside the
    student ``model``, which is what checkpoints, ``best/`` and ``final/`` save."""

    def __init__(self, model: nn.Module, cfg: PretrainConfig):
        super().__init__()
        self.model = model
        self.teacher = make_teacher(model)
        self.drop = cfg.hide_masked == "drop"
        self.decoder = PatchDecoder(model.config.embed_dim, cfg.decoder_layers, fills=self.drop)
        self.target_layers = cfg.target_layers
        self.utterance_weight = cfg.utterance_weight
        self.decay = (cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_steps)

    def train(self, mode: bool = True):
        """The teacher stays in eval mode whatever the student's mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def targets(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's targets for the whole clips: per patch (B, N, E) and per clip (B, E),
        float32."""
        layers = self.teacher.encode(fbank, return_layers=True).layers
        n_cls, k = self.model.config.num_class_tokens, self.target_layers
        return teacher_targets(layers, n_cls, k), utterance_targets(layers, n_cls, k)

    def student(self, fbank: torch.Tensor, mask_index: torch.Tensor):
        """The student's pooled class token(s) (B * M, E) and its decoder's predictions on the
        whole grid (B * M, N, E) for the views ``mask_index`` (B, M, K)."""
        grid = self.model.input_grid(fbank)
        tokens, visible = self.model.embed_views(fbank, mask_index, drop=self.drop)
        encoded = self.model.encoder(tokens)
        n_cls = self.model.config.num_class_tokens
        # the class token(s): what ``pool="cls"`` reads (SSAST: its cls and dist tokens averaged)
        pooled = encoded[:, :n_cls].mean(dim=1)
        patches = self.decoder.fill(encoded[:, n_cls:], visible, grid[0] * grid[1])
        return pooled, self.decoder(patches, grid)

    def losses(self, pooled, predicted, targets, mask_index) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean squared errors, float32: the decoder's predictions at the hidden patches against
        the per-patch targets (frame), and the pooled class token against the clip's target
        (utterance). ``targets``: :meth:`targets`' pair; every view predicts its clip's."""
        per_patch, per_clip = (t.repeat_interleave(mask_index.shape[1], dim=0) for t in targets)
        hidden = mask_index.flatten(0, 1)  # (B * M, K)
        frame = F.mse_loss(_gather(predicted.float(), hidden), _gather(per_patch, hidden))
        utterance = F.mse_loss(pooled.float(), per_clip)
        return frame, utterance

    def forward(self, fbank: torch.Tensor, mask_index: torch.Tensor):
        targets = self.targets(fbank)
        pooled, predicted = self.student(fbank, mask_index)
        frame, utterance = self.losses(pooled, predicted, targets, mask_index)
        loss = frame + self.utterance_weight * utterance
        parts = {"loss": loss.detach(), "frame_loss": frame.detach(),
                 "utterance_loss": utterance.detach()}  # fmt: skip
        return loss, parts

    def decay_at(self, step: int) -> float:
        return ema_decay_at(step, *self.decay)

    def update_teacher(self, step: int) -> None:
        """After the optimiser update of step ``step``: the EMA step of the teacher."""
        ema_update(self.teacher, self.model, self.decay_at(step))


__all__ = [
    "DECODER_GROUPS",
    "DECODER_KERNEL",
    "INSTANCE_NORM_EPS",
    "STUDENT_ONLY",
    "PatchDecoder",
    "TeacherObjective",
    "ema_decay_at",
    "ema_update",
    "instance_norm",
    "make_teacher",
    "teacher_targets",
    "top_layers",
    "utterance_targets",
    "view_masks",
]
