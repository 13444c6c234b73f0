"""Tests of the demo data builders (``ssamba data ...``) on tiny builds.

Each test is skipped, with the command that installs it, when its system package is absent.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssamba.data import read_manifest
from ssamba.demo import builders as B
from ssamba.demo import sources as S


def _skip_unless(ok: bool, *packages: str, pip: bool = False) -> None:
    if not ok:
        how = S.PIP_INSTALL_COMMAND if pip else f"apt-get update && {S.apt_command(*packages)}"
        pytest.skip(f"needs {' '.join(packages)}: {how}")


def need_tts() -> None:
    _skip_unless(bool(S.espeak_variants()), "espeak-ng")
    _skip_unless(bool(S.flite_voices()), "flite")


def need_soundfonts() -> None:
    found = S.find_soundfonts(require=False)
    _skip_unless("FluidR3_GM" in found, "fluid-soundfont-gm")
    _skip_unless("TimGM6mb" in found, "timgm6mb-soundfont")
    try:
        S.require_tinysoundfont()
    except S.MissingSourceError:
        _skip_unless(False, "tinysoundfont", pip=True)


def need_hedgewars() -> None:
    _skip_unless(bool(S.hedgewars_voice_packs(require=False)), "hedgewars-data")


def _meta(out: Path) -> list[dict]:
    with (out / "meta.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _check_wavs(out: Path, paths, min_rms: float = 1e-3, seconds: float | None = None) -> None:
    for rel in paths:
        x, sr = sf.read(out / rel, dtype="float32")
        assert sr == 16000 and x.ndim == 1, rel
        if seconds is not None:
            assert len(x) == round(seconds * 16000), rel
        assert np.isfinite(x).all()
        assert np.sqrt(np.mean(x**2)) > min_rms, f"{rel} is (nearly) silent"


def _check_manifests(result: dict, classes) -> None:
    full = read_manifest(result["manifest"])
    assert full.classes == sorted(classes)
    assert {ex.split for ex in full} == {"train", "valid", "test"}
    for split in B.SPLITS:
        m = read_manifest(result[split])
        assert len(m) > 0 and {ex.split for ex in m} == {split}
        assert all(ex.path.exists() for ex in m)
        assert len(read_manifest(result["manifest"], split=split)) == len(m)


@pytest.fixture(scope="module")
def keywords(tmp_path_factory):
    need_tts()
    out = tmp_path_factory.mktemp("kw")
    return out, B.build_keywords(out, per_class=3, seed=0, progress=False)


@pytest.fixture(scope="module")
def instruments(tmp_path_factory):
    need_soundfonts()
    out = tmp_path_factory.mktemp("ins")
    return out, B.build_instruments(out, per_class=3, seed=0, progress=False)


# --------------------------------------------------------------------------------------------------
# keywords


def test_keywords_clips_and_manifests(keywords):
    out, result = keywords
    _check_manifests(result, B.KEYWORD_CLASSES)
    rows = _meta(out)
    assert len(rows) == 3 * len(B.KEYWORD_CLASSES) == result["clips"]
    assert result["counts"]["train"]["yes"] == 1
    _check_wavs(out, [r["path"] for r in rows if r["label"] != "silence"], seconds=1.0)
    _check_wavs(out, [r["path"] for r in rows if r["label"] == "silence"], min_rms=1e-4)
    for r in rows:
        if r["label"] in B.KEYWORDS:
            assert r["word"] == r["label"]
        elif r["label"] == "unknown":
            assert r["word"] in B.UNKNOWN_WORDS


def test_keywords_test_voices_unseen(keywords):
    out, _ = keywords
    speakers = {s: set() for s in B.SPLITS}
    for r in _meta(out):
        if r["label"] != "silence":
            speakers[r["split"]].add(r["speaker"])
    assert not speakers["test"] & speakers["train"]
    assert not speakers["valid"] & speakers["train"]
    # and the whole voice pools, not just this sample
    pools = S.voices_by_split()
    spk = {s: {v.speaker for v in pools[s]} for s in B.SPLITS}
    assert not spk["test"] & spk["train"] and not spk["valid"] & spk["train"]
    assert not spk["test"] & spk["valid"]
    assert len(pools["test"]) >= 20 and len(pools["train"]) > len(pools["test"])


def test_keywords_cached_and_deterministic(keywords, tmp_path):
    out, first = keywords
    files = sorted(p for p in out.rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    t = time.perf_counter()
    again = B.build_keywords(out, per_class=3, seed=0, progress=False)
    assert again["rendered"] == 0 and again["reused"] == first["clips"]
    assert time.perf_counter() - t < 5
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes  # nothing rewritten
    # same seed elsewhere: same files, same bytes
    other = B.build_keywords(tmp_path, per_class=3, seed=0, progress=False)
    rel = sorted(str(p.relative_to(out)) for p in files if p.name != "build.json")
    rel2 = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()
        if p.name != "build.json"
    )  # fmt: skip
    assert rel == rel2 and other["rendered"] == first["clips"]
    for r in rel:
        assert (out / r).read_bytes() == (tmp_path / r).read_bytes(), r


def test_keywords_other_seed_differs_and_replaces_files(tmp_path):
    need_tts()
    B.build_keywords(tmp_path, per_class=3, seed=1, progress=False)
    a = (tmp_path / "wav/train/yes/yes_0000.wav").read_bytes()
    r = B.build_keywords(tmp_path, per_class=2, seed=2, progress=False)
    assert r["reused"] == 0 and r["clips"] == 2 * len(B.KEYWORD_CLASSES)
    wavs = list(tmp_path.rglob("*.wav"))
    assert len(wavs) == r["clips"]  # the previous build's extra files were removed
    assert (tmp_path / "wav/train/yes/yes_0000.wav").read_bytes() != a


def test_missing_tts_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(S, "espeak_variants", lambda: ())
    with pytest.raises(S.MissingSourceError, match=r"apt-get install -y espeak-ng"):
        B.build_keywords(tmp_path, per_class=1, progress=False)


# --------------------------------------------------------------------------------------------------
# instruments


def test_instruments_clips_and_unseen_programs(instruments):
    out, result = instruments
    _check_manifests(result, S.GM_FAMILIES)
    rows = _meta(out)
    assert len(rows) == 3 * len(S.GM_FAMILIES)
    _check_wavs(out, [r["path"] for r in rows], seconds=2.0)
    splits = S.instrument_program_splits()
    for r in rows:
        assert int(r["program"]) in splits[r["label"]][r["split"]]
        assert r["soundfont"] in ("FluidR3_GM", "TimGM6mb")
    for fam in splits.values():
        assert len(fam["train"]) + len(fam["valid"]) + len(fam["test"]) == 8
        assert not set(fam["test"]) & set(fam["train"]) and fam["test"] and fam["valid"]


def test_instruments_deterministic_and_cached(instruments, tmp_path):
    out, first = instruments
    again = B.build_instruments(out, per_class=3, seed=0, progress=False)
    assert again["rendered"] == 0
    B.build_instruments(tmp_path, per_class=3, seed=0, progress=False)
    for r in _meta(out):
        assert (out / r["path"]).read_bytes() == (tmp_path / r["path"]).read_bytes()


def test_silent_presets_are_redrawn():
    need_soundfonts()
    renderer = S.NoteRenderer(S.find_soundfonts())
    rng = np.random.default_rng(0)
    for program in (9, 43, 72):  # high glockenspiel, low contrabass, piccolo
        x, info = B._render_note_clip(renderer, "TimGM6mb", program, rng, 2.0)
        assert len(x) == 32000 and np.sqrt(np.mean(x**2)) > 1e-3
    # a key far out of range is silent in TimGM6mb's piccolo: the check must see that
    silent = renderer.render("TimGM6mb", 72, [(0.0, 1.0, 127, 100)], 1.0)
    loud = renderer.render("TimGM6mb", 72, [(0.0, 1.0, 84, 100)], 1.0)
    assert np.sqrt(np.mean(loud**2)) > np.sqrt(np.mean(silent**2))


# --------------------------------------------------------------------------------------------------
# speakers and the pretraining mix


def test_speakers_lines_disjoint(tmp_path):
    need_hedgewars()
    result = B.build_speakers(tmp_path, max_per_speaker=3, progress=False)
    rows = _meta(tmp_path)
    assert len({r["label"] for r in rows}) == len(S.hedgewars_voice_packs())
    assert len(rows) <= 3 * len(S.hedgewars_voice_packs())
    _check_wavs(tmp_path, [r["path"] for r in rows], seconds=2.0)
    lines = {s: {r["line"].lower() for r in rows if r["split"] == s} for s in B.SPLITS}
    assert not lines["test"] & lines["train"] and not lines["valid"] & lines["train"]
    assert read_manifest(result["manifest"]).num_classes == len({r["label"] for r in rows})


def test_pretrain_mix_uses_training_sources_only(tmp_path):
    need_tts()
    need_soundfonts()
    result = B.build_pretrain_mix(tmp_path, minutes=0.25, seconds=1.0, seed=0, progress=False)
    m = read_manifest(result["manifest"])
    assert result["list"] == result["manifest"]
    assert not m.labeled and len(m) == 15 == result["clips"]
    assert all(p.exists() for p in m.paths())
    rows = list(csv.DictReader((tmp_path / "meta.csv").open(newline="")))
    _check_wavs(tmp_path, [r["path"] for r in rows], seconds=1.0)
    assert {r["kind"] for r in rows} <= {"speech", "music", "recorded"}
    train_keys = {v.key for v in S.voices_by_split()["train"]}
    allowed = set(B.pretrain_programs())
    held_out = {p for fam in S.instrument_program_splits().values() for p in fam["test"]}
    for r in rows:
        if r["kind"] == "speech":
            assert r["source"] in train_keys
        elif r["kind"] == "music":
            program = int(r["source"].split(":")[1])
            assert program in allowed and program not in held_out
        else:
            assert str(S.HEDGEWARS_VOICES) not in r["source"]
    again = B.build_pretrain_mix(tmp_path, minutes=0.25, seconds=1.0, seed=0, progress=False)
    assert again["rendered"] == 0


# --------------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    from ssamba.cli.data import register

    p = argparse.ArgumentParser(prog="ssamba")
    register(p.add_subparsers())
    return p


def test_cli_sources_and_build(tmp_path, capsys):
    need_soundfonts()
    args = _parser().parse_args(["data", "sources"])
    assert args.func(args) == 0
    assert "FluidR3_GM" in capsys.readouterr().out
    args = _parser().parse_args(
        ["data", "instruments", "--out", str(tmp_path), "--per-class", "2", "--no-progress"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "instruments: 20 clips" in out and "piano" in out
    assert len(read_manifest(tmp_path / "train.csv")) > 0


def test_cli_missing_source_is_an_error_line(monkeypatch, tmp_path, capsys):
    from ssamba.cli import main

    monkeypatch.setattr(S, "find_soundfonts", lambda require=True: (_ for _ in ()).throw(
        S.MissingSourceError("soundfont TimGM6mb.sf2", "timgm6mb-soundfont")))  # fmt: skip
    assert main(["data", "instruments", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "timgm6mb-soundfont" in err


def test_cli_data_refuses_a_folder_that_is_not_a_build(tmp_path, capsys):
    from ssamba.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["data", "speakers", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").is_file()


def test_demo_margins_and_verdicts():
    from ssamba.demo.pipeline import margins, margins_text

    def row(probe):
        return {"probe": probe, "finetune": 0.1}

    report = {
        "results": {
            "keywords": {
                "log-mel + logistic regression": {"probe": 0.40},
                "SSAMBA pretrained": row(0.50),
                "SSAMBA random": row(0.45),
                "SSAST pretrained": row(0.55),
            },
            "instruments": {
                "log-mel + logistic regression": {"probe": 0.30},
                "SSAMBA pretrained": row(0.35),
                "SSAMBA random": row(0.35),
                "SSAST pretrained": row(0.20),
            },
        },
        "test_clips": {"keywords": 240, "instruments": 160},
    }
    report["margins"] = margins(report)
    assert report["margins"]["keywords"] == {
        "log-mel + logistic regression": 10.0,
        "SSAMBA random": 5.0,
        "SSAST pretrained": -5.0,
    }
    assert report["margins"]["instruments"]["SSAST pretrained"] == 15.0
    text = margins_text(report)
    assert "beats log-mel + logistic regression on every held-out test set" in text
    assert "does NOT beat SSAMBA random on: instruments" in text  # a tie is not a win
    assert "does NOT beat SSAST pretrained on: keywords" in text
    assert "keywords (240 test clips, one accuracy's standard error ~3.2)" in text


def test_demo_probe_layers_must_be_all_or_last(tmp_path):
    from ssamba.demo.pipeline import DemoPlan, probe

    with pytest.raises(ValueError, match="probe_layers must be 'all' or 'last'"):
        probe(None, {}, tmp_path, DemoPlan(probe_layers="first"), progress=False)


def test_demo_pipeline_end_to_end_at_a_tiny_budget(tmp_path):
    """The whole `ssamba demo` (data, pretraining, probes, fine-tuning, report) at ~2% budget."""
    from ssamba.demo.pipeline import TASKS, DemoPlan, build_data, pretrain_model, run_demo

    need_tts()
    need_soundfonts()
    report = run_demo(tmp_path / "demo", budget=0.02, progress=False)
    labels = {
        "log-mel + logistic regression",
        "SSAMBA pretrained",
        "SSAMBA random",
        "SSAST pretrained",
        "SSAST random",
    }
    for task in TASKS:
        assert set(report["results"][task]) == labels
        for label, row in report["results"][task].items():
            assert 0.0 <= row["probe"] <= 1.0
            if label != "log-mel + logistic regression":
                assert 0.0 <= row["finetune"] <= 1.0
    for name in ("results.md", "results.json", "README.md", "accuracy.png"):
        assert (tmp_path / "demo" / name).is_file()
    assert set(report["margins"]) == set(TASKS)
    # a re-run reuses a pretrained model only when its settings and data are unchanged
    plan = DemoPlan().scaled(0.02)
    data = build_data(tmp_path / "demo", plan, progress=False)
    stats = (report["normalization"]["mean"], report["normalization"]["std"])
    weights = tmp_path / "demo" / "runs" / "pretrain_ssamba" / "final" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    pretrain_model("ssamba", data, stats, tmp_path / "demo", plan, progress=False)
    assert weights.stat().st_mtime_ns == before
    plan.lr *= 2
    pretrain_model("ssamba", data, stats, tmp_path / "demo", plan, progress=False)
    assert weights.stat().st_mtime_ns != before
    assert "linear probe, test accuracy margin" in (tmp_path / "demo" / "README.md").read_text()
