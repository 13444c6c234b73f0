"""``ssamba bench``: time and peak memory of SSAMBA vs SSAST as the input gets longer.

See docs/performance.md and benchmarks/README.md.

The paper's efficiency claim (SSAMBA-tiny ~92.7 % faster and ~95.4 % less memory than SSAST-tiny
at ~22k tokens) comes from a sweep of input length at a fixed batch size: fine-tuning models
(527-class head, stride 16), eval mode, no gradients. This package reproduces that sweep:

* every (model, batch, tokens) point runs in a fresh worker process (``python -m
  ssamba.bench.worker SPEC``), so the peak memory of a point is its own: on the CPU the worker's
  peak RSS (``ru_maxrss``), also split into the baseline after model creation and a small priming
  pass (weights, JIT-compiled kernels, thread pools) and the increment the point adds on top; on
  CUDA ``torch.cuda.max_memory_allocated``;
* the sweep is interleaved (for each length, every model in turn), so a CPU whose speed drifts
  over minutes hurts all models alike, and a ``max_minutes`` budget covers the same lengths for
  every model;
* a model's sweep stops at its first failure: ``oom`` (MemoryError, an allocator "out of memory"
  error, ``torch.cuda.OutOfMemoryError``, the address-space cap, the worker killed by SIGKILL),
  ``timeout``, ``error`` (anything else), ``budget`` (cut by ``max_minutes``); the other models go
  on;
* each SSAMBA point records the scan backend that ran (``scan_backend``).

Tokens are stride-16 patch tokens: 8 frequency patches per time column, so ``tokens`` must be a
multiple of 8 and the input has ``frames = tokens // 8 * 16`` frames. The model is built for that
many frames, so no positional-embedding resize is timed.

Modules, by concern: :mod:`~ssamba.bench.spec` (model names, token counts, CSV fields),
:mod:`~ssamba.bench.machine` (CPU, memory, GPU, versions, git commit),
:mod:`~ssamba.bench.worker` (one point in its own process), :mod:`~ssamba.bench.sweep`
(:func:`run_bench`), :mod:`~ssamba.bench.report` (files, :func:`summarize`,
:func:`markdown_report`), :mod:`~ssamba.bench.plotting` (:func:`plot`).

The names below load on first use (PEP 562): ``import ssamba.bench`` costs nothing, and
``python -m ssamba.bench.worker`` does not import its own module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# name -> module that defines it
_PUBLIC = {
    "CSV_FIELDS": "ssamba.bench.spec",
    "DEFAULT_FIT_MIN_TOKENS": "ssamba.bench.spec",
    "DEFAULT_TOKENS": "ssamba.bench.spec",
    "FREQ_PATCHES": "ssamba.bench.spec",
    "NUM_CLASSES": "ssamba.bench.spec",
    "SCAN_BACKENDS": "ssamba.bench.spec",
    "STATUSES": "ssamba.bench.spec",
    "default_models": "ssamba.bench.spec",
    "frames_for_tokens": "ssamba.bench.spec",
    "parse_model": "ssamba.bench.spec",
    "machine_info": "ssamba.bench.machine",
    "is_oom": "ssamba.bench.worker",
    "measure_point": "ssamba.bench.worker",
    "run_bench": "ssamba.bench.sweep",
    "break_even": "ssamba.bench.report",
    "fit_exponent": "ssamba.bench.report",
    "load_meta": "ssamba.bench.report",
    "load_points": "ssamba.bench.report",
    "markdown_report": "ssamba.bench.report",
    "summarize": "ssamba.bench.report",
    "write_results": "ssamba.bench.report",
    "plot": "ssamba.bench.plotting",
}

__all__ = [
    "CSV_FIELDS",
    "DEFAULT_FIT_MIN_TOKENS",
    "DEFAULT_TOKENS",
    "FREQ_PATCHES",
    "NUM_CLASSES",
    "SCAN_BACKENDS",
    "STATUSES",
    "break_even",
    "default_models",
    "fit_exponent",
    "frames_for_tokens",
    "is_oom",
    "load_meta",
    "load_points",
    "machine_info",
    "markdown_report",
    "measure_point",
    "parse_model",
    "plot",
    "run_bench",
    "summarize",
    "write_results",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ssamba.bench.machine import machine_info
    from ssamba.bench.plotting import plot
    from ssamba.bench.report import (
        break_even,
        fit_exponent,
        load_meta,
        load_points,
        markdown_report,
        summarize,
        write_results,
    )
    from ssamba.bench.spec import (
        CSV_FIELDS,
        DEFAULT_FIT_MIN_TOKENS,
        DEFAULT_TOKENS,
        FREQ_PATCHES,
        NUM_CLASSES,
        SCAN_BACKENDS,
        STATUSES,
        default_models,
        frames_for_tokens,
        parse_model,
    )
    from ssamba.bench.sweep import run_bench
    from ssamba.bench.worker import is_oom, measure_point


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'ssamba.bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
