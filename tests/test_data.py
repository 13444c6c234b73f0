"""Manifests, data checks, dataset statistics, the training dataset and the samplers."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ssamba import audio
from ssamba.data import (
    AudioDataset,
    Example,
    Manifest,
    ManifestError,
    ManifestWarning,
    check_data,
    compute_stats,
    item_generator,
    make_loader,
    make_sampler,
    read_class_list,
    read_manifest,
    set_epoch,
)
from ssamba.data.dataset import _beta, _uniform, window_samples

# --------------------------------------------------------------------------------------------------
# Manifests


def test_folder_per_class(tone_folder):
    m = read_manifest(tone_folder)
    assert m.format == "folder"
    assert m.classes == ["high", "low", "mid"]
    assert len(m) == 9 and not m.multilabel and m.labeled
    assert m.source == tone_folder
    for k, ex in enumerate(m):
        assert ex.path.is_file() and ex.path.parent.name == ex.labels[0]
        y = m.targets(k)
        assert y.dtype == torch.float32 and y.shape == (3,) and y.sum() == 1
        assert y[m.classes.index(ex.labels[0])] == 1
    assert m.class_counts() == [3, 3, 3]


def test_unlabeled_folder_recursive_and_ignore_labels(tmp_path, make_wav, tone_folder):
    make_wav(tmp_path / "u" / "a.wav", 0.1)
    make_wav(tmp_path / "u" / "sub" / "deeper" / "b.flac", 0.1)
    (tmp_path / "u" / "notes.txt").write_text("not audio")
    m = read_manifest(tmp_path / "u")
    assert m.format == "audio-folder" and not m.labeled and m.classes == []
    assert [p.name for p in m.paths()] == ["a.wav", "b.flac"]
    assert all(ex.labels == () for ex in m)

    m2 = read_manifest(tone_folder, ignore_labels=True)
    assert not m2.labeled and len(m2) == 9


def test_csv_relative_paths_multilabel_and_splits(tmp_path, make_wav):
    data = tmp_path / "data"
    for name in ("a", "b", "c", "d"):
        make_wav(data / "audio" / f"{name}.wav", 0.1)
    (data / "meta.csv").write_text(
        "path,label,split\n"
        "audio/a.wav,dog,train\n"
        'audio/b.wav,"dog,cat",train\n'
        "audio/c.wav,cat;bird,test\n"
        f"{(data / 'audio' / 'd.wav').as_posix()},bird,test\n"
    )
    m = read_manifest(data / "meta.csv")
    assert m.format == "csv"
    assert m.classes == ["bird", "cat", "dog"]  # sorted names
    assert m.multilabel
    assert m[0].path == data / "audio" / "a.wav"  # relative to the manifest, not the cwd
    assert m[3].path == data / "audio" / "d.wav"
    assert m[1].labels == ("dog", "cat") and m[2].labels == ("cat", "bird")
    assert m.targets(1).tolist() == [0.0, 1.0, 1.0]

    with pytest.warns(ManifestWarning, match="no examples: 'bird'"):
        train = read_manifest(data / "meta.csv", split="train")
    with pytest.warns(ManifestWarning, match="no examples: 'dog'"):
        test = read_manifest(data / "meta.csv", split="test")
    assert [e.split for e in train] == ["train", "train"] and len(test) == 2
    assert train.classes == test.classes == m.classes  # classes from the whole file
    assert train.multilabel and test.multilabel
    with pytest.raises(ManifestError, match="split 'val'"):
        read_manifest(data / "meta.csv", split="val")


def test_csv_without_label_column_is_unlabeled(tmp_path):
    (tmp_path / "x.csv").write_text("path\na.wav\nb.wav\n")
    m = read_manifest(tmp_path / "x.csv")
    assert not m.labeled and len(m) == 2


@pytest.mark.parametrize(
    "text, match",
    [
        ("file_name,label\na.wav,x\n", r"x\.csv: line 1: no 'path' column"),
        ("path,label\na.wav,x\nb.wav,y,extra\n", r"x\.csv: line 3: 3 field\(s\)"),
        ("path,label\na.wav,x\n,y\n", r"x\.csv: line 3: empty path"),
        ("path,label\n", r"x\.csv: empty manifest"),
        ("path,label\na.wav,x\nb.wav,\n", r"x\.csv: line 3: no label"),
        ("", r"x\.csv: empty manifest"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path, text, match):
    (tmp_path / "x.csv").write_text(text)
    with pytest.raises(ManifestError, match=match):
        read_manifest(tmp_path / "x.csv")


def test_explicit_classes_order_unknown_label_and_empty_class(tmp_path):
    (tmp_path / "x.csv").write_text("path,label\na.wav,dog\nb.wav,cat\n")
    m = read_manifest(tmp_path / "x.csv", classes=["dog", "cat"])
    assert m.classes == ["dog", "cat"]
    assert m.targets(0).tolist() == [1.0, 0.0]
    with pytest.warns(ManifestWarning, match="1 class.*'bird'"):
        m = read_manifest(tmp_path / "x.csv", classes=["bird", "cat", "dog"])
    assert m.targets(0).tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ManifestError, match=r"x\.csv: line 3: unknown label 'cat'"):
        read_manifest(tmp_path / "x.csv", classes=["dog"])


def _write_ssast(folder: Path, entries, with_csv: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if with_csv:
        (folder / "class_labels_indices.csv").write_text(
            "index,mid,display_name\n"
            '0,/m/09x0r,"Speech"\n'
            '1,/m/05zppz,"Male speech, man speaking"\n'
            "2,/m/02zsn,Female speech\n"
        )
    path = folder / "train_data.json"
    path.write_text(json.dumps({"data": entries}, indent=1))
    return path


def test_ssast_json_with_class_csv(tmp_path, make_wav):
    make_wav(tmp_path / "ds" / "wavs" / "x.wav", 0.1)
    path = _write_ssast(
        tmp_path / "ds",
        [
            {"wav": "wavs/x.wav", "labels": "/m/02zsn,/m/09x0r"},
            {"wav": "/abs/y.wav", "labels": "/m/05zppz"},
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ManifestWarning)  # every class is used: no warning
        m = read_manifest(path)
    assert m.format == "json"
    assert m.classes == ["/m/09x0r", "/m/05zppz", "/m/02zsn"]  # index order, not sorted
    assert m.display_names["/m/05zppz"] == "Male speech, man speaking"
    assert m.multilabel
    assert m[0].path == tmp_path / "ds" / "wavs" / "x.wav"
    assert m[1].path == Path("/abs/y.wav")
    assert m.targets(0).tolist() == [1.0, 0.0, 1.0]
    assert m.targets(1).tolist() == [0.0, 1.0, 0.0]

    mids, names = read_class_list(tmp_path / "ds" / "class_labels_indices.csv")
    assert mids == m.classes and names["/m/09x0r"] == "Speech"
    # the csv passed explicitly (e.g. a test JSON elsewhere)
    other = _write_ssast(tmp_path / "other", [{"wav": "z.wav", "labels": "/m/02zsn"}], False)
    with pytest.warns(ManifestWarning, match="2 class"):
        m2 = read_manifest(other, classes=tmp_path / "ds" / "class_labels_indices.csv")
    assert m2.classes == m.classes and m2.targets(0).tolist() == [0.0, 0.0, 1.0]
    assert not m2.multilabel and m2.display_names == m.display_names


def test_ssast_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [\n {"wav": "a.wav", "labels": "x"},\n {"wav": "b.wav" "labels"}\n]}')
    with pytest.raises(ManifestError, match=r"bad\.json: line 3, column \d+: malformed JSON"):
        read_manifest(bad)

    path = _write_ssast(tmp_path / "a", [{"wav": "a.wav", "labels": "/m/09x0r"}, {"labels": "x"}])
    with pytest.raises(ManifestError, match=r"train_data\.json: data\[1\]: missing 'wav'"):
        read_manifest(path)

    path = _write_ssast(
        tmp_path / "b", [{"wav": "a.wav", "labels": "/m/09x0r"}, {"wav": "b", "labels": "/m/x"}]
    )
    with pytest.raises(ManifestError, match=r"train_data\.json: data\[1\]: unknown label '/m/x'"):
        read_manifest(path)

    path = _write_ssast(tmp_path / "c", [])
    with pytest.raises(ManifestError, match="empty manifest"):
        read_manifest(path)

    (tmp_path / "d.json").write_text('{"items": []}')
    with pytest.raises(ManifestError, match=r"d\.json: expected"):
        read_manifest(tmp_path / "d.json")

    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "missing.json")


def test_read_class_list_reads_every_class_list_format(tmp_path):
    """One reader for class_labels_indices.csv, classes.json and a training manifest."""
    _write_ssast(tmp_path / "ds", [{"wav": "a.wav", "labels": "/m/02zsn"}])
    csv_path = tmp_path / "ds" / "class_labels_indices.csv"
    names, display = read_class_list(csv_path)
    assert names == ["/m/09x0r", "/m/05zppz", "/m/02zsn"] and display["/m/09x0r"] == "Speech"
    # an SSAST JSON manifest: the csv next to it gives the classes
    with pytest.warns(ManifestWarning):
        assert read_class_list(tmp_path / "ds" / "train_data.json") == (names, display)

    (tmp_path / "classes.json").write_text('["dog", "cat"]')
    assert read_class_list(tmp_path / "classes.json") == (["dog", "cat"], {})
    (tmp_path / "wrapped.json").write_text('{"classes": ["b", "a"]}')
    assert read_class_list(tmp_path / "wrapped.json") == (["b", "a"], {})
    (tmp_path / "train.csv").write_text("path,label\na.wav,dog\nb.wav,cat\n")
    assert read_class_list(tmp_path / "train.csv") == (["cat", "dog"], {})
    # a manifest's `classes` may be any of them
    m = read_manifest(tmp_path / "train.csv", classes=tmp_path / "classes.json")
    assert m.classes == ["dog", "cat"]

    (tmp_path / "dup.json").write_text('["a", "a"]')
    (tmp_path / "bad.csv").write_text("name,id\nx,1\n")
    (tmp_path / "unlabeled.txt").write_text("a.wav\n")
    for name, match in [
        ("missing.csv", r"missing\.csv: class list not found"),
        ("dup.json", r"dup\.json: duplicate class 'a'"),
        ("bad.csv", r"bad\.csv: line 1: missing column\(s\) index, mid"),
        ("unlabeled.txt", r"unlabeled\.txt: no labels, so no class list"),
    ]:
        with pytest.raises(ManifestError, match=match):
            read_class_list(tmp_path / name)


def test_path_list(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "files.txt").write_text("# pretraining files\na.wav\n\n/abs/b.flac\n")
    m = read_manifest(tmp_path / "lists" / "files.txt")
    assert m.format == "list" and not m.labeled
    assert m.paths() == [tmp_path / "lists" / "a.wav", Path("/abs/b.flac")]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ManifestError, match=r"empty\.txt: empty manifest"):
        read_manifest(tmp_path / "empty.txt")


# --------------------------------------------------------------------------------------------------
# check_data and compute_stats


def test_check_data_reports_exactly_the_bad_files(
    tone_folder, make_wav, write_corrupt, write_empty_wav, write_nonfinite_wav
):
    bad = {
        write_corrupt(tone_folder / "low" / "corrupt.wav"): "cannot decode",
        write_empty_wav(tone_folder / "mid" / "empty.wav"): "no audio samples",
        write_nonfinite_wav(tone_folder / "high" / "nan.wav"): "NaN",
    }
    resampled = make_wav(tone_folder / "high" / "sr22k.wav", 0.3, 1000.0, sr=22050)
    report = check_data(read_manifest(tone_folder), progress=False)
    assert report.num_files == 13 and report.num_ok == 10 and not report.ok
    assert {p for p, _ in report.problems} == set(bad)
    for p, problem in report.problems:
        assert bad[p] in problem
    assert report.resampled == [(resampled, 22050)]
    assert report.sample_rates == {16000: 9, 22050: 1}
    text = report.summary()
    for p in bad:
        assert str(p) in text
    assert "3 classes" in text and "resampled" in text
    json.dumps(report.to_dict())


def test_check_data_and_stats_with_workers(tone_folder, write_corrupt):
    write_corrupt(tone_folder / "low" / "bad.wav")
    m = read_manifest(tone_folder)
    serial = check_data(m, progress=False)
    parallel = check_data(m, progress=False, num_workers=2)
    assert parallel.to_dict() == serial.to_dict() and len(serial.problems) == 1
    kw = dict(progress=False, on_bad_file="skip", target_length=20)
    assert compute_stats(m, num_workers=2, **kw) == compute_stats(m, **kw)


def test_check_data_durations(tmp_path, make_wav):
    make_wav(tmp_path / "u" / "ok.wav", 0.5)
    short = make_wav(tmp_path / "u" / "tiny.wav", 0.01)  # 160 samples: no 25 ms frame
    report = check_data(read_manifest(tmp_path / "u"), progress=False)
    assert [(p, s.split(":")[0]) for p, s in report.problems] == [(short, "too short")]
    report = check_data(read_manifest(tmp_path / "u"), min_seconds=1.0, progress=False)
    assert len(report.problems) == 2
    assert report.min_seconds is None and report.total_seconds == 0.0
    report = check_data(read_manifest(tmp_path / "u"), min_seconds=0.2, progress=False)
    assert report.max_seconds == pytest.approx(0.5)


def test_check_data_missing_file(tmp_path, make_wav):
    make_wav(tmp_path / "a.wav", 0.2)
    (tmp_path / "m.csv").write_text("path,label\na.wav,x\nmissing.wav,y\n")
    report = check_data(tmp_path / "m.csv", progress=False)
    assert report.problems == [(tmp_path / "missing.wav", "file not found")]


def _all_fbanks(manifest, target_length=None):
    return [
        audio.fbank(audio.load_audio(ex.path), target_length=target_length).double().numpy()
        for ex in manifest
    ]


@pytest.mark.parametrize("target_length", [None, 40])
def test_compute_stats_matches_numpy(tone_folder, make_wav, target_length):
    make_wav(tone_folder / "low" / "long.wav", 0.8, 300.0, sr=8000)  # resampled, > 40 frames
    m = read_manifest(tone_folder)
    stats = compute_stats(m, target_length=target_length, progress=False)
    values = np.concatenate(_all_fbanks(m, target_length))
    assert stats["files"] == 10 and stats["skipped"] == 0
    assert stats["frames"] == values.shape[0]
    assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9, abs=1e-9)
    assert stats["std"] == pytest.approx(values.std(), rel=1e-9)
    # usable as a normalisation
    assert audio.normalize_stats(stats) == pytest.approx((stats["mean"], stats["std"]))


def test_compute_stats_bad_file_policy(tone_folder, write_corrupt):
    bad = write_corrupt(tone_folder / "mid" / "bad.wav")
    with pytest.raises(audio.AudioError, match="bad.wav"):
        compute_stats(tone_folder, progress=False)
    stats = compute_stats(tone_folder, progress=False, on_bad_file="skip")
    assert stats["files"] == 9 and stats["skipped"] == 1
    bad.unlink()
    assert compute_stats(tone_folder, progress=False) == stats | {"skipped": 0}
    with pytest.raises(ValueError, match="on_bad_file"):
        compute_stats(tone_folder, on_bad_file="ignore")


# --------------------------------------------------------------------------------------------------
# AudioDataset


def test_eval_item_is_plain_front_end(tone_folder):
    ds = AudioDataset(tone_folder, target_length=64, normalize="esc50", freqm=20, timem=20)
    item = ds[4]
    ex = ds.manifest[4]
    expected = audio.fbank(audio.load_audio(ex.path), target_length=64, normalize="esc50")
    assert set(item) == {"fbank", "target", "index", "skipped"}
    assert item["fbank"].dtype == torch.float32 and item["fbank"].shape == (64, 128)
    torch.testing.assert_close(item["fbank"], expected, rtol=0, atol=0)  # no augmentation
    assert torch.equal(item["target"], ds.manifest.targets(4))
    assert item["index"] == 4 and item["skipped"] == 0


def test_unlabeled_items_have_no_target(tone_folder):
    ds = AudioDataset(read_manifest(tone_folder, ignore_labels=True), target_length=32)
    assert set(ds[0]) == {"fbank", "index", "skipped"}


def _train_ds(root, **kw):
    args = dict(
        target_length=48, normalize="audioset", train=True, freqm=24, timem=16, mixup=0.5,
        noise=True, seed=3,
    )  # fmt: skip
    args.update(kw)
    return AudioDataset(root, **args)


def test_determinism_per_seed_epoch_index(tone_folder):
    a, b = _train_ds(tone_folder), _train_ds(tone_folder)
    first = [a[i] for i in range(9)]
    for i in reversed(range(9)):  # any access order gives the same items
        assert torch.equal(b[i]["fbank"], first[i]["fbank"])
        assert torch.equal(b[i]["target"], first[i]["target"])
    assert torch.equal(a[2]["fbank"], first[2]["fbank"])  # repeatable
    a.set_epoch(1)
    assert not torch.equal(a[2]["fbank"], first[2]["fbank"])
    a.set_epoch(0)
    assert torch.equal(a[2]["fbank"], first[2]["fbank"])
    c = _train_ds(tone_folder, seed=4)
    assert not torch.equal(c[2]["fbank"], first[2]["fbank"])


def test_loader_independent_of_num_workers(tone_folder):
    def run(workers):
        ds = _train_ds(tone_folder)
        loader = make_loader(ds, batch_size=4, seed=11, num_workers=workers)
        out = []
        for epoch in (0, 1):
            set_epoch(loader, epoch)
            out.append([(b["index"], b["fbank"], b["target"]) for b in loader])
        return out

    zero, two = run(0), run(2)
    for e0, e2 in zip(zero, two, strict=True):
        assert len(e0) == 3
        for (i0, f0, t0), (i2, f2, t2) in zip(e0, e2, strict=True):
            assert torch.equal(i0, i2) and torch.equal(f0, f2) and torch.equal(t0, t2)
    assert not torch.equal(zero[0][0][0], zero[1][0][0])  # epochs have different orders


def _expected_mix(ds, index):
    """Redo the mixup draws of ``ds[index]`` (same generator sequence as the dataset)."""
    g = item_generator(ds.seed, ds.epoch, index)
    u = _uniform(g)
    j = int(torch.randint(len(ds), (), generator=g))
    lam = _beta(g, 10.0, 10.0)
    return u < ds.mixup, j, lam


def test_mixup_mixes_waveforms_and_labels(tone_folder, make_wav):
    make_wav(tone_folder / "low" / "long.wav", 0.9, 250.0)  # a partner longer than the others
    ds = _train_ds(
        tone_folder, mixup=1.0, freqm=0, timem=0, noise=False, normalize=None, window="start"
    )  # the start of each file, so that whole files give the expected mix
    lams = []
    for i in range(len(ds)):
        mixed, j, lam = _expected_mix(ds, i)
        assert mixed
        lams.append(lam)
        item = ds[i]
        y = lam * ds.manifest.targets(i) + (1 - lam) * ds.manifest.targets(j)
        torch.testing.assert_close(item["target"], y)
        assert item["target"].sum().item() == pytest.approx(1.0)
        n = window_samples(48)  # a training item reads only the window it keeps
        w1 = audio.load_audio(ds.manifest[i].path)[:n]
        w2 = audio.load_audio(ds.manifest[j].path)[:n]
        w1, w2 = w1 - w1.mean(), w2 - w2.mean()
        w2 = torch.nn.functional.pad(w2, (0, max(0, w1.numel() - w2.numel())))[: w1.numel()]
        expected = audio.fbank(lam * w1 + (1 - lam) * w2, target_length=48)
        torch.testing.assert_close(item["fbank"], expected)
    assert all(0.15 < lam < 0.85 for lam in lams)  # Beta(10, 10) stays near 0.5
    assert len(set(lams)) == len(lams)

    off = _train_ds(tone_folder, mixup=0.0, freqm=0, timem=0, noise=False)
    assert all(off[i]["target"].max() == 1.0 for i in range(len(off)))
    evaluation = _train_ds(tone_folder, mixup=1.0, train=False)
    assert torch.equal(evaluation[0]["target"], evaluation.manifest.targets(0))


def test_spec_augment_only_when_training(tone_folder):
    kw = dict(mixup=0.0, noise=False, normalize=None, freqm=48, timem=24, target_length=48)
    kw["window"] = "start"  # the same frames as evaluation, so that only the masks differ
    train = _train_ds(tone_folder, **kw)
    evaluation = _train_ds(tone_folder, **kw, train=False)
    masked_any = False
    for i in range(len(train)):
        plain = evaluation[i]["fbank"]
        aug = train[i]["fbank"]
        assert (plain != 0).all()  # log energies of noisy tones are never exactly 0
        changed = aug != plain
        assert (aug[changed] == 0).all()  # masks only zero values
        masked_any |= bool(changed.any())
        zero_cols = (aug == 0).all(0).sum().item()  # frequency mask: whole bins
        zero_rows = (aug == 0).all(1).sum().item()  # time mask: whole frames
        assert zero_cols < 48 and zero_rows < 24
    assert masked_any


def test_noise_and_roll(tone_folder):
    kw = dict(mixup=0.0, freqm=0, timem=0, target_length=48)
    noisy = _train_ds(tone_folder, **kw, noise=True)
    clean = _train_ds(tone_folder, **kw, noise=False)
    shifts = set()
    for i in range(len(noisy)):
        out, base = noisy[i]["fbank"], clean[i]["fbank"]
        fits = [
            s for s in range(-10, 10) if ((d := torch.roll(out, -s, 0) - base) >= 0).all()
            and (d < 0.1).all()
        ]  # fmt: skip
        assert fits, "output is not roll(fbank + U(0,1) * r / 10) for any shift in [-10, 10)"
        shifts.update(fits)
    assert len(shifts) > 1


def test_bad_file_policies(tone_folder, write_corrupt, caplog):
    bad = write_corrupt(tone_folder / "low" / "0.wav")  # replace a good file
    m = read_manifest(tone_folder)
    k = m.paths().index(bad)
    strict = AudioDataset(m, target_length=32)
    with pytest.raises(audio.AudioError, match="0.wav"):
        strict[k]
    assert strict[k + 1]["skipped"] == 0

    ds = AudioDataset(m, target_length=32, on_bad_file="skip", seed=5, substitute=True)
    with caplog.at_level(logging.WARNING, logger="ssamba.data"):
        item = ds[k]
        again = ds[k]
    assert item["skipped"] == 1 and again["skipped"] == 1 and ds.skipped == 2
    assert sum(str(bad) in r.getMessage() for r in caplog.records) == 1  # logged once
    assert torch.equal(item["fbank"], again["fbank"])
    assert item["fbank"].abs().sum() > 0  # a real substitute, not silence
    sub = [j for j in range(len(m)) if j != k and torch.equal(ds[j]["fbank"], item["fbank"])]
    assert len(sub) == 1 and torch.equal(item["target"], m.targets(sub[0]))
    # deterministic across instances (a fresh process would choose the same substitute)
    fresh = AudioDataset(m, target_length=32, on_bad_file="skip", seed=5, substitute=True)
    assert torch.equal(fresh[k]["fbank"], item["fbank"])
    # evaluation (train=False) flags the item instead: left out of metrics, not substituted
    flagged = AudioDataset(m, target_length=32, on_bad_file="skip")
    assert flagged[k]["bad"] and flagged[k]["fbank"].abs().sum() == 0
    assert not flagged[k + 1]["bad"] and flagged[k + 1]["skipped"] == 0


def test_too_short_file_is_bad(tmp_path, make_wav):
    make_wav(tmp_path / "u" / "ok.wav", 0.3)
    make_wav(tmp_path / "u" / "tiny.wav", 0.005)
    with pytest.raises(audio.AudioError, match="tiny.wav: too short"):
        AudioDataset(tmp_path / "u", target_length=16)[1]
    assert AudioDataset(tmp_path / "u", target_length=16, on_bad_file="skip")[1]["skipped"] == 1


# --------------------------------------------------------------------------------------------------
# Samplers


@pytest.mark.parametrize("n, world", [(10, 3), (12, 4), (5, 1), (3, 4)])
def test_sampler_shards_cover_the_epoch(n, world):
    shards = [
        list(make_sampler(n, seed=1, epoch=2, rank=r, world_size=world)) for r in range(world)
    ]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)
    assert len(make_sampler(n, 1, 2, 0, world)) == per_rank
    union = [i for s in shards for i in s]
    assert set(union) == set(range(n))
    assert len(union) - len(set(union)) == per_rank * world - n  # duplicates: padding only
    again = [list(make_sampler(n, seed=1, epoch=2, rank=r, world_size=world)) for r in range(world)]
    assert again == shards


def test_sampler_order_per_seed_and_epoch():
    base = list(make_sampler(50, seed=0, epoch=0))
    assert sorted(base) == list(range(50)) and base != list(range(50))
    assert list(make_sampler(50, seed=0, epoch=1)) != base
    assert list(make_sampler(50, seed=1, epoch=0)) != base
    s = make_sampler(50, seed=0, epoch=1)
    s.set_epoch(0)
    assert list(s) == base
    assert list(make_sampler(7, shuffle=False, world_size=2, rank=1)) == [1, 3, 5, 0]
    with pytest.raises(ValueError):
        make_sampler(5, rank=2, world_size=2)


def _imbalanced_manifest():
    counts = {"common": 80, "medium": 15, "rare": 5}
    examples = [Example(Path(f"{c}{k}.wav"), (c,)) for c, n in counts.items() for k in range(n)]
    return Manifest(examples, sorted(counts), multilabel=False)


def test_balanced_sampling_equalises_classes():
    m = _imbalanced_manifest()
    s = make_sampler(m, seed=0, epoch=0, balanced=True, num_samples=30000)
    draws = list(s)
    assert len(draws) == 30000 and draws == list(make_sampler(m, 0, 0, balanced=True,
                                                              num_samples=30000))  # fmt: skip
    freq = np.bincount([m.label_indices(i)[0] for i in draws], minlength=3) / len(draws)
    np.testing.assert_allclose(freq, 1 / 3, atol=0.02)
    # default size: one epoch's worth; sharded like the unweighted sampler
    shards = [list(make_sampler(m, 0, 0, r, 3, balanced=True)) for r in range(3)]
    assert [len(x) for x in shards] == [34, 34, 34]
    with pytest.raises(ValueError, match="labeled"):
        make_sampler(100, balanced=True)
    w = torch.zeros(100)
    w[7] = 1.0
    assert set(make_sampler(100, weights=w)) == {7}
