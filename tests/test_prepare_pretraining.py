"""The official pretraining data on look-alike trees: AudioSet-2M, LibriSpeech 960 h cut into
10-s clips, and their mix (``ssamba prepare audioset-unbalanced | librispeech | pretrain-mix``)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from ssamba.cli import main
from ssamba.data import read_manifest
from ssamba.errors import PrepareError
from ssamba.recipes.prepare import PrepareWarning
from ssamba.recipes.pretraining_data import (
    cut_clips,
    mix_pretraining,
    prepare_audioset_unbalanced,
    prepare_librispeech,
)

RATE = 16000


def _audio(path, seconds, seed, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, int(round(seconds * RATE)))
    sf.write(path, x, RATE, subtype=subtype)
    return sf.read(path)[0]


def audioset_tree(root):
    """unbalanced_train_segments.csv (+ balanced) and clips named by YouTube id, one missing."""
    head = "# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=4\n"
    head += "# YTID, start_seconds, end_seconds, positive_labels\n"
    unbalanced = ["--aE2O5G5WE, 0.000, 10.000, \"/m/03fwl,/m/04rlf\"",
                  "--cB2ZVjpnA, 30.000, 40.000, \"/m/01y3hg\"",
                  "--aaILOrkII, 200.000, 210.000, \"/m/032s66,/m/073cg4\"",
                  "-notthere01, 0.000, 10.000, \"/m/09x0r\""]  # fmt: skip
    (root / "unbalanced_train_segments.csv").parent.mkdir(parents=True, exist_ok=True)
    (root / "unbalanced_train_segments.csv").write_text(head + "\n".join(unbalanced) + "\n")
    balanced = ["--PJHxphWEs, 30.000, 40.000, \"/m/09x0r\"",
                "--aE2O5G5WE, 0.000, 10.000, \"/m/03fwl\""]  # fmt: skip
    (root / "balanced_train_segments.csv").write_text(head + "\n".join(balanced) + "\n")
    _audio(root / "audio" / "unbal" / "--aE2O5G5WE.wav", 1.0, 0)
    _audio(root / "audio" / "unbal" / "Y--cB2ZVjpnA.flac", 1.0, 1)
    _audio(root / "audio" / "unbal" / "--aaILOrkII_200000_210000.wav", 1.0, 2)
    _audio(root / "audio" / "bal" / "--PJHxphWEs.wav", 1.0, 3)
    return root


def librispeech_tree(root):
    """LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac + .trans.txt (no 360)."""
    ls = root / "LibriSpeech"
    originals = {}
    for subset, spk, chapter, lengths in (
        ("train-clean-100", 19, 198, (25.0, 10.4)),
        ("train-other-500", 20, 205, (3.0,)),
    ):
        folder = ls / subset / str(spk) / str(chapter)
        trans = []
        for k, seconds in enumerate(lengths):
            utt = f"{spk}-{chapter}-{k:04d}"
            originals[utt] = _audio(folder / f"{utt}.flac", seconds, spk * 10 + k)
            trans.append(f"{utt} SOME WORDS")
        (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(trans) + "\n")
    return root, originals


def test_audioset_unbalanced_lists_audioset_2m_clips(tmp_path):
    src = audioset_tree(tmp_path / "audioset")
    with pytest.warns(PrepareWarning, match="1 listed clips were not found"):
        result = prepare_audioset_unbalanced(src, tmp_path / "out")
    assert result.counts == {"unbalanced": 3, "balanced": 1}  # the id in both lists: once
    manifest = read_manifest(tmp_path / "out" / "train.csv", ignore_labels=True)
    names = sorted(ex.path.name for ex in manifest.examples)
    assert names == sorted(["--aE2O5G5WE.wav", "Y--cB2ZVjpnA.flac",
                            "--aaILOrkII_200000_210000.wav", "--PJHxphWEs.wav"])  # fmt: skip
    assert [ex.split for ex in manifest.examples].count("balanced") == 1
    missing = (tmp_path / "out" / "missing_unbalanced.txt").read_text().split()
    assert missing == ["-notthere01"]
    report = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert report["total"] == 4 and report["missing"] == {"unbalanced": 1, "balanced": 0}
    with pytest.raises(PrepareError, match="unbalanced_train_segments.csv not found"):
        prepare_audioset_unbalanced(tmp_path / "out", tmp_path / "out2")


def test_librispeech_is_cut_into_ten_second_clips_sample_exact(tmp_path):
    src, originals = librispeech_tree(tmp_path / "ls")
    with pytest.warns(PrepareWarning, match="train-clean-360"):
        result = prepare_librispeech(src, tmp_path / "out", workers=2)
    assert result.counts == {"train-clean-100": 4, "train-other-500": 1}
    manifest = read_manifest(tmp_path / "out" / "train.csv", ignore_labels=True)
    clips = {ex.path.stem: ex for ex in manifest.examples}
    # 25 s -> 10 + 10 + 5; 10.4 s -> 10 (the 0.4-s tail is dropped); 3 s -> kept whole
    expected = {"19-198-0000_00": (0, 10), "19-198-0000_01": (10, 20),
                "19-198-0000_02": (20, 25), "19-198-0001_00": (0, 10),
                "20-205-0000_00": (0, 3)}  # fmt: skip
    assert set(clips) == set(expected)
    for stem, (a, b) in expected.items():
        data, rate = sf.read(clips[stem].path)
        utt = stem.rsplit("_", 1)[0]
        assert rate == RATE and np.array_equal(data, originals[utt][a * RATE : b * RATE]), stem
    assert clips["20-205-0000_00"].split == "train-other-500"
    assert (tmp_path / "out" / "clips" / "train-clean-100" / "19" / "198").is_dir()


def test_cut_clips_keeps_finished_pieces_and_redoes_a_missing_one(tmp_path):
    original = _audio(tmp_path / "long.flac", 21.0, 5)
    target = tmp_path / "clips" / "long"
    first = cut_clips(tmp_path / "long.flac", target, seconds=10, min_seconds=1)
    assert [p.name for p in first] == ["long_00.flac", "long_01.flac", "long_02.flac"]
    first[1].unlink()
    stamp = first[0].stat().st_mtime_ns
    again = cut_clips(tmp_path / "long.flac", target, seconds=10, min_seconds=1)
    assert again == first and first[0].stat().st_mtime_ns == stamp
    assert np.array_equal(sf.read(first[1])[0], original[10 * RATE : 20 * RATE])
    assert not list(tmp_path.glob("clips/.*"))  # no temporary file left


def test_cli_prepares_both_and_mixes_them(tmp_path, capsys):
    src_as = audioset_tree(tmp_path / "audioset")
    src_ls, _ = librispeech_tree(tmp_path / "ls")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrepareWarning)
        assert (
            main(["prepare", "audioset-unbalanced", str(src_as), "-o", str(tmp_path / "as")]) == 0
        )
        assert main(["prepare", "librispeech", str(src_ls / "LibriSpeech"), "-o",
                     str(tmp_path / "ls_out"), "--workers", "2"]) == 0  # fmt: skip
    argv = ["prepare", "pretrain-mix", str(tmp_path / "as"), str(tmp_path / "ls_out")]
    assert main([*argv, "-o", str(tmp_path / "mix"), "--valid-clips", "2"]) == 0
    out = capsys.readouterr().out
    assert "pretrain_mix" in out and "total" in out
    train = read_manifest(tmp_path / "mix" / "train.csv", ignore_labels=True)
    valid = read_manifest(tmp_path / "mix" / "valid.csv", ignore_labels=True)
    assert len(train.examples) + len(valid.examples) == 4 + 5 and len(valid.examples) == 2
    everything = {ex.path for ex in train.examples} | {ex.path for ex in valid.examples}
    assert len(everything) == 9 and all(p.is_file() for p in everything)
    assert {ex.split for ex in train.examples} <= {"audioset", "librispeech"}
    report = json.loads((tmp_path / "mix" / "prepare.json").read_text())
    assert report["total"] == 7 and sum(report["counts"].values()) == 7
    # the same draw for the same seed
    mix_pretraining(tmp_path / "as", tmp_path / "ls_out", tmp_path / "mix2", valid=2)
    again = read_manifest(tmp_path / "mix2" / "valid.csv", ignore_labels=True)
    assert [e.path for e in again.examples] == [e.path for e in valid.examples]
    # the output exists: refused without --overwrite; mix needs two folders
    assert main([*argv, "-o", str(tmp_path / "mix")]) == 2
    assert main(["prepare", "pretrain-mix", str(tmp_path / "as"), "-o", str(tmp_path / "m3")]) == 2
    assert "expected AUDIOSET_OUT LIBRISPEECH_OUT" in capsys.readouterr().err
