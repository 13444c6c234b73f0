"""Bridge to mamba_ssm's CUDA selective scan, in this package's (batch, length, channels) layout.

Importing this module raises ImportError where mamba_ssm is not installed; ``ssamba.ops.scan``
uses that to decide whether the ``cuda`` backend exists.
"""

from __future__ import annotations

from mamba_ssm.ops.selective_scan_interface import selective_scan_fn


def selective_scan_cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """Same contract as :func:`ssamba.ops.scan.selective_scan_ref`, computed by mamba_ssm.

    mamba_ssm wants u, delta, z as (batch, channels, length) and B, C as (batch, state, length);
    the transposes are views, and mamba_ssm makes what it needs contiguous itself.
    """

    def channels_first(t):
        return None if t is None else t.transpose(1, 2)

    y = selective_scan_fn(
        channels_first(u),
        channels_first(delta),
        A,
        channels_first(B),
        channels_first(C),
        D=D,
        z=channels_first(z),
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=False,
    )
    return y.transpose(1, 2)
