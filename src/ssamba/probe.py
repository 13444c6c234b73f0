"""Linear probing: how linearly separable are a frozen model's clip embeddings?

Python::

    results = linear_probe(model, "train.csv", "valid.csv", "test.csv", cache_dir="probe/cache")
    results["test"]["accuracy"]         # or ["mAP"] for multi-label data

Command line::

    ssamba probe -c model/ --train train.csv --valid valid.csv --test test.csv --out probe/

Procedure:

1. Every file is embedded once with :func:`ssamba.embeddings.embed` (clip embeddings: the mean patch
   token, ``--layers`` concatenated). Embeddings are cached as ``DIR/cache/<key>.npz``, the key a
   SHA-256 of the model's weights and config, the embedding settings and the file (absolute path,
   size, modification time): a re-run, or a run with another train/valid split of the same files,
   reuses them; a changed file or model is embedded again.
2. Features are standardised with the training set's mean and standard deviation.
3. A linear classifier is fit in torch, full batch with L-BFGS (strong Wolfe line search) from
   zero weights (the problem is convex, so the result is deterministic): softmax cross-entropy
   for single-label data, per-class sigmoid binary cross-entropy for multi-label data, plus
   ``l2 * ||W||^2`` (bias not penalised).
4. ``l2`` is chosen on the validation set from a small grid (accuracy for single-label, mAP for
   multi-label; ties go to the lower validation loss), then the chosen classifier is evaluated on
   valid and test. Results are written to ``DIR/probe_results.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssamba.embeddings import _add_embedding_options, _command_error, embed, model_fingerprint

__all__ = ["add_probe_parser", "embed_manifest", "fit_linear", "linear_probe", "run_probe"]

DEFAULT_L2 = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
RESULTS_FILE = "probe_results.json"


# --------------------------------------------------------------------------------------------
# Metrics: the project's (ssamba.evaluation)
# --------------------------------------------------------------------------------------------


def _metrics(
    scores: np.ndarray, targets: np.ndarray, multilabel: bool, classes=None, warn: bool = True
) -> dict[str, float]:
    """mAP (classes without positives left out) and, for single-label data, accuracy."""
    from ssamba.evaluation import accuracy, mean_average_precision

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
    from tqdm import tqdm

    from ssamba.audio import AudioError, load_audio

    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
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
    vectors: dict[int, np.ndarray] = {}
    keys: dict[int, str] = {}
    bad: dict[str, str] = {}
    todo = []
    for i, path in enumerate(paths):
        if cache is not None and path.is_file():
            keys[i] = _cache_key(fingerprint, settings, path)
            cached = cache / f"{keys[i]}.npz"
            if cached.is_file():
                with np.load(cached) as data:
                    vectors[i] = data["clip"]
                continue
        todo.append(i)

    bar = tqdm(total=len(todo), unit="file", disable=not progress or not todo, file=sys.stderr)
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            waves, ok = [], []
            for i in chunk:
                try:
                    waves.append(load_audio(paths[i]))
                    ok.append(i)
                except AudioError as err:
                    if on_bad_file == "error":
                        raise
                    bad[str(paths[i])] = err.problem
            if waves:
                emb = embed(
                    model,
                    waves,
                    sample_rate=16000,
                    layers=layers,
                    window_seconds=window_seconds,
                    hop_seconds=hop_seconds,
                    batch_size=batch_size,
                    device=device,
                    pooling=pooling,
                )
                for j, i in enumerate(ok):
                    vectors[i] = emb.clip[j].numpy()
                    if cache is not None:
                        tmp = cache / f".{keys[i]}.tmp.npz"
                        np.savez(tmp, clip=vectors[i])
                        os.replace(tmp, cache / f"{keys[i]}.npz")
            bar.update(len(chunk))
    finally:
        bar.close()
    kept = sorted(vectors)
    if not kept:
        raise ValueError(f"{getattr(manifest, 'source', 'manifest')}: no file could be embedded")
    return np.stack([vectors[i] for i in kept]).astype(np.float32), kept, bad


# --------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------


def _loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    return torch.nn.functional.cross_entropy(logits, targets.argmax(dim=1))


def fit_linear(
    x: np.ndarray, y: np.ndarray, multilabel: bool, l2: float, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``logits = x @ W + b`` (float64, full-batch L-BFGS from zeros); returns (W, b)."""
    with torch.inference_mode(False), torch.enable_grad():
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
            opt.zero_grad()
            loss = _loss(xt @ w + b, yt, multilabel) + l2 * w.square().sum()
            loss.backward()
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
    from ssamba.data import Manifest, read_manifest

    if isinstance(manifest, Manifest):
        return manifest
    return read_manifest(manifest, classes=classes, multilabel=multilabel)


def _targets(manifest, kept: list[int]) -> np.ndarray:
    return np.stack([manifest.targets(i).numpy() for i in kept]).astype(np.float64)


def linear_probe(
    model,
    train_manifest,
    valid_manifest,
    test_manifest=None,
    *,
    layers=None,
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
) -> dict[str, Any]:
    """Linear probe of ``model``'s clip embeddings (see the module docstring).

    Manifests are paths (anything :func:`ssamba.data.read_manifest` reads) or ``Manifest``
    objects; valid and test use the training classes. Returns a JSON-ready dict with the chosen
    ``l2``, the per-``l2`` validation scores and ``train``/``valid``/``test`` metrics.
    """
    train = _read(train_manifest)
    if not train.labeled:
        raise ValueError(f"{train.source}: the training manifest has no labels")
    valid = _read(valid_manifest, train.classes, train.multilabel)
    test = _read(test_manifest, train.classes, train.multilabel) if test_manifest else None
    multilabel = bool(train.multilabel)
    if not l2_grid:
        raise ValueError("l2_grid must hold at least one value")

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
    splits = {"train": train, "valid": valid} | ({"test": test} if test is not None else {})
    data = {}
    for name, manifest in splits.items():
        x, kept, bad = embed_manifest(model, manifest, **opts)
        data[name] = (x, _targets(manifest, kept), bad)

    results = fit_probe(
        {name: (x, y) for name, (x, y, _) in data.items()},
        multilabel,
        train.classes,
        l2_grid,
        max_iter,
    )
    results["embedding"] = {
        "dim": int(data["train"][0].shape[1]),
        "layers": [int(i) for i in np.atleast_1d(-1 if layers is None else layers)],
        "window_seconds": window_seconds,
        "hop_seconds": hop_seconds,
        "pooling": pooling,
        "model_sha256": fingerprint,
    }
    for name in data:
        results[name]["bad_files"] = data[name][2]
    return results


def fit_probe(data: dict, multilabel: bool, classes, l2_grid=DEFAULT_L2, max_iter: int = 200):
    """Standardise features with the train statistics, fit a linear classifier per L2 weight,
    keep the best on "valid" and score every split. ``data``: name -> (features (N, D), targets).
    """
    x_train = data["train"][0].astype(np.float64)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-6 * max(float(std.max()), 1e-12)] = 1.0  # constant features stay 0

    xs = {name: (x.astype(np.float64) - mean) / std for name, (x, _) in data.items()}
    metric = "mAP" if multilabel else "accuracy"
    grid = []
    best = None
    for l2 in l2_grid:
        w, b = fit_linear(xs["train"], data["train"][1], multilabel, float(l2), max_iter)
        logits, probs = _scores(xs["valid"], w, b, multilabel)
        valid_loss = float(_loss(logits, torch.as_tensor(data["valid"][1]), multilabel))
        scores = _metrics(probs, data["valid"][1], multilabel, warn=False)
        grid.append({"l2": float(l2), "valid": scores, "valid_loss": valid_loss})
        rank = (scores[metric], -valid_loss)
        if best is None or rank > best[0]:
            best = (rank, float(l2), w, b)
    _, l2, w, b = best

    results: dict[str, Any] = {
        "task": "multilabel" if multilabel else "multiclass",
        "metric": metric,
        "classes": list(classes),
        "l2": l2,
        "l2_grid": grid,
    }
    for name in data:
        _, probs = _scores(xs[name], w, b, multilabel)
        results[name] = {
            "files": int(len(xs[name])),
            **_metrics(probs, data[name][1], multilabel, classes),
        }
    return results


# --------------------------------------------------------------------------------------------
# The ``ssamba probe`` command
# --------------------------------------------------------------------------------------------


def add_probe_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "probe",
        help="linear probe of frozen clip embeddings on a labelled dataset",
        description=(
            "Embed every file once (cached in DIR/cache), standardise with the training "
            "statistics, fit a linear classifier (softmax or sigmoid for multi-label) with the L2 "
            "weight chosen on the validation set, and report accuracy / mAP in "
            f"DIR/{RESULTS_FILE}."
        ),
    )
    p.add_argument("--checkpoint", "-c", required=True, help="folder, official .pth or preset")
    p.add_argument("--train", required=True, metavar="M", help="training manifest")
    p.add_argument("--valid", required=True, metavar="M", help="validation manifest")
    p.add_argument("--test", metavar="M", help="test manifest")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    _add_embedding_options(p)
    p.add_argument(
        "--l2",
        type=float,
        nargs="+",
        default=list(DEFAULT_L2),
        metavar="W",
        help=f"L2 weights to try (default {' '.join(f'{v:g}' for v in DEFAULT_L2)})",
    )
    p.add_argument("--max-iter", type=int, default=200, metavar="N", help="L-BFGS iterations")
    p.add_argument(
        "--pooling",
        choices=("mean", "mean+std", "bands", "bands+std"),
        default="mean",
        help="clip vector: mean of patch tokens (default) or kept per frequency band, +std",
    )
    p.add_argument(
        "--on-bad-file",
        choices=("error", "skip"),
        default="error",
        help="stop at an unreadable file (default) or leave it out and count it",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    from ssamba.audio import AudioError
    from ssamba.embeddings import load_checkpoint_for_cli, resolve_layers

    if args.batch_size < 1:
        raise _command_error(f"--batch-size must be >= 1, got {args.batch_size}")
    model = load_checkpoint_for_cli(args.checkpoint, args.device)
    try:
        resolve_layers(model, args.layers)
    except (ValueError, TypeError) as err:
        raise _command_error(str(err)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        results = linear_probe(
            model,
            args.train,
            args.valid,
            args.test,
            layers=args.layers,
            window_seconds=args.window,
            hop_seconds=args.hop,
            batch_size=args.batch_size,
            cache_dir=out / "cache",
            l2_grid=args.l2,
            max_iter=args.max_iter,
            on_bad_file=args.on_bad_file,
            progress=not args.no_progress,
            pooling=args.pooling,
        )
    except AudioError as err:
        raise _command_error(
            f"cannot embed {err} (--on-bad-file skip leaves bad files out)"
        ) from None
    results["checkpoint"] = args.checkpoint
    results["manifests"] = {"train": args.train, "valid": args.valid, "test": args.test}
    path = out / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n")
    metric = results["metric"]
    print(f"{results['task']} probe, {len(results['classes'])} classes, l2 = {results['l2']:g}")
    for name in ("train", "valid", "test"):
        if name in results:
            r = results[name]
            extra = f", {len(r['bad_files'])} bad files skipped" if r["bad_files"] else ""
            print(f"  {name:5s} {metric} {r[metric]:.4f} ({r['files']} files{extra})")
    print(f"wrote {path}")
    return 0
