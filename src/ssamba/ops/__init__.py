"""Compute kernels. The model code calls these entry points and never picks a backend itself:
the scan (:func:`selective_scan`, :func:`selective_scan_many`) and the fused conv + silu
(:func:`conv1d_silu`, :func:`conv1d_silu_pair`, :func:`conv1d_silu_window`) dispatch on the
tensors' device, ``SSAMBA_SCAN`` or a ``backend`` argument; :func:`scan_backends` says which
backend runs where, and why not."""

from ssamba.ops.conv import (
    causal_depthwise_conv1d,
    conv1d_silu,
    conv1d_silu_pair,
    conv1d_silu_window,
)
from ssamba.ops.scan import (
    BACKENDS,
    available_backends,
    resolve_backend,
    scan_backends,
    selective_scan,
    selective_scan_many,
    selective_scan_ref,
)

__all__ = [
    "BACKENDS",
    "available_backends",
    "causal_depthwise_conv1d",
    "conv1d_silu",
    "conv1d_silu_pair",
    "conv1d_silu_window",
    "resolve_backend",
    "scan_backends",
    "selective_scan",
    "selective_scan_many",
    "selective_scan_ref",
]
