"""What one point of the sweep is: model names, token counts, the fields a point records."""

from __future__ import annotations

from collections.abc import Iterable

from ssamba.constants import NUM_MEL_BINS, PATCH
from ssamba.models.config import SIZES

FREQ_PATCHES = (NUM_MEL_BINS - PATCH) // PATCH + 1  # stride-16 patches per time column (8)
NUM_CLASSES = 527  # the AudioSet fine-tuning head the reference measured with
DEFAULT_TOKENS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_FIT_MIN_TOKENS = 1024
STATUSES = ("ok", "oom", "timeout", "error", "budget")
MODES = ("inference", "train")
DEVICES = ("cpu", "cuda")
# Scan backends a run may force (SSAMBA_SCAN); which ones run where is ssamba.ops.scan's call.
SCAN_BACKENDS = ("reference", "cpu", "cuda", "triton", "torch")

# What a sweep writes into its --out folder (and all it writes: --overwrite removes these only)
CSV_FILE, JSON_FILE, PLOT_FILE = "bench.csv", "bench.json", "bench.png"
RESULT_FILES = (CSV_FILE, JSON_FILE, PLOT_FILE)

CSV_FIELDS = (
    "model",
    "arch",
    "attention",
    "batch",
    "tokens",
    "frames",
    "mode",
    "device",
    "status",
    "time_s",
    "time_min_s",
    "time_per_sample_s",
    "peak_mib",
    "baseline_mib",
    "increment_mib",
    "peak_rss_mib",
    "memory_kind",
    "repeats",
    "warmup",
    "scan_backend",
    "threads",
    "numba_threads",
    "params",
    "depth",
    "startup_s",
    "wall_s",
    "load_1m",
    "max_memory_gb",
    "torch_version",
    "error",
)


def frames_for_tokens(tokens: int) -> int:
    """Input frames giving ``tokens`` stride-16 patch tokens (8 frequency patches per column)."""
    if tokens < FREQ_PATCHES or tokens % FREQ_PATCHES:
        raise ValueError(f"tokens must be a positive multiple of {FREQ_PATCHES}, got {tokens}")
    frames = tokens // FREQ_PATCHES * PATCH
    assert (frames - PATCH) // PATCH + 1 == tokens // FREQ_PATCHES
    return frames


def parse_model(name: str, size: str = "tiny") -> dict:
    """``ssamba_tiny`` / ``ssast_small_explicit`` / ``ssast`` (+ ``size``) -> a model spec.

    Returns ``{"name", "preset", "arch", "attention", "overrides"}``; ``name`` is canonical
    (``<arch>_<size>[_explicit]``). SSAST takes an ``_explicit`` (the reference's materialised
    N x N attention) or ``_sdpa`` (ours, the default: torch's scaled_dot_product_attention,
    flash or memory-efficient kernels on CUDA) suffix.
    """
    parts = name.strip().lower().split("_")
    arch, rest = parts[0], parts[1:]
    if arch not in ("ssamba", "ssast"):
        raise ValueError(
            f"unknown model {name!r}: expected ssamba_<size> or ssast_<size>[_explicit]"
        )
    model_size = rest.pop(0) if rest and rest[0] in SIZES else size
    if model_size not in SIZES:
        raise ValueError(f"unknown size {model_size!r}; choose one of {', '.join(SIZES)}")
    attention = rest.pop(0) if rest and rest[0] in ("explicit", "sdpa") else None
    if rest:
        raise ValueError(f"cannot parse model name {name!r}")
    if attention is not None and arch != "ssast":
        raise ValueError(f"{name!r}: only SSAST models take an attention suffix")
    canonical, overrides = f"{arch}_{model_size}", {}
    if arch == "ssast":
        attention = attention or "sdpa"
        overrides["attention"] = attention
        if attention == "explicit":
            canonical += "_explicit"
    return {
        "name": canonical,
        "preset": f"{arch}_{model_size}",
        "arch": arch,
        "attention": attention or "",
        "overrides": overrides,
    }


def default_models(size: str = "tiny") -> list[str]:
    """SSAMBA, SSAST (sdpa) and SSAST with explicit attention, of one size."""
    return [f"ssamba_{size}", f"ssast_{size}", f"ssast_{size}_explicit"]


def int_list(text: str | int | Iterable[int], what: str) -> list[int]:
    """``"128,256"``, ``128`` or ``[128, 256]`` -> positive integers (ValueError names ``what``)."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, str):
        items = [t for t in text.replace(" ", "").split(",") if t]
        try:
            values = [int(t) for t in items]
        except ValueError:
            raise ValueError(f"{what}: expected comma-separated integers, got {text!r}") from None
    else:
        values = [int(t) for t in text]
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{what}: expected positive integers, got {text!r}")
    return values
