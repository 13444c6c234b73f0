"""Metrics (checked against scikit-learn), ``evaluate_model`` and ``ssamba evaluate``."""

from __future__ import annotations

import argparse
import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from ssamba import create_model
from ssamba.cli import evaluate as cli_evaluate
from ssamba.cli.evaluate import run_evaluate
from ssamba.constants import CLASSES_FILE
from ssamba.errors import CheckpointError, UsageError
from ssamba.evaluation import (
    EvaluationError,
    MetricWarning,
    accuracy,
    average_precision,
    compute_metrics,
    confusion_matrix,
    d_prime,
    evaluate_model,
    mean_auc,
    mean_average_precision,
    per_class_metrics,
    roc_auc,
)

TINY = dict(embed_dim=32, depth=2, input_tdim=64, pretrain_heads=False)


def _random_case(seed: int, n: int = 60, c: int = 5, ties: bool = True, multilabel: bool = False):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, c))
    if ties:  # coarse values: many ties within and across classes
        scores = np.round(scores * 2) / 2
    if multilabel:
        targets = (rng.random((n, c)) < 0.3).astype(float)
        targets[0] = 1.0
        targets[1] = 0.0
    else:
        targets = np.eye(c)[rng.integers(0, c, n)]
        targets[:c] = np.eye(c)  # every class present
    return scores, targets


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_per_class_ap_and_auc_match_sklearn(seed, ties):
    scores, targets = _random_case(seed, ties=ties, multilabel=seed % 2 == 1)
    ap = average_precision(scores, targets)
    auc = roc_auc(scores, targets)
    for k in range(scores.shape[1]):
        ref_ap = skm.average_precision_score(targets[:, k], scores[:, k])
        ref_auc = skm.roc_auc_score(targets[:, k], scores[:, k])
        assert ap[k] == pytest.approx(ref_ap, abs=1e-6)
        assert auc[k] == pytest.approx(ref_auc, abs=1e-6)
    assert mean_average_precision(scores, targets) == pytest.approx(
        skm.average_precision_score(targets, scores, average="macro"), abs=1e-6
    )
    assert mean_auc(scores, targets) == pytest.approx(
        skm.roc_auc_score(targets, scores, average="macro"), abs=1e-6
    )


@pytest.mark.parametrize("seed", range(4))
def test_accuracy_and_confusion_match_sklearn(seed):
    scores, targets = _random_case(seed, n=80, c=7, ties=False)
    y_true, y_pred = targets.argmax(1), scores.argmax(1)
    assert accuracy(scores, targets) == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    np.testing.assert_array_equal(
        confusion_matrix(scores, targets), skm.confusion_matrix(y_true, y_pred, labels=range(7))
    )
    rows = per_class_metrics(scores, targets)
    p, r, _, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=range(7), zero_division=np.nan
    )
    for k, row in enumerate(rows):
        assert row["support"] == support[k]
        for ours, ref in ((row["precision"], p[k]), (row["recall"], r[k])):
            assert (math.isnan(ours) and math.isnan(ref)) or ours == pytest.approx(ref)


def test_torch_inputs_and_monotonic_invariance():
    scores, targets = _random_case(3, multilabel=True)
    t = torch.tensor(scores)
    assert mean_average_precision(t, torch.tensor(targets)) == pytest.approx(
        mean_average_precision(torch.sigmoid(t), targets), abs=1e-9
    )


def test_class_without_positives_is_skipped_with_a_warning():
    scores, targets = _random_case(1, c=4)
    targets = np.eye(4)[np.where(targets.argmax(1) == 3, 0, targets.argmax(1))]  # no class 3
    with pytest.warns(MetricWarning, match=r"3 of 4 classes.*left out: d"):
        m = mean_average_precision(scores, targets, ["a", "b", "c", "d"])
    present = [skm.average_precision_score(targets[:, k], scores[:, k]) for k in range(3)]
    assert m == pytest.approx(np.mean(present), abs=1e-6)
    assert math.isnan(average_precision(scores, targets)[3])
    with pytest.warns(MetricWarning):
        out = compute_metrics(scores, targets, ["a", "b", "c", "d"])
    assert out["map_classes"] == 3 and out["classes_without_positives"] == ["d"]
    with pytest.raises(EvaluationError, match="no class"):
        mean_average_precision(scores, np.zeros_like(targets))


def test_soft_targets_and_d_prime():
    scores, targets = _random_case(2, ties=False)
    soft = 0.9 * targets + 0.1 * targets[::-1]  # mixup-like
    assert accuracy(scores, soft) == accuracy(scores, targets)
    assert 0 <= mean_average_precision(scores, soft) <= 1
    assert d_prime(0.5) == pytest.approx(0.0)
    assert d_prime(0.9) == pytest.approx(math.sqrt(2) * 1.2815515655446004)
    assert math.isinf(d_prime(1.0))
    with pytest.raises(ValueError, match="same shape"):
        accuracy(scores, targets[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        accuracy(np.full_like(scores, np.nan), targets)


# --------------------------------------------------------------------------------------------------
# evaluate_model and the command


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return create_model("ssamba_tiny", num_classes=3, **TINY).eval()


def _csv_manifest(path, rows):
    path.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    return path


def test_evaluate_model_and_save(tone_folder, tiny_model, tmp_path):
    result = evaluate_model(
        tiny_model, tone_folder, classes=tone_folder.classes, batch_size=4, progress=False
    )
    m = result.metrics
    assert m["num_examples"] == 9 and m["num_classes"] == 3 and not result.multilabel
    assert result.scores.shape == (9, 3) and result.targets.sum() == 9
    assert m["acc"] == pytest.approx(accuracy(result.scores, result.targets))
    assert m["map"] == pytest.approx(
        skm.average_precision_score(result.targets, result.scores, average="macro"), abs=1e-6
    )
    assert m["main_metric"] == "acc"
    # same numbers as running the model by hand on the model's own front end
    from ssamba.data import AudioDataset

    ds = AudioDataset(
        tone_folder, 64, (tiny_model.config.norm_mean, tiny_model.config.norm_std), train=False
    )
    with torch.no_grad():
        logits = tiny_model(torch.stack([ds[i]["fbank"] for i in range(len(ds))]))
    np.testing.assert_allclose(result.scores, torch.sigmoid(logits).numpy(), atol=1e-5)
    assert "accuracy" in result.summary()

    out = result.save(tmp_path / "ev")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["acc"] == pytest.approx(m["acc"])
    rows = list(csv.DictReader(open(out / "per_class.csv")))
    assert [r["name"] for r in rows] == tone_folder.classes
    assert (out / "confusion.csv").is_file() and (out / "confusion.png").stat().st_size > 0
    npz = np.load(out / "scores.npz")
    assert npz["scores"].shape == (9, 3)


def test_evaluate_model_bad_inputs(tone_folder, tiny_model, tmp_path):
    headless = create_model("ssamba_tiny", num_classes=0, **TINY)
    with pytest.raises(EvaluationError, match="no classification head"):
        evaluate_model(headless, tone_folder, progress=False)
    # a label the model does not know
    man = _csv_manifest(tmp_path / "m.csv", [(tone_folder / "low" / "0.wav", "bass")])
    with pytest.raises(ValueError, match="bass"):
        evaluate_model(tiny_model, man, classes=["high", "low", "mid"], progress=False)
    from ssamba.data import read_manifest

    with pytest.raises(EvaluationError, match="not one of the model's classes"):
        evaluate_model(tiny_model, read_manifest(man), classes=["a", "b", "c"], progress=False)
    # number of classes differs and no class list
    with pytest.raises(EvaluationError, match="3 outputs but the manifest has 1"):
        evaluate_model(tiny_model, man, progress=False)
    with pytest.raises(EvaluationError, match="2 class names"):
        evaluate_model(tiny_model, tone_folder, classes=["high", "low"], progress=False)
    # no class list but the count matches: works, with a warning that says what it assumed
    with pytest.warns(MetricWarning, match="assuming"):
        r = evaluate_model(tiny_model, tone_folder, progress=False)
    assert any("assuming" in n for n in r.notes)


def test_evaluate_test_set_missing_classes(tone_folder, tiny_model, tmp_path):
    man = _csv_manifest(
        tmp_path / "two.csv",
        [(tone_folder / c / f"{k}.wav", c) for c in ("high", "low") for k in range(3)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the manifest reader warns about 'mid' too
        with pytest.warns(MetricWarning, match="2 of 3 classes"):
            r = evaluate_model(tiny_model, man, classes=["high", "low", "mid"], progress=False)
    assert r.metrics["map_classes"] == 2
    assert r.metrics["classes_without_positives"] == ["mid"]
    assert any("mAP is over the 2 classes present" in n for n in r.notes)
    ref = np.mean([skm.average_precision_score(r.targets[:, k], r.scores[:, k]) for k in range(2)])
    assert r.metrics["map"] == pytest.approx(ref, abs=1e-6)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="ssamba")
    cli_evaluate.register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_evaluate(tone_folder, tiny_model, tmp_path, capsys):
    ckpt = tiny_model.save_pretrained(tmp_path / "ft")
    (ckpt / CLASSES_FILE).write_text(json.dumps(tone_folder.classes))
    out = tmp_path / "out"
    argv = ["evaluate", "-c", str(ckpt), str(tone_folder), "--out", str(out), "--no-progress"]
    args = _parse(argv)
    assert args.func is run_evaluate
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "accuracy:" in text and "classes from" in text and "mid" in text
    assert json.loads((out / "metrics.json").read_text())["num_examples"] == 9
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no leftovers

    # existing output is replaced only with --overwrite
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        run_evaluate(_parse(argv))

    # --classes as a class_labels_indices.csv with display names; the old positional checkpoint
    cli_csv = tmp_path / "class_labels_indices.csv"
    cli_csv.write_text("index,mid,display_name\n0,high,High tone\n1,low,Low tone\n2,mid,Mid\n")
    args = _parse(
        ["evaluate", str(ckpt), str(tone_folder), "--classes", str(cli_csv), "-o", str(out)]
        + ["--no-progress", "--batch-size", "5", "--overwrite"]
    )
    assert run_evaluate(args) == 0
    assert "High tone" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["num_examples"] == 9


def test_cli_evaluate_errors(tone_folder, tmp_path):
    headless = create_model("ssamba_tiny", num_classes=0, **TINY).save_pretrained(tmp_path / "h")
    out = ["-o", str(tmp_path / "out")]
    args = _parse(["evaluate", "-c", str(headless), str(tone_folder), "--no-progress", *out])
    with pytest.raises(EvaluationError, match="no classification head"):
        run_evaluate(args)
    args = _parse(["evaluate", "-c", str(tmp_path / "nope"), str(tone_folder), *out])
    with pytest.raises(CheckpointError, match="nope"):
        run_evaluate(args)
    with pytest.raises(UsageError, match="-c/--checkpoint is required"):
        run_evaluate(_parse(["evaluate", str(tone_folder), *out]))
    with pytest.raises(UsageError, match="given twice"):
        run_evaluate(_parse(["evaluate", "-c", str(headless), "x", str(tone_folder), *out]))
