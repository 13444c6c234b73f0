"""Data: manifests, data checks and statistics, the training dataset, samplers and loaders.

One module per concern (every public name is importable from ``ssamba.data`` too):

- :mod:`.manifest`: :class:`Example`, :class:`Manifest`, :func:`read_manifest` (every manifest
  format) and :func:`read_class_list` (every class-list format);
- :mod:`.checks`: :func:`check_data` (:class:`DataReport`) and :func:`compute_stats` (the fbank
  mean/std for ``normalize``);
- :mod:`.dataset`: :class:`AudioDataset` (audio -> augmented, normalised fbank and target) and
  :func:`item_generator` (its per-item randomness);
- :mod:`.sampling`: :class:`EpochSampler`, :func:`make_sampler`, :func:`make_loader`,
  :func:`set_epoch`, :func:`class_balanced_weights`.
"""

from __future__ import annotations

from ssamba.data.checks import (
    BAD_FILE_POLICIES,
    DataReport,
    check_bad_file_policy,
    check_data,
    compute_stats,
    map_files,
)
from ssamba.data.dataset import AudioDataset, drop_bad, item_generator
from ssamba.data.manifest import (
    AUDIO_EXTENSIONS,
    Example,
    Manifest,
    ManifestWarning,
    read_class_list,
    read_manifest,
)
from ssamba.data.sampling import (
    EpochSampler,
    class_balanced_weights,
    make_loader,
    make_sampler,
    set_epoch,
)
from ssamba.errors import ManifestError

__all__ = [
    "AUDIO_EXTENSIONS",
    "BAD_FILE_POLICIES",
    "AudioDataset",
    "DataReport",
    "EpochSampler",
    "Example",
    "Manifest",
    "ManifestError",
    "ManifestWarning",
    "check_bad_file_policy",
    "check_data",
    "class_balanced_weights",
    "compute_stats",
    "drop_bad",
    "item_generator",
    "make_loader",
    "make_sampler",
    "map_files",
    "read_class_list",
    "read_manifest",
    "set_epoch",
]
