"""Data: manifests, data checks and statistics, the training dataset, samplers and loaders.

One module per concern (every public name is importable from ``ssamba.data`` too):

- :mod:`.inputs`: :func:`input_form` (what a path given as audio input is: a manifest,
  ``PATH:SPLIT``, a folder of audio, a data set folder, shards, an audio file) and
  :func:`check_input` (a form a command does not take, refused in one line);
- :mod:`.manifest`: :class:`Example`, :class:`Manifest`, :func:`read_manifest` (every manifest
  format) and :func:`read_class_list` (every class-list format);
- :mod:`.checks`: :func:`check_data` (:class:`DataReport`) and :func:`compute_stats` (the fbank
  mean/std for ``normalize``);
- :mod:`.dataset`: :class:`AudioDataset` (audio -> augmented, normalised fbank and target) and
  :func:`item_generator` (its per-item randomness);
- :mod:`.sampling`: :class:`EpochSampler`, :func:`make_sampler`, :func:`make_loader`,
  :func:`set_epoch`, :func:`class_balanced_weights`;
- :mod:`.shardfiles` (names, patterns, the shard index) and :mod:`.shards`: :func:`write_shards`
  and :class:`ShardStream` (training from WebDataset tar shards);
- :mod:`.segment`: :func:`segment_recordings` (long recordings -> clips).
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
from ssamba.data.dataset import AudioDataset, drop_bad, item_generator, read_window
from ssamba.data.inputs import (
    DECODED_INPUTS,
    ONE_SET_INPUTS,
    STREAMED_INPUTS,
    InputForm,
    check_input,
    input_form,
)
from ssamba.data.manifest import (
    AUDIO_EXTENSIONS,
    Example,
    Manifest,
    ManifestWarning,
    check_no_overlap,
    read_class_list,
    read_manifest,
    read_splits,
    split_spec,
)
from ssamba.data.sampling import (
    EpochSampler,
    class_balanced_weights,
    make_loader,
    make_sampler,
    set_epoch,
)
from ssamba.data.segment import segment_recordings
from ssamba.data.shardfiles import expand_braces, is_shard_spec, shard_paths
from ssamba.data.shards import ShardStream, parse_size, streamable, write_shards
from ssamba.errors import ManifestError

__all__ = [
    "AUDIO_EXTENSIONS",
    "BAD_FILE_POLICIES",
    "DECODED_INPUTS",
    "ONE_SET_INPUTS",
    "STREAMED_INPUTS",
    "InputForm",
    "AudioDataset",
    "DataReport",
    "EpochSampler",
    "Example",
    "Manifest",
    "ManifestError",
    "ManifestWarning",
    "ShardStream",
    "check_bad_file_policy",
    "check_input",
    "check_data",
    "class_balanced_weights",
    "compute_stats",
    "drop_bad",
    "expand_braces",
    "input_form",
    "is_shard_spec",
    "item_generator",
    "make_loader",
    "make_sampler",
    "map_files",
    "parse_size",
    "read_class_list",
    "read_manifest",
    "read_splits",
    "split_spec",
    "check_no_overlap",
    "read_window",
    "segment_recordings",
    "set_epoch",
    "shard_paths",
    "streamable",
    "write_shards",
]
