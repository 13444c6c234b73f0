"""The kernels' input contract, checked once for every fused backend."""

from __future__ import annotations


def check_scan_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise ValueError unless the tensors have the layout of :mod:`ssamba.ops.scan`."""
    nb, length, n_chan = u.shape
    n_state = A.shape[1]
    if delta.shape != u.shape or (z is not None and z.shape != u.shape):
        raise ValueError("delta and z must have the shape of u (batch, length, channels)")
    if A.shape != (n_chan, n_state):
        raise ValueError(f"A must be (channels, state) = ({n_chan}, N), got {tuple(A.shape)}")
    if B.shape != (nb, length, n_state) or C.shape != (nb, length, n_state):
        raise ValueError("B and C must be (batch, length, state)")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (n_chan,):
            raise ValueError(f"{name} must be (channels,)")


def last_dim_contiguous(t):
    """``t`` itself when its last dimension is contiguous, else a contiguous copy: the Triton
    kernels take the other strides, so views (a channel slice of in_proj's output) are read in
    place."""
    return t if t.stride(-1) == 1 else t.contiguous()
