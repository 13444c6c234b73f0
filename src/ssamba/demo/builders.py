"""Deterministic builders of the demo's data sets from real offline audio (see :mod:`.sources`).

Each builder writes 16 kHz mono 16-bit WAVs under ``out`` and CSV manifests ``path,label,split``
with paths relative to ``out`` (readable by :func:`ssamba.data.read_manifest`):

- ``manifest.csv`` (every split, ``split`` column), ``train.csv``, ``valid.csv``, ``test.csv``;
- ``meta.csv``: the same rows plus how each clip was made (voice, program, SNR, ...);
- ``build.json``: the arguments and source inventory of the build.

Everything a clip is made of is drawn from ``numpy.random.default_rng([seed, task, ...])`` seeded
per clip, so a clip does not depend on which other clips are (re)built. Re-running with the same
arguments reuses the WAVs already there (an interrupted build resumes); different arguments first
delete the files the previous build listed in its ``meta.csv`` (and nothing else), except that the
pretraining mix grows: more minutes keep the clips already made.

Hold-outs are fixed, whatever the seed (:mod:`.sources`): keyword test/valid voices, instrument
test/valid programs and speaker test/valid lines never appear in training, and the pretraining
mix uses only training voices and programs and no hedgewars voice-pack line.

One module a job: :mod:`.keywords`, :mod:`.instruments`, :mod:`.speakers`, :mod:`.pretrain_mix`;
:mod:`.tts` renders the speech of the first and the last, :mod:`.build_common` holds what all
share (clips, WAVs, manifests, the build cache, summaries, background noise). This module is the
one import of the commands, the demo pipeline and the studies: the four builders, the summary,
and the names the tests drive.
"""

from __future__ import annotations

from ssamba.demo.build_common import SPLITS, Clip, format_summary
from ssamba.demo.instruments import build_instruments, render_note_clip
from ssamba.demo.keywords import KEYWORD_CLASSES, KEYWORDS, UNKNOWN_WORDS, build_keywords
from ssamba.demo.pretrain_mix import (
    MIX_CHUNK,
    PRETRAIN_SHARES,
    _mix_requests,
    _MixPlanner,
    _MixWorker,
    _plan_pretrain_mix,
    _pretrain_kinds,
    _pretrain_sources,
    _synthesize_in_turn,
    build_pretrain_mix,
    pretrain_programs,
)
from ssamba.demo.signals import DRUM_KITS, MUSIC_STYLES, db, normalise, rms
from ssamba.demo.speakers import build_speakers, speaker_line_split

__all__ = [
    "DRUM_KITS",
    "KEYWORDS",
    "KEYWORD_CLASSES",
    "MIX_CHUNK",
    "MUSIC_STYLES",
    "PRETRAIN_SHARES",
    "SPLITS",
    "UNKNOWN_WORDS",
    "Clip",
    "_MixPlanner",
    "_MixWorker",
    "_mix_requests",
    "_plan_pretrain_mix",
    "_pretrain_kinds",
    "_pretrain_sources",
    "_synthesize_in_turn",
    "build_instruments",
    "build_keywords",
    "build_pretrain_mix",
    "build_speakers",
    "db",
    "format_summary",
    "normalise",
    "pretrain_programs",
    "render_note_clip",
    "rms",
    "speaker_line_split",
]
