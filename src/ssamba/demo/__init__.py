"""Demo data built offline from real audio: keywords (TTS), instruments (soundfonts), speakers
(hedgewars voice packs) and an unlabelled pretraining mix. See :mod:`.builders`, :mod:`.sources`
and ``ssamba data --help``.

Heavy modules are imported lazily so ``import ssamba.demo`` stays cheap.
"""

from __future__ import annotations

__all__ = [
    "build_instruments",
    "build_keywords",
    "build_pretrain_mix",
    "build_speakers",
    "format_summary",
]


def __getattr__(name: str):
    if name in __all__:
        from . import builders

        return getattr(builders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
