"""Tests of the demo data builders (``ssamba data ...``) on tiny builds.

Each test is skipped, with the command that installs it, when its system package is absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssamba.data import read_manifest
from ssamba.demo import builders as B
from ssamba.demo import pretrain_mix
from ssamba.demo import sources as S
from ssamba.errors import UsageError


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
        x, info = B.render_note_clip(renderer, "TimGM6mb", program, rng, 2.0)
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


def need_mix_sources() -> None:
    need_tts()
    need_soundfonts()
    need_hedgewars()


def _wav_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.wav"))}


def test_pretrain_mix_deterministic_growable_and_prefix(tmp_path, monkeypatch):
    """Clip i depends on (seed, i) only: a build grows by rendering only its new clips, equals
    a fresh build of the same size (whatever the number of threads), and shrinks back."""
    need_mix_sources()
    # several chunks, so the threads share the work
    monkeypatch.setattr(pretrain_mix, "MIX_CHUNK", 5)
    grown, fresh = tmp_path / "grown", tmp_path / "fresh"
    kw = {"seconds": 1.0, "seed": 3, "progress": False}
    first = B.build_pretrain_mix(grown, minutes=0.2, workers=2, **kw)
    assert first["rendered"] == 12 and first["reused"] == 0
    mtimes = {p: p.stat().st_mtime_ns for p in grown.rglob("*.wav")}
    more = B.build_pretrain_mix(grown, minutes=0.4, workers=2, **kw)
    assert more["rendered"] == 12 and more["reused"] == 12 and more["clips"] == 24
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # the first 12 untouched
    assert json.loads((grown / "build.json").read_text())["minutes"] == 0.4
    B.build_pretrain_mix(fresh, minutes=0.4, workers=1, **kw)
    _check_wavs(fresh, [r["path"] for r in _meta(fresh)], seconds=1.0)
    assert _wav_bytes(grown) == _wav_bytes(fresh) and len(_wav_bytes(fresh)) == 24
    assert _meta(grown) == _meta(fresh)  # sources of reused clips kept from the first run
    assert (grown / "manifest.txt").read_text() == (fresh / "manifest.txt").read_text()
    # shrinking drops the clips past the end; the same arguments again render nothing
    less = B.build_pretrain_mix(grown, minutes=0.2, workers=2, **kw)
    assert less["rendered"] == 0 and len(_wav_bytes(grown)) == 12 == len(_meta(grown))
    assert _wav_bytes(grown) == {
        k: v for k, v in _wav_bytes(fresh).items() if k in _wav_bytes(grown)
    }
    # another seed is another build: nothing reused, the old files removed
    other = B.build_pretrain_mix(grown, minutes=0.2, workers=2, **{**kw, "seed": 4})
    assert other["reused"] == 0 and len(_wav_bytes(grown)) == 12
    assert _wav_bytes(grown) != {
        k: v for k, v in _wav_bytes(fresh).items() if k in _wav_bytes(grown)
    }


def _mix_sources_used(params: dict) -> list[dict]:
    return [params, *params.get("parts", ())]


def test_pretrain_mix_plan_uses_training_sources_only():
    """Over a plan of 3000 clips (240 min at 5 s; planning renders nothing): only the keywords
    task's training voices, the instruments task's training programs (or 80..127, or drum kits)
    and no hedgewars voice-pack recording; every kind and music style is drawn."""
    need_mix_sources()
    src = B._pretrain_sources()
    kinds, w = B._pretrain_kinds(B.PRETRAIN_SHARES, src)
    clips = B._plan_pretrain_mix(0, 3000, 5.0, kinds, w, src)
    by_split = S.voices_by_split()
    held_voices = {v.key for s in ("valid", "test") for v in by_split[s]}
    train_voices = {v.key for v in by_split["train"]}
    held_programs = {
        p for fam in S.instrument_program_splits().values() for s in ("valid", "test")
        for p in fam[s]
    }  # fmt: skip
    allowed = set(B.pretrain_programs())
    assert not allowed & held_programs and held_voices and not train_voices & held_voices
    parts = [q for c in clips for q in _mix_sources_used(c.params)]
    seen_voices = {q["_request"].voice.key for q in parts if q["kind"] == "speech"}
    assert seen_voices <= train_voices and len(seen_voices) > 300
    music = [q for q in parts if q["kind"] == "music"]
    assert {q["style"] for q in music} == set(B.MUSIC_STYLES)
    for q in music:
        assert q["program"] in (B.DRUM_KITS if q["style"] == "drums" else allowed)
    assert len({(q["soundfont"], q["program"]) for q in music if q["style"] != "drums"}) > 150
    rates = [q["_request"].rate for q in parts if q["kind"] == "speech"]
    assert min(rates) < 0.8 and max(rates) > 1.4
    for package in {q["package"] for q in parts if q["kind"] == "recorded"}:
        assert not any(S.HEDGEWARS_VOICES in f.parents for f in src.recorded[package])
    assert {c.params["kind"] for c in clips} == set(B.PRETRAIN_SHARES)
    pairs = [tuple(q["kind"] for q in c.params["parts"]) for c in clips if "parts" in c.params]
    assert all(a != b for a, b in pairs) and len(set(pairs)) >= 10


def _render_one(worker, p: dict) -> tuple[np.ndarray, str, str]:
    return worker.clip(p, B._synthesize_in_turn(B._mix_requests([B.Clip("x", "", "", p)])))


def test_pretrain_mix_each_kind_sounds_plausible(tmp_path):
    """One clip of every kind and music style: finite, not silent, full length; a mixture is its
    two parts at their ratio; the written clip peaks at <= 1."""
    need_mix_sources()
    src = B._pretrain_sources()
    planner = B._MixPlanner(src, 1.0)
    worker = B._MixWorker(tmp_path, src.soundfonts, src.recorded, 1.0)
    rng = np.random.default_rng(0)
    plans = [planner.part(k, rng) for k in ("speech", "recorded", "noise")]
    for style in B.MUSIC_STYLES:
        while (p := planner.part("music", rng))["style"] != style:
            pass
        plans.append(p)
    plans.append(planner.mixture(rng, B.PRETRAIN_SHARES))
    for i, p in enumerate(plans):
        p["_seed"] = (0, i)
        for j, q in enumerate(p.get("parts", ())):
            q["_seed"] = (0, i, j)
        x, source, detail = _render_one(worker, p)
        assert len(x) == 16000 and np.isfinite(x).all() and source and detail
        assert B.rms(x) > 1e-3, (p["kind"], p.get("style"), detail)
        y = B.normalise(x, -14.0)
        assert np.abs(y).max() <= 0.99 + 1e-6
    a, b = (_render_one(worker, q)[0] for q in p["parts"])
    ref = a / B.rms(a) + b / B.rms(b) * B.db(p["ratio_db"])
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-6)


def test_pretrain_mix_shares_choose_the_kinds(tmp_path):
    need_mix_sources()
    result = B.build_pretrain_mix(tmp_path, 0.1, seconds=1.0, shares={"noise": 1}, progress=False)
    assert result["kinds"] == {"noise": 6}
    _check_wavs(tmp_path, [r["path"] for r in _meta(tmp_path)], seconds=1.0)
    with pytest.raises(UsageError, match="unknown kinds"):
        B.build_pretrain_mix(tmp_path, 0.1, shares={"speach": 1}, progress=False)
    # a kind without a share is not in the mixtures either
    src = B._pretrain_sources()
    kinds, w = B._pretrain_kinds({"music": 1, "recorded": 1, "mixture": 2}, src)
    clips = B._plan_pretrain_mix(0, 200, 1.0, kinds, w, src)
    parts = {q["kind"] for c in clips for q in c.params.get("parts", ())}
    assert parts == {"music", "recorded"} and set(kinds) == {c.params["kind"] for c in clips}


def test_mix_signals_noise_colours_bands_and_bursts():
    """Brown noise has more low-frequency power than white; a band-pass keeps its band; a burst
    envelope rises well above its floor; chords sound several keys at once, within the range."""
    from ssamba.demo import signals as G

    n = 16000

    def low_share(x):  # noqa: E306
        p = np.abs(np.fft.rfft(x)) ** 2
        return p[: len(p) // 16].sum() / p.sum()  # below 500 Hz

    rng = np.random.default_rng(0)
    white, brown = G.coloured_noise(n, 0.0, rng), G.coloured_noise(n, 2.0, rng)
    assert low_share(brown) > 0.9 > 0.2 > low_share(white)
    f = np.fft.rfftfreq(n, 1 / 16000)
    gain = G.band_pass_gain(f, 500.0, 2000.0, 4)
    assert gain[np.argmin(abs(f - 1000))] > 0.9 and gain[np.argmin(abs(f - 100))] < 1e-2
    assert gain[np.argmin(abs(f - 7000))] < 1e-2
    env = G.burst_envelope(n, rng)
    assert env.max() > 10 * env.min() > 0
    for seed in range(20):
        notes = G.music_notes("chords", np.random.default_rng(seed), 40, 80, 2.0)
        assert all(40 <= key <= 80 for _, _, key, _ in notes)
        starts = Counter(round(s, 1) for s, _, _, _ in notes)
        assert max(starts.values()) >= 2 or len(notes) == 1
    voicings = {tuple(G.chord_voicing(np.random.default_rng(s), 40, 80)) for s in range(50)}
    assert len(voicings) > 40 and all(len(v) >= 1 for v in voicings)


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
                "log-mel + logistic regression": {"probe": 0.33},
                "SSAMBA pretrained": row(0.35),
                "SSAMBA random": row(0.35),
                "SSAST pretrained": row(0.20),
            },
        },
        "test_clips": {"keywords": 240, "instruments": 160},
    }
    report["margins"] = margins(report)
    assert margins(report, "finetune")["keywords"] == {
        "SSAMBA random": 0.0,
        "SSAST pretrained": 0.0,
    }
    assert "fine-tuned, test accuracy margin" in margins_text(report, "finetune")
    assert report["margins"]["keywords"] == {
        "log-mel + logistic regression": 10.0,
        "SSAMBA random": 5.0,
        "SSAST pretrained": -5.0,
    }
    assert report["margins"]["instruments"]["SSAST pretrained"] == 15.0
    text = margins_text(report)
    assert "keywords (240 test clips, one accuracy's standard error ~3.2)" in text
    assert "instruments (160 test clips, one accuracy's standard error ~3.8)" in text
    # A win is a margin above one standard error: +2.0 on instruments (SE ~3.8) is not one, a
    # tie is not one, and a loss is not one.
    lead = "SSAMBA pretrained does NOT beat"
    assert f"{lead} log-mel + logistic regression by more than one standard error on:" in text
    assert "on: instruments (+2.0)" in text
    assert f"{lead} SSAMBA random by more than one standard error on: instruments (+0.0)" in text
    assert f"{lead} SSAST pretrained by more than one standard error on: keywords (-5.0)" in text
    report["results"]["instruments"]["log-mel + logistic regression"]["probe"] = 0.30
    report["margins"] = margins(report)  # +5.0 on instruments, +10.0 on keywords: both wins
    assert (
        "SSAMBA pretrained beats log-mel + logistic regression by more than one standard error"
        " on every held-out test set"
    ) in margins_text(report)
    del report["results"]["instruments"]["SSAST pretrained"]  # a rival not run is no win either
    report["margins"] = margins(report)
    assert (
        "SSAST pretrained by more than one standard error on: keywords (-5.0), instruments "
        "(not run)" in margins_text(report)
    )


def _grouped_task(root, classes=3, groups=4, clips=3):
    """A task folder whose meta.csv names each clip's group (as the instruments' programs)."""
    rows = []
    for c in range(classes):
        for g in range(groups):
            for k in range(clips):
                rows.append((f"wav/c{c}_g{g}_{k}.wav", f"class{c}", "train", str(10 * c + g)))
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.csv").write_text(
        "path,label,split\n" + "".join(f"{p},{lab},{sp}\n" for p, lab, sp, _ in rows)
    )
    (root / "meta.csv").write_text(
        "path,label,split,program\n" + "".join(",".join(r) + "\n" for r in rows)
    )
    for p, *_ in rows:
        (root / p).parent.mkdir(exist_ok=True)
        (root / p).touch()
    return {
        "manifest": root / "manifest.csv",
        "meta": root / "meta.csv",
        "train": root / "manifest.csv",
    }, rows


def test_group_folds_hold_one_group_per_class_out(tmp_path):
    from ssamba.demo.pipeline import MIN_FOLDS, group_folds

    task, rows = _grouped_task(tmp_path / "t", groups=4)
    fold, k = group_folds(task, "program")
    assert k == 4 and len(fold) == len(rows)
    for f in range(k):
        held = {(r[1], r[3]) for r, g in zip(rows, fold, strict=True) if g == f}
        assert sorted(lab for lab, _ in held) == ["class0", "class1", "class2"]  # one group each
    assert group_folds(_grouped_task(tmp_path / "u", groups=MIN_FOLDS - 1)[0], "program") is None


def test_fold_accuracy_scores_every_clip_on_unseen_groups(tmp_path):
    """A feature that names the group, not the class, is perfect when the group was seen in
    training and useless when it was not: the folds never let a probe see a test group."""
    from ssamba.demo.pipeline import fold_accuracy, group_folds

    task, rows = _grouped_task(tmp_path / "t", groups=4, clips=4)
    folds = group_folds(task, "program")
    manifest = read_manifest(task["manifest"])
    y = np.stack([manifest.targets(i).numpy() for i in range(len(manifest))]).astype(np.float64)
    names = sorted({r[3] for r in rows})
    x = np.eye(len(names))[[names.index(r[3]) for r in rows]]
    assert fold_accuracy(x, y, folds, manifest.classes) <= 0.5
    signal = y + 0.01 * np.random.default_rng(0).standard_normal(y.shape)  # the class itself
    assert fold_accuracy(signal, y, folds, manifest.classes) == 1.0


def test_demo_probe_layers_must_be_all_or_last(tmp_path):
    from ssamba.demo.pipeline import DemoPlan, probe

    with pytest.raises(ValueError, match="probe_layers must be 'all' or 'last'"):
        probe(None, {}, tmp_path, DemoPlan(probe_layers="first"), progress=False)


def test_pretrain_config_is_the_demos_with_the_changes_asked(tmp_path):
    """The studies in benchmarks/ pretrain with the demo's settings, changing only what they say."""
    from ssamba.demo.pipeline import DemoPlan, pretrain_config

    plan = DemoPlan()
    args = ("ssamba", tmp_path / "mix.txt", (-4.5, 4.25), tmp_path / "run", plan)
    demo = pretrain_config(*args)
    assert (demo.model, demo.model_overrides) == ("ssamba_tiny", {"depth": plan.ssamba_depth})
    assert (demo.batch_size, demo.lr, demo.target_length) == (16, plan.lr, plan.clip_frames)
    assert (demo.max_minutes, demo.max_steps, demo.normalize) == (3.0, None, "-4.5,4.25")
    study = pretrain_config(*args, max_minutes=None, max_steps=800, save_every=80)
    changed = {k for k, v in vars(demo).items() if vars(study)[k] != v}
    assert changed == {"max_minutes", "max_steps", "save_every"}
    with pytest.raises(UsageError):  # the changes are validated as any config is
        pretrain_config(*args, max_steps=0)


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
    }
    for task in TASKS:
        assert set(report["results"][task]) == labels
        for label, row in report["results"][task].items():
            assert 0.0 <= row["probe"] <= 1.0
            if label != "log-mel + logistic regression":
                assert 0.0 <= row["finetune"] <= 1.0
                # LP-FT: the run starts from the probe head, scored on the same test clips, and
                # that start is the linear probe the demo reports (no separate fold probes)
                assert row["probe"] == row["finetune_start"]
                assert row["finetune_best_step"] <= row["finetune_steps"]
                assert "probe_views" not in row
    assert report["probe_clips"] == report["test_clips"]
    for name in ("results.md", "results.json", "README.md", "accuracy.png"):
        assert (tmp_path / "demo" / name).is_file()
    assert set(report["margins"]) == set(report["margins_finetune"]) == set(TASKS)
    text = (tmp_path / "demo" / "results.md").read_text()
    assert "SSAMBA pretrained, fine-tuned, test accuracy margin" in text
    assert text.index("fine-tuned, test accuracy margin") < text.index("linear probe, test acc")
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
    # a run interrupted after final/ but before its key was written is never reused as complete
    (tmp_path / "demo" / "runs" / "pretrain_ssamba" / "demo_key.json").unlink()
    before = weights.stat().st_mtime_ns
    pretrain_model("ssamba", data, stats, tmp_path / "demo", plan, progress=False)
    assert weights.stat().st_mtime_ns != before
    assert "linear probe, test accuracy margin" in (tmp_path / "demo" / "README.md").read_text()
