"""Dynamic audio scene labelling (DASL): one label per second of a long recording.

The SSAMBA paper's DASL task: long recordings (60 s) made by concatenating UrbanSound8K clips,
labelled per second; the model labels every second and is scored by per-second ("frame-level")
accuracy. Three pieces:

- **The per-chunk head** (:func:`chunk_logits`): the encoder runs on the whole recording; each
  patch column ``t`` (fbank frames ``[t * tstride, t * tstride + 16)``) is assigned to the chunk
  (``chunk_seconds`` long, 1 s by default) that contains its centre in time; the patch tokens of
  every frequency row of the columns of a chunk are averaged and ``model.mlp_head`` is applied to
  each chunk. Class tokens are never pooled.

  The reference (SSAMBA repo, ``finetuningavgtok_1sec`` in ``src/models/both_models.py``) instead
  cuts the token sequence *including the class token* into 60 runs of ``len // 60`` consecutive
  tokens. Since tokens are ordered frequency-band-major (token = f * t_dim + t), those runs are
  pieces of frequency rows rather than seconds (and the class token lands in the first one, a few
  trailing tokens in none). We pool by time column, which is what the task means.

  A patch column's centre: frame ``i`` covers samples ``[160 i, 160 i + 400)`` (25 ms windows,
  10 ms hop), so column ``t`` spans ``10 t tstride`` ms to ``10 (t tstride + 15) + 25`` ms and its
  centre is at ``10 t tstride + 87.5`` ms. A chunk that no column centre falls in (only possible
  when chunks are shorter than the column spacing, e.g. 0.1 s chunks at stride 16) takes the
  column whose centre is nearest to the chunk's centre.

- **The data** (:func:`build_dasl_mixtures`): concatenates clips of any single-label manifest
  (``ssamba prepare urbansound8k`` folds, a folder per class, a CSV...) into long 16 kHz mono WAVs
  and writes a manifest ``<name>.csv``::

      path,labels
      mixtures/mixtures_00000.wav,dog_bark;dog_bark;siren;siren;siren;...

  ``labels`` holds one class name per second of audio, in order, joined by ``;`` (so class
  names must not contain ``;`` or ``,``). Paths are relative to the manifest. Next to it:
  ``<name>.sources.json`` (which clip, offset and length makes up each second) and
  ``class_labels_indices.csv`` (the class order, shared by every manifest built in the folder).
  ``mode="whole"`` (the reference's construction) appends whole clips in a shuffled order, each
  cut to whole seconds (a clip shorter than 1 s is zero-padded to 1 s; the clip that reaches the
  end of a recording is cut there); ``mode="crop"`` fills every second with a random 1-s crop of
  a random clip (more label changes). The reference instead pads every clip with silence up to
  the next whole second and labels that silence with the clip's class; we cut, so that no
  labelled second is mostly silence (clips under 1 s excepted). The reference normalised with
  the mixtures' own statistics (-5.1384, 4.2300): ``--normalize=-5.1384,4.2300`` or
  ``ssamba stats`` on your mixtures.

- **Training** (:class:`DaslTask` for :func:`ssamba.training.fit`, :func:`train_dasl`,
  ``ssamba dasl``): cross-entropy averaged over chunks; validation reports per-chunk accuracy
  (``acc``: frame-level accuracy, pooled over all chunks of all recordings; the watched metric),
  ``clip_acc`` (the mean over recordings of each recording's accuracy) and ``balanced_acc``
  (mean per-class recall). Defaults follow the reference script
  ``src/finetune/urban8k/urban_amba.sh``: stride 16, batch 5, Adam lr 1e-4, 50 epochs, SpecAugment
  (freqm 48, timem 192), lr x0.85 every 10 epochs from epoch 20, no warm-up, no mixup.

With ``chunk_seconds`` other than 1, chunk ``c`` (covering ``[c cs, (c + 1) cs)`` seconds) takes
the label of the second that contains its centre.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from ssamba.training import Distributed, LRSchedule, TrainConfig

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP_MS = 10.0  # fbank frame shift
WINDOW_MS = 25.0  # fbank frame length
PATCH = 16
FRAMES_PER_SECOND = 100  # 1000 / HOP_MS
IGNORE = -100  # label of chunks past the end of a shorter recording
CLASS_LABELS_FILE = "class_labels_indices.csv"
CLASSES_FILE = "classes.json"
DASL_FILE = "dasl.json"


# ---------------------------------------------------------------------------- per-chunk head
def column_centres(t_dim: int, tstride: int) -> torch.Tensor:
    """Centre time in seconds of each of ``t_dim`` patch columns (float64, shape (t_dim,))."""
    t = torch.arange(t_dim, dtype=torch.float64)
    span_ms = (PATCH - 1) * HOP_MS + WINDOW_MS
    return (t * tstride * HOP_MS + span_ms / 2) / 1000.0


def default_num_chunks(frames: int, chunk_seconds: float = 1.0) -> int:
    """The duration of ``frames`` fbank frames in chunks, rounded (at least 1)."""
    return max(1, round(frames / FRAMES_PER_SECOND / chunk_seconds))


def chunk_assignment(
    t_dim: int, tstride: int, n_chunks: int, chunk_seconds: float = 1.0
) -> torch.Tensor:
    """(n_chunks, t_dim) averaging weights: row ``c`` is uniform over the columns of chunk ``c``.

    Column ``t`` belongs to chunk ``floor(centre_t / chunk_seconds)``; columns past the last chunk
    are dropped; a chunk with no column takes the column nearest to its centre.
    """
    if chunk_seconds <= 0:
        raise ValueError(f"chunk_seconds must be > 0, got {chunk_seconds}")
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    centres = column_centres(t_dim, tstride)
    chunk = torch.floor(centres / chunk_seconds).long()
    weights = torch.zeros(n_chunks, t_dim, dtype=torch.float64)
    inside = chunk < n_chunks
    weights[chunk[inside], torch.arange(t_dim)[inside]] = 1.0
    for c in (weights.sum(1) == 0).nonzero().flatten().tolist():
        mid = (c + 0.5) * chunk_seconds
        weights[c, int(torch.argmin((centres - mid).abs()))] = 1.0
    return weights / weights.sum(1, keepdim=True)


def pool_chunks(enc, tstride: int, n_chunks: int, chunk_seconds: float = 1.0) -> torch.Tensor:
    """Average the patch tokens of an :class:`~ssamba.models.model.EncoderOutput` per chunk.

    Returns (B, n_chunks, E): the mean over every patch (all frequency rows) whose column lies in
    the chunk. ``enc.class_tokens`` is not used.
    """
    f_dim, t_dim = enc.grid
    tokens = enc.patch_tokens
    b, n, e = tokens.shape
    if n != f_dim * t_dim:
        raise ValueError(f"{n} patch tokens do not fill the grid {f_dim}x{t_dim}")
    columns = tokens.reshape(b, f_dim, t_dim, e).mean(dim=1)  # (B, t_dim, E)
    w = chunk_assignment(t_dim, tstride, n_chunks, chunk_seconds)
    return torch.einsum("ct,bte->bce", w.to(columns.dtype).to(columns.device), columns)


def chunk_logits(
    model, fbank: torch.Tensor, chunk_seconds: float = 1.0, n_chunks: int | None = None
) -> torch.Tensor:
    """Per-chunk class logits (B, n_chunks, C) of an AudioModel with a classification head.

    ``fbank`` (B, T, 128) is the whole recording; ``n_chunks`` defaults to its duration in chunks
    (:func:`default_num_chunks`).
    """
    if getattr(model, "mlp_head", None) is None:
        raise ValueError("the model has no classification head: build it with num_classes > 0")
    if n_chunks is None:
        n_chunks = default_num_chunks(fbank.shape[1], chunk_seconds)
    enc = model.encode(fbank)
    pooled = pool_chunks(enc, model.config.tstride, n_chunks, chunk_seconds)
    return model.mlp_head(pooled)


def chunk_labels(
    second_labels: list[int], n_chunks: int, chunk_seconds: float = 1.0
) -> torch.Tensor:
    """(n_chunks,) long: the label of the second containing each chunk's centre (IGNORE past the
    end of ``second_labels``)."""
    out = torch.full((n_chunks,), IGNORE, dtype=torch.long)
    for c in range(n_chunks):
        s = math.floor((c + 0.5) * chunk_seconds)
        if s < len(second_labels):
            out[c] = second_labels[s]
    return out


# ---------------------------------------------------------------------------- data: building
@dataclass
class DaslBuildResult:
    manifest: Path
    sources: Path
    classes: list[str]
    recordings: int
    seconds: int
    label_counts: dict[str, int]

    def summary(self) -> str:
        total = sum(self.label_counts.values())
        lines = [
            f"{self.recordings} recordings of {self.seconds} s -> {self.manifest}",
            f"classes: {len(self.classes)}; labelled seconds: {total}",
        ]
        width = max(len(c) for c in self.classes)
        for c in self.classes:
            lines.append(f"  {c:<{width}}  {self.label_counts.get(c, 0):>7} s")
        return "\n".join(lines)


def _class_list_for(path: Path) -> Path | None:
    folder = path if path.is_dir() else path.parent
    found = folder / CLASS_LABELS_FILE
    return found if found.is_file() else None


def read_source_manifest(manifest, classes=None):
    """A single-label manifest (any format ``read_manifest`` reads); the class order comes from
    ``classes``, else a ``class_labels_indices.csv`` next to it, else the sorted names."""
    from ssamba.data import Manifest, ManifestError, read_manifest

    if isinstance(manifest, Manifest):
        m = manifest
    else:
        path = Path(manifest)
        if classes is None:
            classes = _class_list_for(path)
        m = read_manifest(path, classes=classes)
    if not m.labeled:
        raise ManifestError(f"{m.source}: DASL mixtures need a labelled manifest")
    bad = next((ex for ex in m.examples if len(ex.labels) != 1), None)
    if bad is not None:
        raise ManifestError(f"{m.source}: {bad.path} has {len(bad.labels)} labels (need one)")
    odd = [c for c in m.classes if ";" in c or "," in c]
    if odd:
        raise ManifestError(f"{m.source}: class name {odd[0]!r} contains ';' or ','")
    return m


def build_dasl_mixtures(
    manifest,
    out: str | os.PathLike,
    n_recordings: int,
    seconds: int = 60,
    seed: int = 0,
    *,
    mode: str = "whole",
    name: str = "mixtures",
    classes=None,
    on_bad_file: str = "error",
) -> DaslBuildResult:
    """Write ``n_recordings`` recordings of ``seconds`` s concatenated from labelled clips.

    See the module docstring for the output layout and the two modes. ``manifest``: a
    single-label manifest path (or :class:`~ssamba.data.Manifest`); ``classes``: the class order
    (default: ``class_labels_indices.csv`` next to the manifest, else sorted names). Build the
    training mixtures from training clips and the evaluation mixtures from held-out clips (e.g. the
    ``fold{k}_train`` / ``fold{k}_eval`` manifests of ``ssamba prepare urbansound8k``).
    """
    import soundfile as sf

    from ssamba.audio import AudioError, load_audio
    from ssamba.data import ManifestError

    if mode not in ("whole", "crop"):
        raise ValueError(f"mode must be 'whole' or 'crop', got {mode!r}")
    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
    if n_recordings < 1 or int(seconds) != seconds or seconds < 1:
        raise ValueError("need n_recordings >= 1 and a whole number of seconds >= 1")
    if not name or any(ch in name for ch in "/\\") or name.startswith("."):
        raise ValueError(f"invalid name {name!r}")
    seconds = int(seconds)
    src = read_source_manifest(manifest, classes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    class_file = out / CLASS_LABELS_FILE
    if class_file.exists():
        from ssamba.data import read_class_labels

        existing, _ = read_class_labels(class_file)
        if existing != list(src.classes):
            raise ManifestError(
                f"{class_file} lists other classes than {src.source}: build into another folder "
                "or pass the same class list"
            )
    audio_dir = out / name
    audio_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    one = SAMPLE_RATE
    bad: set[int] = set()

    def load(k: int) -> np.ndarray | None:
        try:
            return load_audio(src.examples[k].path, SAMPLE_RATE).numpy()
        except AudioError as e:
            if on_bad_file == "error":
                raise
            if k not in bad:
                log.warning("skipping bad audio file %s", e)
            bad.add(k)
            return None

    order: list[int] = []

    def next_clip() -> tuple[int, np.ndarray]:
        for _ in range(len(src) + 1):
            if not order:
                order.extend(rng.permutation(len(src)).tolist())
            k = order.pop()
            if k in bad:
                continue
            wave = load(k)
            if wave is not None:
                return k, wave
        raise RuntimeError(f"{src.source}: no usable audio file")

    rows, sources = [], []
    counts: dict[str, int] = {}
    for r in range(n_recordings):
        pieces, labels, segments = [], [], []
        while len(labels) < seconds:
            k, wave = next_clip()
            if mode == "whole":
                n_sec = min(max(1, wave.size // one), seconds - len(labels))
                offset = 0
            else:
                n_sec = 1
                offset = int(rng.integers(0, max(0, wave.size - one) + 1))
            piece = wave[offset : offset + n_sec * one]
            piece = np.pad(piece, (0, n_sec * one - piece.size))
            label = src.examples[k].labels[0]
            segments.append(
                {
                    "start": len(labels),
                    "seconds": n_sec,
                    "path": str(src.examples[k].path),
                    "offset": offset / SAMPLE_RATE,
                    "label": label,
                }
            )
            pieces.append(piece)
            labels.extend([label] * n_sec)
            counts[label] = counts.get(label, 0) + n_sec
        audio = np.clip(np.concatenate(pieces), -1.0, 1.0).astype(np.float32)
        rel = f"{name}/{name}_{r:05d}.wav"
        sf.write(str(out / rel), audio, SAMPLE_RATE, subtype="PCM_16")
        rows.append((rel, ";".join(labels)))
        sources.append({"path": rel, "segments": segments})

    manifest_path = out / f"{name}.csv"
    with open(manifest_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        w.writerows(rows)
    sources_path = out / f"{name}.sources.json"
    sources_path.write_text(
        json.dumps(
            {"source": str(src.source), "mode": mode, "seed": seed, "recordings": sources},
            indent=1,
        )
    )
    if not class_file.exists():
        with open(class_file, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["index", "mid", "display_name"])
            for i, c in enumerate(src.classes):
                w.writerow([i, c, src.display_names.get(c, c)])
    return DaslBuildResult(
        manifest_path, sources_path, list(src.classes), n_recordings, seconds, counts
    )


# ---------------------------------------------------------------------------- data: reading
def read_dasl_manifest(path, classes=None) -> tuple[list[tuple[Path, list[str]]], list[str]]:
    """``[(audio path, per-second labels)]`` and the class list of a DASL manifest.

    Any manifest format whose label cell lists one label per second (``;``-separated, in order)
    works. Classes: ``classes`` (a list or a ``class_labels_indices.csv``), else the
    ``class_labels_indices.csv`` next to the manifest, else the sorted label names.
    """
    from ssamba.data import read_manifest

    path = Path(path)
    if classes is None:
        classes = _class_list_for(path)
    m = read_manifest(path, classes=classes, multilabel=True)
    from ssamba.data import ManifestError

    if not m.labeled:
        raise ManifestError(f"{path}: a DASL manifest needs per-second labels")
    return [(ex.path, list(ex.labels)) for ex in m.examples], list(m.classes)


class DaslDataset(Dataset):
    """Whole recordings and their per-chunk labels.

    Item ``i``: ``{"fbank": (seconds * 100, 128) float32, "labels": (n_chunks,) long,
    "index": i}``. Every recording is padded (zeros) or cut to ``seconds`` (default: the longest
    in the manifest, in labelled seconds); chunks past a recording's labels get label -100
    (ignored). Training items get SpecAugment (``freqm``, ``timem``) drawn from
    :func:`~ssamba.data.item_generator` ``(seed, epoch, index)``.
    """

    def __init__(
        self,
        manifest,
        classes=None,
        *,
        chunk_seconds: float = 1.0,
        seconds: int | None = None,
        normalize=None,
        train: bool = False,
        freqm: int = 0,
        timem: int = 0,
        seed: int = 0,
    ) -> None:
        from ssamba.audio import normalize_stats

        self.items, self.classes = read_dasl_manifest(manifest, classes)
        self.index = {c: k for k, c in enumerate(self.classes)}
        longest = max(len(labels) for _, labels in self.items)
        self.seconds = int(seconds or longest)
        if chunk_seconds <= 0 or chunk_seconds > self.seconds:
            raise ValueError(f"chunk_seconds must be in (0, {self.seconds}], got {chunk_seconds}")
        self.chunk_seconds = float(chunk_seconds)
        self.n_chunks = max(1, round(self.seconds / self.chunk_seconds))
        self.frames = self.seconds * FRAMES_PER_SECOND
        self.stats = normalize_stats(normalize)
        self.train, self.freqm, self.timem = train, freqm, timem
        self.seed, self.epoch = int(seed), 0
        self.source = str(manifest)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def labels(self, i: int) -> torch.Tensor:
        second = [self.index[c] for c in self.items[i][1]]
        return chunk_labels(second, self.n_chunks, self.chunk_seconds)

    def __getitem__(self, i: int) -> dict:
        from ssamba import audio
        from ssamba.data import item_generator

        i = int(i)
        wave = audio.load_audio(self.items[i][0], SAMPLE_RATE)
        n = self.seconds * SAMPLE_RATE
        wave = wave[:n] if wave.numel() >= n else F.pad(wave, (0, n - wave.numel()))
        fb = audio.fbank(wave, target_length=self.frames)
        if self.train and (self.freqm or self.timem):
            g = item_generator(self.seed, self.epoch, i)
            fb = audio.spec_augment(fb, self.freqm, self.timem, generator=g)
        if self.stats is not None:
            fb = audio.normalize_fbank(fb, *self.stats)
        return {"fbank": fb.float().contiguous(), "labels": self.labels(i), "index": i}


# ---------------------------------------------------------------------------- metrics
def dasl_metrics(preds: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int) -> dict:
    """Per-chunk metrics over recordings (``preds``/``labels``: one (n_chunks,) tensor each).

    ``acc``: correct chunks / labelled chunks (frame-level accuracy); ``clip_acc``: mean over
    recordings of each one's accuracy; ``balanced_acc``: mean recall over classes present.
    """
    p = torch.cat([x.flatten() for x in preds]) if preds else torch.zeros(0, dtype=torch.long)
    y = torch.cat([x.flatten() for x in labels]) if labels else torch.zeros(0, dtype=torch.long)
    keep = y != IGNORE
    p, y = p[keep], y[keep]
    if y.numel() == 0:
        raise ValueError("no labelled chunks to evaluate")
    correct = (p == y).double()
    per_clip = []
    for a, b in zip(preds, labels, strict=True):
        m = b != IGNORE
        if m.any():
            per_clip.append(float((a[m] == b[m]).double().mean()))
    recalls = [float(correct[y == c].mean()) for c in range(num_classes) if (y == c).any()]
    return {
        "acc": float(correct.mean()),
        "clip_acc": float(np.mean(per_clip)),
        "balanced_acc": float(np.mean(recalls)),
        "chunks": int(y.numel()),
        "recordings": len(per_clip),
    }


# ---------------------------------------------------------------------------- training task
@dataclass
class DaslConfig(TrainConfig):
    init: str | None = None  # checkpoint (official .pth or our folder); None: random init
    model: str = "ssamba_tiny"
    train: str = ""
    valid: str | None = None
    test: str | None = None
    chunk_seconds: float = 1.0
    seconds: int | None = None  # recording length; None: the longest training recording
    normalize: str | None = "audioset"
    fstride: int = 16
    tstride: int = 16
    freqm: int = 48
    timem: int = 192
    head_lr_mult: float = 1.0
    lr_decay: float = 0.85
    lr_decay_start: int = 20
    lr_decay_every: int = 10
    pool: str = "mean"
    model_overrides: dict = field(default_factory=dict)
    batch_size: int = 5
    epochs: int = 50
    lr: float = 1e-4
    weight_decay: float = 5e-7
    warmup_steps: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be > 0, got {self.chunk_seconds}")
        if self.lr_decay_every < 1:
            raise ValueError("lr_decay_every must be >= 1")

    @property
    def target_length(self) -> int:
        if self.seconds is None:
            raise ValueError("seconds is not set yet")
        return int(self.seconds) * FRAMES_PER_SECOND


class StepDecay(LRSchedule):
    """LR x ``factor`` after epochs ``start, start + every, ...`` (1-based counts), as the
    reference's ``MultiStepLR(range(start, 1000, every))``."""

    def __init__(self, warmup_steps=0, factor=0.85, start=20, every=10):
        super().__init__(warmup_steps, mode="step_decay", factor=factor, decay_start=start)
        self.every = every

    def end_epoch(self, epoch: int) -> None:
        done = epoch + 1
        if done >= self.decay_start and (done - self.decay_start) % self.every == 0:
            self.scale *= self.factor


class ChunkClassifier(nn.Module):
    """What DDP wraps: model + per-chunk cross-entropy."""

    def __init__(self, model, chunk_seconds: float):
        super().__init__()
        self.model, self.chunk_seconds = model, chunk_seconds

    def forward(self, fbank, labels):
        logits = chunk_logits(self.model, fbank, self.chunk_seconds, labels.shape[1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        return loss, logits


class DaslTask:
    """The DASL task for :func:`ssamba.training.fit` (see :class:`ssamba.finetune.FinetuneTask`)."""

    optimizer_class = torch.optim.Adam

    def __init__(self, cfg: DaslConfig, model, classes: list[str]):
        self.cfg, self.model, self.classes = cfg, model, classes
        self.watch = "acc"
        self.module = ChunkClassifier(model, cfg.chunk_seconds)
        self.schedule = StepDecay(
            cfg.warmup_steps, cfg.lr_decay, cfg.lr_decay_start, cfg.lr_decay_every
        )
        info = {"task": "dasl", "chunk_seconds": cfg.chunk_seconds, "seconds": cfg.seconds}
        self.extra_files = {
            CLASSES_FILE: json.dumps(classes, indent=1),
            DASL_FILE: json.dumps(info, indent=1),
        }

    def settings(self) -> dict:
        base = {f.name for f in dataclasses.fields(TrainConfig)}
        own = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in base}
        return {"task": "dasl", **own, "classes": self.classes}

    def sampling(self) -> dict:
        return {}

    def param_groups(self):
        named = list(self.model.named_parameters())
        head = [p for n, p in named if n.startswith("mlp_head.")]
        body = [p for n, p in named if not n.startswith("mlp_head.")]
        return [
            {"params": body, "lr": self.cfg.lr},
            {"params": head, "lr": self.cfg.lr * self.cfg.head_lr_mult},
        ]

    def train_step(self, module, batch, step_seed, dist: Distributed, accum_steps: int):
        loss, _ = module(batch["fbank"], batch["labels"])
        (loss / accum_steps).backward()
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def predict(self, dataset, dist: Distributed, batch_size: int):
        """(predictions, labels): one (n_chunks,) tensor per recording, in dataset order."""
        from torch.utils.data import DataLoader

        from ssamba.data import make_sampler

        was_training = self.model.training
        self.model.eval()
        sampler = make_sampler(len(dataset), 0, 0, dist.rank, dist.world_size, shuffle=False)
        loader = DataLoader(dataset, batch_size=max(1, batch_size), sampler=sampler)
        part = []
        for batch in loader:
            logits = chunk_logits(
                self.model,
                batch["fbank"].to(dist.device),
                dataset.chunk_seconds,
                batch["labels"].shape[1],
            )
            pred = logits.argmax(-1).cpu()
            for k, i in enumerate(batch["index"].tolist()):
                part.append((i, pred[k], batch["labels"][k]))
        self.model.train(was_training)
        parts = [part]
        if dist.enabled:
            parts = [None] * dist.world_size
            torch.distributed.all_gather_object(parts, part)
        found = {}
        for i, p, y in (x for chunk in parts for x in chunk):  # the sampler pads with repeats
            found.setdefault(i, (p, y))
        ranked = [found[i] for i in sorted(found)]
        return [p for p, _ in ranked], [y for _, y in ranked]

    def evaluate(self, valid_set, dist: Distributed, cfg: TrainConfig) -> dict:
        preds, labels = self.predict(valid_set, dist, cfg.batch_size // dist.world_size)
        m = dasl_metrics(preds, labels, len(self.classes))
        return {k: m[k] for k in ("acc", "clip_acc", "balanced_acc")}


def train_dasl(cfg: DaslConfig, device: str | None = None) -> dict:
    """Train on ``cfg.train``, keep the best model on ``cfg.valid``, evaluate it on ``cfg.test``.

    Returns the summary (also in ``summary.json``); the test metrics go to ``test_metrics.json``
    and the test predictions (per-chunk class names) to ``test_predictions.csv``.
    """
    from ssamba.audio import normalize_stats
    from ssamba.finetune import build_model
    from ssamba.training import fit

    dist = Distributed.from_env(device)
    stats = normalize_stats(cfg.normalize)
    train_items, classes = read_dasl_manifest(cfg.train)
    if cfg.seconds is None:
        cfg = dataclasses.replace(cfg, seconds=max(len(labels) for _, labels in train_items))

    def dataset(path, train):
        return DaslDataset(
            path,
            classes,
            chunk_seconds=cfg.chunk_seconds,
            seconds=cfg.seconds,
            normalize=stats,
            train=train,
            freqm=cfg.freqm if train else 0,
            timem=cfg.timem if train else 0,
            seed=cfg.seed,
        )

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(classes), stats)
    task = DaslTask(cfg, model, classes)
    valid = dataset(cfg.valid, False) if cfg.valid else None
    summary = fit(task, cfg, dist, dataset(cfg.train, True), valid)
    if cfg.test:
        from ssamba.checkpoints import load_pretrained

        out = Path(cfg.out)
        chosen = out / ("best" if (out / "best").is_dir() else "final")
        task.model.load_state_dict(load_pretrained(chosen).state_dict())
        test_set = dataset(cfg.test, False)
        preds, labels = task.predict(test_set, dist, cfg.batch_size)
        summary["test"] = dasl_metrics(preds, labels, len(classes))
        summary["test_model"] = chosen.name
        if dist.is_main:
            (out / "test_metrics.json").write_text(json.dumps(summary["test"], indent=2))
            with open(out / "test_predictions.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["path", "labels", "predicted"])
                for (path, _), y, p in zip(test_set.items, labels, preds, strict=True):
                    w.writerow(
                        [
                            str(path),
                            ";".join(classes[c] if c != IGNORE else "" for c in y.tolist()),
                            ";".join(classes[c] for c in p.tolist()),
                        ]
                    )
            (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# ---------------------------------------------------------------------------- command line
def add_dasl_parser(subparsers) -> None:
    from ssamba.training import add_train_arguments

    p = subparsers.add_parser(
        "dasl",
        help="train per-second labelling of long recordings (dynamic audio scene labelling)",
        description=(
            "Train a model to label every chunk (1 s by default) of long recordings: the patch "
            "tokens of each chunk's time columns are averaged and classified. Manifests: "
            "path,labels with one ';'-separated label per second (see `ssamba dasl-build`). "
            "Defaults follow the SSAMBA repo's urban8k script."
        ),
    )
    p.add_argument("--init", help="checkpoint: official .pth or a model folder; 'none': random")
    p.add_argument("--model", default="ssamba_tiny", help="preset for --init none")
    p.add_argument("--train", required=True, help="DASL manifest (path,labels)")
    p.add_argument("--valid", help="DASL manifest: selects the best epoch")
    p.add_argument("--test", help="DASL manifest: evaluated with the best model")
    p.add_argument("--chunk-seconds", type=float, default=1.0, help="label chunk length (1 s)")
    p.add_argument("--seconds", type=int, help="recording length (default: longest in --train)")
    p.add_argument("--normalize", default="audioset", help="preset, 'mean,std' or stats JSON")
    p.add_argument("--fstride", type=int, default=16)
    p.add_argument("--tstride", type=int, default=16)
    p.add_argument("--freqm", type=int, default=48)
    p.add_argument("--timem", type=int, default=192)
    p.add_argument("--head-lr-mult", type=float, default=1.0)
    p.add_argument("--lr-decay", type=float, default=0.85)
    p.add_argument("--lr-decay-start", type=int, default=20, help="epoch of the first decay")
    p.add_argument("--lr-decay-every", type=int, default=10, help="epochs between decays")
    p.add_argument("--depth", type=int, help="override the preset's depth (random init only)")
    add_train_arguments(p, batch_size=5, lr=1e-4, weight_decay=5e-7, warmup_steps=0, epochs=50)
    p.set_defaults(func=run_dasl)


def config_from_args(args) -> DaslConfig:
    from ssamba.training import train_config_kwargs

    normalize = args.normalize
    if normalize is not None and normalize.lower() == "none":
        normalize = None
    return DaslConfig(
        **{k: v for k, v in train_config_kwargs(args).items() if v is not None},
        init=None if args.init in (None, "none") else args.init,
        model=args.model,
        train=args.train,
        valid=args.valid,
        test=args.test,
        chunk_seconds=args.chunk_seconds,
        seconds=args.seconds,
        normalize=_parse_normalize(normalize),
        fstride=args.fstride,
        tstride=args.tstride,
        freqm=args.freqm,
        timem=args.timem,
        head_lr_mult=args.head_lr_mult,
        lr_decay=args.lr_decay,
        lr_decay_start=args.lr_decay_start,
        lr_decay_every=args.lr_decay_every,
        model_overrides={"depth": args.depth} if args.depth else {},
    )


def _parse_normalize(value):
    """'mean,std' -> [mean, std] (JSON-friendly for run.json); anything else unchanged."""
    if isinstance(value, str) and "," in value:
        try:
            return [float(x) for x in value.split(",")]
        except ValueError:
            return value
    return value


def run_dasl(args) -> int:
    from ssamba.training import configure_logging

    configure_logging(int(os.environ.get("RANK", "0")) == 0)
    cfg = config_from_args(args)
    summary = train_dasl(cfg, device=args.device)
    line = f"DASL training done: {summary['steps']} steps"
    if summary.get("best_metric") is not None:
        line += f", best validation per-chunk acc {summary['best_metric']:.4f}"
    if "test" in summary:
        t = summary["test"]
        line += f"; test acc {t['acc']:.4f} (clip mean {t['clip_acc']:.4f})"
    print(line)
    return 0


def add_dasl_build_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "dasl-build",
        help="concatenate labelled clips into long recordings with per-second labels",
        description=(
            "Build DASL data: concatenate clips of a single-label manifest (e.g. a fold of "
            "`ssamba prepare urbansound8k`, or a folder per class) into long 16 kHz WAVs and write "
            "NAME.csv (path,labels: one ';'-separated label per second), NAME.sources.json and "
            "class_labels_indices.csv into --out."
        ),
    )
    p.add_argument("manifest", help="single-label manifest (CSV, SSAST JSON, folder per class)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--recordings", "-n", type=int, required=True, help="how many recordings")
    p.add_argument("--seconds", type=int, default=60, help="length of each recording (60)")
    p.add_argument(
        "--mode",
        choices=("whole", "crop"),
        default="whole",
        help="whole: clips cut to whole seconds, back to back (reference); crop: a random 1-s "
        "crop of a random clip every second",
    )
    p.add_argument("--name", default="mixtures", help="manifest and audio folder name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="error")
    p.set_defaults(func=run_dasl_build)


def run_dasl_build(args) -> int:
    result = build_dasl_mixtures(
        args.manifest,
        args.out,
        args.recordings,
        args.seconds,
        args.seed,
        mode=args.mode,
        name=args.name,
        on_bad_file=args.on_bad_file,
    )
    print(result.summary())
    return 0


__all__ = [
    "ChunkClassifier",
    "DaslConfig",
    "DaslDataset",
    "DaslTask",
    "add_dasl_build_parser",
    "add_dasl_parser",
    "build_dasl_mixtures",
    "chunk_assignment",
    "chunk_labels",
    "chunk_logits",
    "column_centres",
    "dasl_metrics",
    "pool_chunks",
    "read_dasl_manifest",
    "run_dasl",
    "run_dasl_build",
    "train_dasl",
]
