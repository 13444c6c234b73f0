"""Dynamic audio scene labelling (DASL): one label per second of a long recording.

The SSAMBA paper's DASL task: long recordings (60 s) made by concatenating UrbanSound8K clips,
labelled per second; the model labels every second and is scored by per-second ("frame-level")
accuracy. By concern:

- :mod:`~ssamba.dasl.head`: the per-chunk head (:func:`chunk_logits`): patch tokens averaged per
  chunk of time, then classified;
- :mod:`~ssamba.dasl.mixtures`: the data builder (:func:`build_dasl_mixtures`, ``ssamba
  dasl-build``);
- :mod:`~ssamba.dasl.dataset`: DASL manifests and :class:`DaslDataset`;
- :mod:`~ssamba.dasl.metrics`: :func:`dasl_metrics`;
- :mod:`~ssamba.dasl.task`: training (:class:`DaslTask`, :func:`train_dasl`, ``ssamba dasl``).

With ``chunk_seconds`` other than 1, chunk ``c`` (covering ``[c cs, (c + 1) cs)`` seconds) takes
the label of the second that contains its centre.
"""

from ssamba.configs import DaslConfig
from ssamba.dasl.dataset import DaslDataset, read_dasl_manifest
from ssamba.dasl.head import (
    IGNORE,
    chunk_assignment,
    chunk_labels,
    chunk_logits,
    default_num_chunks,
    pool_chunks,
)
from ssamba.dasl.metrics import dasl_metrics
from ssamba.dasl.mixtures import DaslBuildResult, build_dasl_mixtures, read_source_manifest
from ssamba.dasl.task import DASL_FILE, ChunkClassifier, DaslTask, StepDecay, train_dasl

__all__ = [
    "DASL_FILE",
    "IGNORE",
    "ChunkClassifier",
    "DaslBuildResult",
    "DaslConfig",
    "DaslDataset",
    "DaslTask",
    "StepDecay",
    "build_dasl_mixtures",
    "chunk_assignment",
    "chunk_labels",
    "chunk_logits",
    "dasl_metrics",
    "default_num_chunks",
    "pool_chunks",
    "read_dasl_manifest",
    "read_source_manifest",
    "train_dasl",
]
