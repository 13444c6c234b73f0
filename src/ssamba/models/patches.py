"""Spectrogram patches: the patch embedding, positional-embedding resizing and patch masking.

Token order is frequency-band major: token = f * t_dim + t (the order the official models use).
"""

from __future__ import annotations

import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssamba.constants import FRAME_LENGTH_MS, FRAME_SHIFT_MS, PATCH


class PatchEmbed(nn.Module):
    """16x16 patches of the (B, 1, freq, time) spectrogram image -> (B, f_dim * t_dim, E)."""

    def __init__(self, embed_dim: int, fstride: int, tstride: int):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=PATCH, stride=(fstride, tstride))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image).flatten(2).transpose(1, 2)


def fbank_to_image(fbank: torch.Tensor) -> torch.Tensor:
    """(B, T, mel) -> (B, 1, mel, T): frequency is the image height, time its width."""
    if fbank.dim() != 3:
        raise ValueError(
            f"expected a (batch, frames, mel_bins) fbank, got shape {tuple(fbank.shape)}"
        )
    return fbank.transpose(1, 2).unsqueeze(1)


def patchify(fbank: torch.Tensor, fstride: int = PATCH, tstride: int = PATCH) -> torch.Tensor:
    """Raw patches as regression targets, (B, N, 256); inner index 16 * freq_off + time_off."""
    image = fbank_to_image(fbank)
    return F.unfold(image, kernel_size=PATCH, stride=(fstride, tstride)).transpose(1, 2)


def resize_pos_embed(
    pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """Adapt a (1, fo*to, E) patch positional embedding to a new (f, t) grid (docs/model.md).

    Per axis, time first: centre-crop when the new grid is smaller, bilinear interpolation
    (align_corners=False) otherwise, exactly as the official fine-tuning constructor does.
    """
    (fo, to), (fn, tn) = old_grid, new_grid
    if (fo, to) == (fn, tn):
        return pos
    dim = pos.shape[-1]
    if pos.shape[1] != fo * to:
        raise ValueError(
            f"positional embedding has {pos.shape[1]} patches, grid {old_grid} needs {fo * to}"
        )
    x = pos.reshape(1, fo, to, dim).permute(0, 3, 1, 2)
    if tn < to:
        start = to // 2 - tn // 2
        x = x[:, :, :, start : start + tn]
    else:
        x = F.interpolate(x, size=(fo, tn), mode="bilinear", align_corners=False)
    if fn < fo:
        start = fo // 2 - fn // 2
        x = x[:, :, start : start + fn, :]
    else:
        x = F.interpolate(x, size=(fn, tn), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, fn * tn, dim)


def check_mask_size(num_patches: int, mask_patch: int) -> None:
    # Patch 0 is never masked and the reference loop needs more than M distinct ids: M <= N - 2.
    if not 1 <= mask_patch <= num_patches - 2:
        raise ValueError(
            f"cannot mask {mask_patch} of {num_patches} patches: at most {num_patches - 2} "
            "(patch 0 is never masked); use shorter masks or longer inputs"
        )


def cluster_mask(num_patches: int, t_dim: int, mask_patch: int, rng: random.Random) -> list[int]:
    """SSAST's cluster masking for one clip: c x c blocks (c in 3..5) until > M ids; M smallest."""
    check_mask_size(num_patches, mask_patch)
    side = rng.randrange(3) + 3
    chosen: set[int] = set()
    while len(chosen) <= mask_patch:
        start = rng.randrange(num_patches)
        for i in range(side):
            for j in range(side):
                cand = start + t_dim * i + j
                if 0 < cand < num_patches:
                    chosen.add(cand)
    return sorted(chosen)[:mask_patch]


def random_mask(num_patches: int, mask_patch: int, rng: random.Random) -> list[int]:
    """Uniformly random patches (never patch 0, for parity with cluster masking), sorted."""
    check_mask_size(num_patches, mask_patch)
    return sorted(rng.sample(range(1, num_patches), mask_patch))


def frame_mask(f_dim: int, t_dim: int, mask_patch: int, rng: random.Random) -> list[int]:
    """Mask whole time frames (every frequency patch of a time step) until M patches are masked."""
    num_patches = f_dim * t_dim
    check_mask_size(num_patches, mask_patch)
    ids: list[int] = []
    for t in rng.sample(range(t_dim), t_dim):
        ids.extend(f * t_dim + t for f in range(f_dim) if f * t_dim + t > 0)
        if len(ids) >= mask_patch:
            break
    return sorted(ids[:mask_patch])


def inverse_block_mask(
    grid: tuple[int, int], num_masked: int, block: int, rng: random.Random
) -> list[int]:
    """Inverse block masking (data2vec 2.0, EAT) for one clip: sorted ids of ``num_masked``
    hidden patches.

    What is drawn is what stays VISIBLE: ``block`` x ``block`` squares of patches (``block``
    frequency rows by ``block`` time columns, centred on a random patch, cut at the grid's edges,
    no wrapping) are added until ``N - num_masked`` patches are visible; the last square is cut
    short at that count (in row-major order within it), so every clip hides exactly
    ``num_masked``. The student then sees a few contiguous regions and must predict everything
    between them, which a few visible neighbours cannot give away (unlike random patches at a
    high ratio)."""
    f_dim, t_dim = grid
    n = f_dim * t_dim
    if not 1 <= num_masked <= n - 1:
        raise ValueError(
            f"cannot hide {num_masked} of {n} patches: at least one must be hidden and one "
            "visible; change the mask ratio or the input length"
        )
    if block < 1:
        raise ValueError(f"mask block must be >= 1, got {block}")
    visible: dict[int, None] = {}  # insertion-ordered set
    keep = n - num_masked
    half = block // 2
    while len(visible) < keep:
        top, left = rng.randrange(f_dim) - half, rng.randrange(t_dim) - half
        for f in range(max(top, 0), min(top + block, f_dim)):
            for t in range(max(left, 0), min(left + block, t_dim)):
                if len(visible) < keep:
                    visible.setdefault(f * t_dim + t)
    return [i for i in range(n) if i not in visible]


def draw_mask_index(
    batch: int,
    grid: tuple[int, int],
    mask_patch: int,
    mode: str = "cluster",
    rng: random.Random | None = None,
) -> torch.Tensor:
    """(B, M) long mask indices, one row per clip, drawn from ``rng`` (a seeded random.Random)."""
    rng = rng or random.Random()
    f_dim, t_dim = grid
    n = f_dim * t_dim
    if mode == "cluster":
        rows = [cluster_mask(n, t_dim, mask_patch, rng) for _ in range(batch)]
    elif mode == "random":
        rows = [random_mask(n, mask_patch, rng) for _ in range(batch)]
    elif mode == "frame":
        rows = [frame_mask(f_dim, t_dim, mask_patch, rng) for _ in range(batch)]
    else:
        raise ValueError(f"mask mode must be 'cluster', 'random' or 'frame', got {mode!r}")
    return torch.tensor(rows, dtype=torch.long)


# Centre of a patch column's span of fbank frames, in ms: (PATCH - 1) shifts plus one frame, halved.
PATCH_CENTRE_MS = ((PATCH - 1) * FRAME_SHIFT_MS + FRAME_LENGTH_MS) / 2


def pool_columns(
    patch_tokens: torch.Tensor, grid: tuple[int, int], bands: bool = False
) -> torch.Tensor:
    """Patch tokens ``(B, f_dim * t_dim, E)`` (band-major, no class tokens) -> one float32 vector
    per patch column: the mean over the column's frequency rows ``(B, t_dim, E)``, or with
    ``bands`` the rows side by side ``(B, t_dim, f_dim * E)``, which keeps the spectral layout."""
    f_dim, t_dim = grid
    cols = patch_tokens.reshape(patch_tokens.shape[0], f_dim, t_dim, -1).float()
    if bands:
        return cols.permute(0, 2, 1, 3).flatten(2)
    return cols.mean(dim=1)


def column_times(num_columns: int, tstride: int, offset_frames: int = 0) -> torch.Tensor:
    """Centres (seconds, float64) of patch columns ``0 .. num_columns-1``.

    Each value is computed from its index (no accumulation): ``(10 * a + 87.5) ms`` with
    ``a = offset_frames + t * tstride`` the column's first fbank frame.
    """
    first = offset_frames + torch.arange(num_columns, dtype=torch.float64) * tstride
    return (first * FRAME_SHIFT_MS + PATCH_CENTRE_MS) / 1000.0
