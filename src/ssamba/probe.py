"""Linear probing: how linearly separable are a frozen model's clip embeddings?

Python::

    results = linear_probe(model, "train.csv", "valid.csv", "test.csv", cache_dir="probe/cache")
    results["test"]["accuracy"]         # or ["mAP"] for multi-label data

Command line::

    ssamba probe -c model/ --train train.csv --valid valid.csv --test test.csv --out probe/

Procedure:

1. Every file is embedded once with :func:`ssamba.embeddings.embed_files` (clip embeddings: the
   mean patch token, ``--layers`` concatenated). Embeddings are cached as ``DIR/cache/<key>.npz``,
   the key a SHA-256 of the model's weights and config, the embedding settings and the file
   (absolute path, size, modification time): a re-run, or a run with another train/valid split of
   the same files, reuses them; a changed file or model is embedded again.
2. Features are standardised with the training set's mean and standard deviation.
3. A linear classifier is fit in torch, full batch with L-BFGS (strong Wolfe line search) from
   zero weights (the problem is convex, so the result is deterministic): softmax cross-entropy
   for single-label data, per-class sigmoid binary cross-entropy for multi-label data, plus
   ``l2 * ||W||^2`` (bias not penalised).
4. ``l2`` is chosen on the validation set from a small grid (accuracy for single-label, mAP for
   multi-label; ties go to the lower validation loss), then the chosen classifier is evaluated on
   valid and test. ``ssamba probe`` writes the results to ``DIR/probe_results.json`` (and its
   settings to ``DIR/run.json``, which ``--config`` replays).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ssamba.constants import PROBE_L2_GRID, PROBE_RESULTS_FILE
from ssamba.data import Manifest, check_no_overlap, read_manifest, read_splits
from ssamba.embeddings import embed_files, layer_columns, model_fingerprint, resolve_layers
from ssamba.errors import UsageError
from ssamba.fileio import atomic_write
from ssamba.metrics import accuracy, mean_average_precision

__all__ = [
    "DEFAULT_L2",
    "KNN_K",
    "RESULTS_FILE",
    "LinearClassifier",
    "embed_labelled",
    "embed_manifest",
    "fit_linear",
    "fit_probe",
    "holdout_split",
    "knn_accuracy",
    "linear_probe",
    "linear_probes",
    "probe_results",
    "probe_scores",
    "select_linear",
    "standardisation",
    "subsample",
    "view_layers",
]

DEFAULT_L2 = PROBE_L2_GRID
RESULTS_FILE = PROBE_RESULTS_FILE
KNN_K = 20  # neighbours of the kNN score (fewer when the training split is smaller)


# --------------------------------------------------------------------------------------------
# Metrics: the project's (ssamba.evaluation)
# --------------------------------------------------------------------------------------------


def _metrics(
    scores: np.ndarray, targets: np.ndarray, multilabel: bool, classes=None, warn: bool = True
) -> dict[str, float]:
    """mAP (classes without positives left out) and, for single-label data, accuracy."""
    out = {"mAP": float(mean_average_precision(scores, targets, classes, warn=warn))}
    if not multilabel:
        out["accuracy"] = float(accuracy(scores, targets))
    return out


# --------------------------------------------------------------------------------------------
# Embedding with a cache
# --------------------------------------------------------------------------------------------


def _cache_key(fingerprint: str, settings: dict, path: Path) -> str:
    st = path.stat()
    ident = {
        "model": fingerprint,
        **settings,
        "file": os.path.abspath(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def embed_manifest(
    model,
    manifest,
    *,
    layers=None,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 8,
    device=None,
    cache_dir: str | os.PathLike | None = None,
    on_bad_file: str = "error",
    progress: bool = False,
    fingerprint: str | None = None,
    pooling: str = "mean",
) -> tuple[np.ndarray, list[int], dict[str, str]]:
    """Clip embeddings ``(n, D)`` float32 of a manifest's files, the indices of the examples they
    belong to (bad files skipped under ``on_bad_file="skip"``), and ``{path: problem}``."""
    settings = {
        "layers": [int(i) for i in np.atleast_1d(-1 if layers is None else layers)],
        "window_seconds": window_seconds,
        "hop_seconds": hop_seconds,
    }
    if pooling != "mean":  # (so caches written before this option stay valid)
        settings["pooling"] = pooling
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        fingerprint = fingerprint or model_fingerprint(model)
    paths = [Path(ex.path) for ex in manifest]
    keys = _cache_keys(cache, paths, fingerprint, settings)
    vectors = _read_cache(cache, keys)
    todo = [i for i in range(len(paths)) if i not in vectors]
    batches = embed_files(
        model,
        [paths[i] for i in todo],
        batch_size=batch_size,
        on_bad_file=on_bad_file,
        layers=layers,
        window_seconds=window_seconds,
        hop_seconds=hop_seconds,
        device=device,
        pooling=pooling,
    )
    bad: dict[str, str] = {}
    bar = tqdm(total=len(todo), unit="file", disable=not progress or not todo, file=sys.stderr)
    try:
        for batch in batches:
            bad.update({str(paths[todo[k]]): err.problem for k, err in batch.bad.items()})
            for j, k in enumerate(batch.indices):
                i = todo[k]
                vectors[i] = batch.embeddings.clip[j].numpy()
                if i in keys:
                    _write_cached(cache / f"{keys[i]}.npz", vectors[i])
            bar.update(batch.size)
    finally:
        bar.close()
    kept = sorted(vectors)
    if not kept:
        raise UsageError(f"{getattr(manifest, 'source', 'manifest')}: no file could be embedded")
    return np.stack([vectors[i] for i in kept]).astype(np.float32), kept, bad


def _cache_keys(
    cache: Path | None, paths: list[Path], fingerprint: str | None, settings: dict
) -> dict[int, str]:
    """Example index -> cache key, for the files that exist (none without a cache)."""
    if cache is None:
        return {}
    return {
        i: _cache_key(fingerprint, settings, path) for i, path in enumerate(paths) if path.is_file()
    }


def _read_cache(cache: Path | None, keys: dict[int, str]) -> dict[int, np.ndarray]:
    vectors = {}
    for i, key in keys.items():
        cached = cache / f"{key}.npz"
        if cached.is_file():
            with np.load(cached) as data:
                vectors[i] = data["clip"]
    return vectors


def _write_cached(path: Path, clip: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to the name
            np.savez(f, clip=clip)

    atomic_write(path, write)


# --------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------


def _loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    return torch.nn.functional.cross_entropy(logits, targets.argmax(dim=1))


def objective(x, y, w, b, multilabel: bool, l2: float):
    """The probe's loss, ``_loss(x @ w + b, y) + l2 * ||w||^2``, and its gradients with respect
    to ``w`` and ``b``, written out (float64 tensors): the same numbers as autograd's
    (tests/test_probe.py checks them against it) without building a graph at every one of the
    ~200 L-BFGS evaluations a fit takes, which cost more than the arithmetic itself."""
    logits = x @ w + b
    n = logits.shape[0]
    if multilabel:  # mean over every (clip, class) of the binary cross-entropy with logits
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        grad_logits = (torch.sigmoid(logits) - y) / logits.numel()
    else:  # cross-entropy against each row's largest target
        target = y.argmax(dim=1)
        log_probs = torch.log_softmax(logits, dim=1)
        loss = -log_probs[torch.arange(n), target].mean()
        grad_logits = log_probs.exp()
        grad_logits[torch.arange(n), target] -= 1.0
        grad_logits /= n
    loss = loss + l2 * w.square().sum()
    return loss, x.T @ grad_logits + 2.0 * l2 * w, grad_logits.sum(dim=0)


def fit_linear(
    x: np.ndarray, y: np.ndarray, multilabel: bool, l2: float, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``logits = x @ W + b`` (float64, full-batch L-BFGS from zeros); returns (W, b)."""
    with torch.inference_mode(False):
        xt = torch.as_tensor(x, dtype=torch.float64)
        yt = torch.as_tensor(y, dtype=torch.float64)
        w = torch.zeros(xt.shape[1], yt.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros(yt.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [w, b],
            lr=1.0,
            max_iter=max_iter,
            history_size=20,
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def closure():
            with torch.no_grad():
                loss, w.grad, b.grad = objective(xt, yt, w, b, multilabel, l2)
            return loss

        opt.step(closure)
    return w.detach(), b.detach()


def _scores(x: np.ndarray, w: torch.Tensor, b: torch.Tensor, multilabel: bool):
    logits = torch.as_tensor(x, dtype=torch.float64) @ w + b
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
    return logits, probs.numpy()


# --------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------


def _read(manifest, classes=None, multilabel=None):
    if isinstance(manifest, Manifest):
        return manifest
    return read_manifest(manifest, classes=classes, multilabel=multilabel)


def _targets(manifest, kept: list[int]) -> np.ndarray:
    return np.stack([manifest.targets(i).numpy() for i in kept]).astype(np.float64)


def linear_probe(
    model,
    train_manifest,
    valid_manifest=None,
    test_manifest=None,
    *,
    layers=None,
    **options,
) -> dict[str, Any]:
    """Linear probe of ``model``'s clip embeddings (see the module docstring).

    Manifests are paths (anything :func:`ssamba.data.read_manifest` reads) or ``Manifest``
    objects; valid and test use the training classes. A manifest path with a ``split`` column
    serves every set (:func:`ssamba.data.read_splits`: valid and test, when not given, are its
    rows of those splits); a file in train and in valid or test is an error unless
    ``allow_overlap``. ``layers``: as :func:`ssamba.embed`;
    ``options``: those of :func:`linear_probes`. Returns a JSON-ready dict with the chosen
    ``l2``, the per-``l2`` validation scores and ``train``/``valid``/``test`` metrics.
    """
    views = {"probe": layers}
    return linear_probes(model, train_manifest, valid_manifest, test_manifest, views, **options)[
        "probe"
    ]


def linear_probes(
    model,
    train_manifest,
    valid_manifest=None,
    test_manifest=None,
    views: dict[str, Any] | None = None,
    *,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 8,
    device=None,
    cache_dir: str | os.PathLike | None = None,
    l2_grid=DEFAULT_L2,
    max_iter: int = 200,
    on_bad_file: str = "error",
    progress: bool = False,
    pooling: str = "mean",
    allow_overlap: bool = False,
) -> dict[str, dict[str, Any]]:
    """One :func:`linear_probe` per view of the model (``views``: name -> ``layers``, default
    ``{"probe": None}``: the final output), from one embedding pass.

    With several views the files are embedded once with every layer the views name, and each
    view's probe is fit on its own columns (:func:`ssamba.embeddings.layer_columns`): the same
    features as embedding that view alone, at the cost of one forward pass per file.
    """
    views = {"probe": None} if views is None else dict(views)
    if not views:
        raise UsageError("views must name at least one set of layers")
    splits = _read_splits(train_manifest, valid_manifest, test_manifest, allow_overlap)
    train = splits["train"]
    multilabel = bool(train.multilabel)
    _check_l2_grid(l2_grid)

    if len(views) == 1:  # embedded as given, so that caches and column order stay as they were
        (layers,) = views.values()
        chosen = {name: None for name in views}
    else:
        layers, chosen = view_layers(model, views)
    fingerprint = model_fingerprint(model)
    opts = dict(
        layers=layers,
        window_seconds=window_seconds,
        hop_seconds=hop_seconds,
        batch_size=batch_size,
        device=device,
        cache_dir=cache_dir,
        on_bad_file=on_bad_file,
        progress=progress,
        fingerprint=fingerprint,
        pooling=pooling,
    )
    data = _embed_splits(model, splits, opts)

    out = {}
    for name, keep in chosen.items():
        cols = (
            None
            if keep is None
            else layer_columns(layers, keep, data["train"][0].shape[1], pooling)
        )
        features = {
            split: (x if cols is None else x[:, cols], y) for split, (x, y, _) in data.items()
        }
        results = fit_probe(features, multilabel, train.classes, l2_grid, max_iter)
        shown = views[name] if keep is None else keep
        results["embedding"] = {
            "dim": int(features["train"][0].shape[1]),
            "layers": [int(i) for i in np.atleast_1d(-1 if shown is None else shown)],
            "window_seconds": window_seconds,
            "hop_seconds": hop_seconds,
            "pooling": pooling,
            "model_sha256": fingerprint,
        }
        for split in data:
            results[split]["bad_files"] = data[split][2]
        results["manifests"] = {split: splits[split].spec for split in splits}  # PATH[:SPLIT]
        out[name] = results
    return out


def view_layers(model, views: dict[str, Any]) -> tuple[list[int], dict[str, tuple[int, ...]]]:
    """The layers to embed once for all ``views`` (name -> ``layers``: their union, in the order
    first named) and each view's own layers, resolved (:func:`ssamba.embeddings.resolve_layers`);
    :func:`ssamba.embeddings.layer_columns` cuts a view out of the embedding."""
    chosen = {name: resolve_layers(model, layers) for name, layers in views.items()}
    return list(dict.fromkeys(k for ks in chosen.values() for k in ks)), chosen


def _read_splits(
    train_manifest, valid_manifest, test_manifest, allow_overlap: bool = False
) -> dict[str, Manifest]:
    """The labelled splits of a probe; valid and test read with the training classes (paths:
    :func:`ssamba.data.read_splits`, one manifest with a split column may serve all three)."""
    given = (train_manifest, valid_manifest, test_manifest)
    if any(isinstance(m, Manifest) for m in given):
        train = _read(train_manifest)
        splits = {"train": train}
        if train.labeled:
            splits["valid"] = valid_manifest and _read(
                valid_manifest, train.classes, train.multilabel
            )
            splits["test"] = test_manifest and _read(test_manifest, train.classes, train.multilabel)
    else:
        splits = read_splits(*given, allow_overlap=True)  # checked below, after the labels
        train = splits["train"]
    if not train.labeled:
        raise UsageError(f"{train.source}: the training manifest has no labels")
    if not allow_overlap:
        check_no_overlap(splits)
    if splits.get("valid") is None:
        raise UsageError(
            f"{train.spec}: no validation set to choose the L2 weight: pass one (--valid), or a "
            "manifest with a split column holding valid rows"
        )
    return {k: m for k, m in splits.items() if m is not None}


def _check_l2_grid(l2_grid) -> None:
    if not l2_grid:
        raise UsageError("l2_grid must hold at least one value")
    bad_l2 = [w for w in l2_grid if not (isinstance(w, int | float) and 0 <= w < math.inf)]
    if bad_l2:
        raise UsageError(f"l2 weights must be finite numbers >= 0, got {bad_l2[0]!r}")


def _embed_splits(model, splits: dict[str, Manifest], opts: dict) -> dict:
    """name -> (embeddings, targets of the files kept, bad files) for every split."""
    return {name: embed_labelled(model, manifest, **opts) for name, manifest in splits.items()}


def embed_labelled(model, manifest: Manifest, **options) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`embed_manifest` with the targets of the files kept: ``(embeddings (n, D),
    targets (n, classes) float64, {path: problem} of the files left out)``."""
    x, kept, bad = embed_manifest(model, manifest, **options)
    return x, _targets(manifest, kept), bad


def standardisation(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature of the training rows, float64; a constant feature's std is 1 (it
    stays 0 once standardised)."""
    x_train = x_train.astype(np.float64)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-6 * max(float(std.max()), 1e-12)] = 1.0
    return mean, std


def _standardised(data: dict) -> dict[str, np.ndarray]:
    """Every split's features standardised (float64) with the "train" split's mean and
    standard deviation (:func:`standardisation`)."""
    mean, std = standardisation(data["train"][0])
    return {name: (x.astype(np.float64) - mean) / std for name, (x, *_) in data.items()}


def row_space(x: np.ndarray) -> tuple[np.ndarray, torch.Tensor | None]:
    """``(z, q)`` with ``x = z @ q.T`` and orthonormal columns in ``q``, when ``x`` (N, D) has
    more features than rows (else ``(x, None)``).

    Why: L-BFGS from zero weights only ever moves along gradients ``x.T @ g``, i.e. inside the
    row space of ``x``, and the L2 penalty and the logits are the same measured in an orthonormal
    basis of it. So fitting ``z`` (N, N) and mapping the weights back with ``q`` gives the fit on
    ``x`` (the same iterates up to rounding) at N/D of the cost: a probe of every layer of a
    model has tens of thousands of features for a few hundred clips.
    """
    n, d = x.shape
    if d <= n:
        return x, None
    q, r = torch.linalg.qr(torch.as_tensor(x, dtype=torch.float64).T)  # x.T = q r
    return r.T.numpy(), q


@dataclasses.dataclass
class LinearClassifier:
    """A fitted probe: ``logits = ((x - mean) / std) @ weight + bias`` (float64), and the L2
    weight chosen for it with every candidate's validation score (``grid``)."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    weight: torch.Tensor  # (D, C)
    bias: torch.Tensor  # (C,)
    l2: float
    grid: list[dict]


def select_linear(
    data: dict, multilabel: bool, l2_grid=DEFAULT_L2, max_iter: int = 200
) -> LinearClassifier:
    """Standardise with the "train" statistics, fit a linear classifier per L2 weight and keep
    the best on "valid" (accuracy for single-label data, mAP for multi-label; ties go to the lower
    validation loss). ``data``: name -> (features (N, D), targets (N, C))."""
    mean, std = standardisation(data["train"][0])
    x_train = (data["train"][0].astype(np.float64) - mean) / std
    x_valid = (data["valid"][0].astype(np.float64) - mean) / std
    metric = "mAP" if multilabel else "accuracy"
    grid = []
    best = None
    z, basis = row_space(x_train)
    for l2 in l2_grid:
        w, b = fit_linear(z, data["train"][1], multilabel, float(l2), max_iter)
        w = w if basis is None else basis @ w
        logits, probs = _scores(x_valid, w, b, multilabel)
        valid_loss = float(_loss(logits, torch.as_tensor(data["valid"][1]), multilabel))
        scores = _metrics(probs, data["valid"][1], multilabel, warn=False)
        grid.append({"l2": float(l2), "valid": scores, "valid_loss": valid_loss})
        rank = (scores[metric], -valid_loss)
        if best is None or rank > best[0]:
            best = (rank, float(l2), w, b)
    _, l2, w, b = best
    return LinearClassifier(mean, std, w, b, l2, grid)


def fit_probe(data: dict, multilabel: bool, classes, l2_grid=DEFAULT_L2, max_iter: int = 200):
    """:func:`select_linear` on ``data`` (name -> (features (N, D), targets)), then every split
    scored with the chosen classifier."""
    probe = select_linear(data, multilabel, l2_grid, max_iter)
    return probe_results(probe, data, multilabel, classes)


def probe_results(probe: LinearClassifier, data: dict, multilabel: bool, classes) -> dict:
    """The JSON-ready results of ``probe`` on every split of ``data``."""
    results: dict[str, Any] = {
        "task": "multilabel" if multilabel else "multiclass",
        "metric": "mAP" if multilabel else "accuracy",
        "classes": list(classes),
        "l2": probe.l2,
        "l2_grid": probe.grid,
    }
    for name, (x, y) in data.items():
        _, probs = _scores((x.astype(np.float64) - probe.mean) / probe.std, probe.weight,
                           probe.bias, multilabel)  # fmt: skip
        results[name] = {"files": int(len(x)), **_metrics(probs, y, multilabel, classes)}
    return results


# --------------------------------------------------------------------------------------------
# The online probe's pieces (ssamba pretrain --probe): kNN, held-out split, subsets, one score
# --------------------------------------------------------------------------------------------


def knn_accuracy(
    x_train: np.ndarray,
    labels_train: np.ndarray,
    x_test: np.ndarray,
    labels_test: np.ndarray,
    k: int = KNN_K,
) -> float:
    """Accuracy of a cosine k-nearest-neighbour vote (``k``, or every training point when there
    are fewer): each test point takes the class most of its neighbours have; a tie goes to the
    tied class of the nearest neighbour. Neighbours at equal similarity rank by training index.
    ``labels_*``: class indices (single-label data)."""
    labels_train = np.asarray(labels_train, dtype=np.int64)
    labels_test = np.asarray(labels_test, dtype=np.int64)
    k = max(1, min(int(k), len(x_train)))
    a = torch.nn.functional.normalize(torch.as_tensor(x_train, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.as_tensor(x_test, dtype=torch.float64), dim=1)
    similarity = (b @ a.T).numpy()
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]  # nearest first
    neighbours = labels_train[order]  # (n_test, k) class indices
    rows = np.arange(len(x_test))
    votes = np.zeros((len(x_test), int(labels_train.max()) + 1), dtype=np.int64)
    np.add.at(votes, (rows[:, None], neighbours), 1)
    tied = votes[rows[:, None], neighbours] == votes.max(axis=1, keepdims=True)
    predicted = neighbours[rows, tied.argmax(axis=1)]  # the nearest neighbour of a top class
    return float(np.mean(predicted == labels_test))


def holdout_split(manifest: Manifest, fraction: float, seed: int) -> tuple[Manifest, Manifest]:
    """``manifest`` split into (train, held out): ``fraction`` of each class's files held out
    (rounded, at least one of a class with two or more files), drawn with ``seed``; multi-label
    data is split without strata. Files keep their order."""
    rng = np.random.default_rng(seed)
    if manifest.multilabel:
        strata = [list(range(len(manifest)))]
    else:
        by_class: dict[int, list[int]] = {}
        for i in range(len(manifest)):
            by_class.setdefault(manifest.label_indices(i)[0], []).append(i)
        strata = [by_class[c] for c in sorted(by_class)]
    held = set()
    for members in strata:
        n = round(fraction * len(members))
        n = max(n, 1) if len(members) >= 2 else 0
        held.update(int(i) for i in rng.permutation(members)[:n])
    if not held or len(held) == len(manifest):
        raise UsageError(
            f"{manifest.source}: {len(manifest)} files are too few to hold {fraction:.0%} out "
            "for the probe's test split: give TRAIN,TEST"
        )
    kept = [ex for i, ex in enumerate(manifest.examples) if i not in held]
    out = [ex for i, ex in enumerate(manifest.examples) if i in held]
    return dataclasses.replace(manifest, examples=kept), dataclasses.replace(manifest, examples=out)


def subsample(manifest: Manifest, max_files: int, seed: int) -> Manifest:
    """At most ``max_files`` of the manifest's files: a subset drawn with ``seed`` (in the
    manifest's order) when it has more, else the manifest itself."""
    if len(manifest) <= max_files:
        return manifest
    keep = np.sort(np.random.default_rng(seed).choice(len(manifest), max_files, replace=False))
    examples = [manifest.examples[int(i)] for i in keep]
    return dataclasses.replace(manifest, examples=examples)


def probe_scores(
    model,
    train: Manifest,
    test: Manifest,
    *,
    layers=None,
    pooling: str = "mean",
    batch_size: int = 8,
    device=None,
    on_bad_file: str = "error",
    l2_grid=DEFAULT_L2,
    max_iter: int = 200,
    k: int = KNN_K,
) -> dict[str, Any]:
    """The linear probe of ``model`` trained on ``train`` with ``l2`` chosen on ``test``, and a
    kNN vote: exactly ``linear_probe(model, train, test, ...)`` without a cache, whose "valid"
    score (accuracy; mAP for multi-label data) is ``score``. ``knn``: :func:`knn_accuracy` on the
    standardised features (single-label data only)."""
    opts = dict(layers=layers, batch_size=batch_size, device=device, on_bad_file=on_bad_file,
                pooling=pooling)  # fmt: skip
    data = _embed_splits(model, {"train": train, "valid": test}, opts)
    multilabel = bool(train.multilabel)
    results = fit_probe({name: (x, y) for name, (x, y, _) in data.items()}, multilabel,
                        train.classes, l2_grid, max_iter)  # fmt: skip
    out = {"score": results["valid"][results["metric"]], "metric": results["metric"]}
    if not multilabel:
        xs = _standardised(data)
        labels = {name: y.argmax(axis=1) for name, (_, y, _) in data.items()}
        out["knn"] = knn_accuracy(xs["train"], labels["train"], xs["valid"], labels["valid"], k)
    out["files"] = {"train": len(data["train"][0]), "test": len(data["valid"][0])}
    return out
