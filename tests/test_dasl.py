"""Dynamic audio scene labelling: per-chunk pooling, the mixture builder, training."""

import argparse
import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import ssamba
from ssamba.cli.dasl import add_dasl_build_parser, add_dasl_parser
from ssamba.dasl import (
    IGNORE,
    DaslDataset,
    StepDecay,
    build_dasl_mixtures,
    chunk_assignment,
    chunk_labels,
    chunk_logits,
    dasl_metrics,
    pool_chunks,
    read_dasl_manifest,
)
from ssamba.errors import UsageError
from ssamba.models.model import EncoderOutput
from ssamba.models.patches import column_times

FREQS = {"high": 3000.0, "low": 300.0, "mid": 1000.0}


def _cli(argv):
    parser = argparse.ArgumentParser(prog="ssamba")
    sub = parser.add_subparsers()
    add_dasl_parser(sub)
    add_dasl_build_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A folder per class of noisy tones of 0.6 to 2.5 s (pitch jittered by +-5%)."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    for label, freq in FREQS.items():
        (root / label).mkdir()
        for k, seconds in enumerate((0.6, 1.0, 1.7, 2.5)):
            t = np.arange(int(seconds * 16000)) / 16000
            f = freq * rng.uniform(0.95, 1.05)
            x = 0.3 * np.sin(2 * np.pi * f * t) + 0.02 * rng.standard_normal(t.size)
            sf.write(root / label / f"{k}.wav", x.astype(np.float32), 16000)
    return root


def _dominant(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * 16000 / x.size)


# ---------------------------------------------------------------------------- pooling
def test_pooling_by_time_column_ignores_class_tokens():
    torch.manual_seed(0)
    f_dim, t_dim, e, tstride = 3, 40, 5, 16  # 40 columns = 6.4 s at 160 ms
    tokens = torch.randn(2, f_dim * t_dim, e)
    enc = EncoderOutput(tokens, torch.randn(2, 1, e), (f_dim, t_dim))
    pooled = pool_chunks(enc, tstride, n_chunks=6)
    assert pooled.shape == (2, 6, e)
    # direct: token f * t_dim + t is in chunk floor(centre(t)) with centre 0.16 t + 0.0875 s
    for c in range(6):
        cols = [t for t in range(t_dim) if int((0.16 * t + 0.0875) // 1.0) == c]
        assert cols, c
        idx = [f * t_dim + t for f in range(f_dim) for t in cols]
        torch.testing.assert_close(pooled[:, c], tokens[:, idx].mean(1), rtol=1e-5, atol=1e-6)
    other = EncoderOutput(tokens, torch.randn(2, 1, e) * 100, (f_dim, t_dim))
    torch.testing.assert_close(pool_chunks(other, tstride, 6), pooled)


def test_every_chunk_gets_columns_and_padding_columns_are_dropped():
    for tstride, t_dim in ((16, 375), (10, 599)):  # 60 s = 6000 frames
        w = chunk_assignment(t_dim, tstride, 60)
        assert torch.allclose(w.sum(1), torch.ones(60, dtype=w.dtype))
        counts = (w > 0).sum(1)
        assert counts.min() >= (6 if tstride == 16 else 9)
        # every column is used exactly once
        assert ((w > 0).sum(0) == 1).all()
    # a longer input than the chunks: trailing columns are left out
    w = chunk_assignment(384, 16, 60)  # 6144 frames (the reference's padding)
    centres = column_times(384, 16)
    assert ((w > 0).sum(0)[centres >= 60] == 0).all()
    # chunks shorter than the column spacing borrow the nearest column
    w = chunk_assignment(10, 16, 16, chunk_seconds=0.1)
    assert ((w > 0).sum(1) == 1).all()
    with pytest.raises(ValueError):
        chunk_assignment(10, 16, 0)


def test_chunk_logits_is_the_head_on_pooled_tokens():
    model = ssamba.create_model(
        "ssamba_tiny", depth=2, input_tdim=300, num_classes=4, fstride=16, tstride=16
    ).eval()
    x = torch.randn(2, 300, 128)
    with torch.no_grad():
        out = chunk_logits(model, x)
        enc = model.encode(x)
        expected = model.mlp_head(pool_chunks(enc, 16, 3))
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="classification head"):
        chunk_logits(ssamba.create_model("ssamba_tiny", depth=2, input_tdim=300), x)


def test_chunk_labels_and_metrics():
    assert chunk_labels([0, 1, 2], 3).tolist() == [0, 1, 2]
    assert chunk_labels([0, 1, 2], 6, 0.5).tolist() == [0, 0, 1, 1, 2, 2]
    assert chunk_labels([0, 1, 2, 0], 2, 2.0).tolist() == [1, 0]  # the second at the centre
    assert chunk_labels([0, 1], 4).tolist() == [0, 1, IGNORE, IGNORE]
    preds = [torch.tensor([0, 1, 1, 0]), torch.tensor([2, 2])]
    labels = [torch.tensor([0, 1, 2, IGNORE]), torch.tensor([2, 0])]
    m = dasl_metrics(preds, labels, 3)
    assert m["chunks"] == 5 and m["recordings"] == 2
    assert m["acc"] == pytest.approx(3 / 5)
    assert m["clip_acc"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["balanced_acc"] == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_step_decay_follows_the_reference_milestones():
    s = StepDecay(factor=0.5, start=3, every=2)
    scales = []
    for epoch in range(8):
        s.end_epoch(epoch)
        scales.append(s.scale)
    assert scales == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]


# ---------------------------------------------------------------------------- builder
@pytest.mark.parametrize("mode", ["whole", "crop"])
def test_builder_labels_match_the_audio(clips, tmp_path, mode):
    result = build_dasl_mixtures(clips, tmp_path / "mix", 3, seconds=7, seed=1, mode=mode)
    assert result.classes == sorted(FREQS) and result.recordings == 3
    assert sum(result.label_counts.values()) == 21
    rows = list(csv.DictReader(open(result.manifest)))
    assert [r["path"] for r in rows] == [f"mixtures/mixtures_{i:05d}.wav" for i in range(3)]
    sources = json.loads(result.sources.read_text())["recordings"]
    changes = 0
    for row, src in zip(rows, sources, strict=True):
        labels = row["labels"].split(";")
        wave, sr = sf.read(tmp_path / "mix" / row["path"])
        assert sr == 16000 and wave.size == 7 * 16000 and len(labels) == 7
        for s, label in enumerate(labels):
            freq = _dominant(wave[s * sr : (s + 1) * sr])
            assert abs(freq - FREQS[label]) < 0.1 * FREQS[label], (row["path"], s, label, freq)
        changes += sum(a != b for a, b in zip(labels, labels[1:], strict=False))
        per_second = [seg["label"] for seg in src["segments"] for _ in range(seg["seconds"])]
        assert per_second == labels
        assert all(seg["path"].endswith(".wav") for seg in src["segments"])
    assert changes > 0
    items, classes = read_dasl_manifest(result.manifest)
    assert classes == sorted(FREQS) and items[0][1] == rows[0]["labels"].split(";")
    assert (tmp_path / "mix" / "class_labels_indices.csv").is_file()
    if mode == "whole":  # whole clips: a 2.5 s clip gives 2 seconds, in one segment
        segs = [seg for src in sources for seg in src["segments"]]
        assert all(seg["offset"] == 0 for seg in segs)
        assert {seg["seconds"] for seg in segs} <= {1, 2}


def test_builder_from_a_csv_and_class_list_conflicts(clips, tmp_path):
    lines = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted(clips.rglob("*.wav"))]
    (tmp_path / "clips.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "mix"
    assert _cli(["dasl-build", str(tmp_path / "clips.csv"), "-o", str(out), "-n", "2",
                 "--seconds", "3", "--name", "valid"]) == 0  # fmt: skip
    assert len(read_dasl_manifest(out / "valid.csv")[0]) == 2
    again = ["dasl-build", str(tmp_path / "clips.csv"), "-o", str(out), "-n", "3", "--seconds",
             "2", "--name", "valid"]  # fmt: skip
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        _cli(again)
    assert _cli([*again, "--overwrite"]) == 0
    assert len(read_dasl_manifest(out / "valid.csv")[0]) == 3
    only_two = ["path,label"] + [ln for ln in lines[1:] if not ln.endswith(",mid")]
    (tmp_path / "two.csv").write_text("\n".join(only_two) + "\n")
    with pytest.raises(ValueError, match="other classes"):
        build_dasl_mixtures(tmp_path / "two.csv", out, 1, seconds=2)


def test_dataset_pads_labels_and_frames(clips, tmp_path):
    result = build_dasl_mixtures(clips, tmp_path / "mix", 2, seconds=4, seed=3, mode="crop")
    with open(result.manifest, "a") as f:  # a shorter recording (its first 2 seconds)
        row = list(csv.DictReader(open(result.manifest)))[0]
        f.write(f"{row['path']},{';'.join(row['labels'].split(';')[:2])}\n")
    ds = DaslDataset(result.manifest, normalize="audioset", chunk_seconds=0.5)
    assert ds.seconds == 4 and ds.n_chunks == 8 and len(ds) == 3
    item = ds[2]
    assert item["fbank"].shape == (400, 128)
    assert item["labels"][4:].tolist() == [IGNORE] * 4
    assert item["labels"][:4].tolist() == ds[0]["labels"][:4].tolist()


# ---------------------------------------------------------------------------- training
def test_tiny_model_learns_per_second_labels(clips, tmp_path):
    for name, n, seed in (("train", 12, 0), ("valid", 3, 1), ("test", 4, 2)):
        build_dasl_mixtures(
            clips, tmp_path / "data", n, seconds=4, seed=seed, mode="crop", name=name
        )
    data, out = tmp_path / "data", tmp_path / "run"
    argv = ["dasl", "--depth", "2", "--train", str(data / "train.csv"),
            "--valid", str(data / "valid.csv"), "--test", str(data / "test.csv"),
            "--out", str(out), "--batch-size", "4", "--epochs", "3", "--lr", "2e-3",
            "--fstride", "32", "--freqm", "8", "--timem", "20", "--no-progress"]  # fmt: skip
    assert _cli(argv) == 0
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["chunks"] == 16 and test["acc"] > 0.6  # chance: 1/3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 9 and summary["test"]["acc"] == test["acc"]
    rows = list(csv.DictReader(open(out / "test_predictions.csv")))
    assert len(rows) == 4 and all(len(r["predicted"].split(";")) == 4 for r in rows)
    model = ssamba.load_model(out / "best")
    assert model.config.num_classes == 3 and model.config.input_tdim == 400
    assert json.loads((out / "best" / "dasl.json").read_text())["chunk_seconds"] == 1.0
    assert json.loads((out / "best" / "classes.json").read_text()) == sorted(FREQS)
