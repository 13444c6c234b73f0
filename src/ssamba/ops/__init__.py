"""Compute kernels. The model code calls :func:`selective_scan` and never picks a backend itself."""

from ssamba.ops.scan import available_backends, selective_scan, selective_scan_ref

__all__ = ["available_backends", "selective_scan", "selective_scan_ref"]
