"""Long recordings: ``ssamba segment``, and training windows read from disk alone."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssamba import audio
from ssamba.cli import main
from ssamba.data import AudioDataset, read_manifest
from ssamba.data.dataset import RESAMPLE_MARGIN, window_samples
from ssamba.errors import AudioError, UsageError


def _recording(path, seconds, rate=16000, channels=1, seed=0):
    """A sweep with noise: every window of it looks different."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (100 + 150 * t) * t) + 0.01 * rng.standard_normal(t.size)
    x = np.stack([x, 0.5 * x], 1) if channels == 2 else x
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
    return path


# ---------------------------------------------------------------------------- ssamba segment
def test_segment_cuts_long_recordings_into_clips_with_a_manifest(tmp_path, capsys):
    long = _recording(tmp_path / "in" / "talk.wav", 25.5, rate=44100, channels=2)
    _recording(tmp_path / "tree" / "a" / "b.flac", 12.0)
    _recording(tmp_path / "tree" / "tiny.wav", 0.4)  # shorter than --min-seconds: no clip
    out = tmp_path / "out"
    args = ["segment", str(long), str(tmp_path / "tree"), "--seconds", "10", "-o", str(out)]
    assert main(args + ["--no-progress"]) == 0
    assert "5 clips" in capsys.readouterr().out
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.flac"))
    assert names == ["a/b-000000.flac", "a/b-000001.flac"] + [
        f"talk-{k:06d}.flac" for k in range(3)
    ]
    manifest = read_manifest(out / "manifest.csv")
    assert [p.relative_to(out).as_posix() for p in manifest.paths()] == [
        "talk-000000.flac", "talk-000001.flac", "talk-000002.flac",
        "a/b-000000.flac", "a/b-000001.flac",
    ]  # fmt: skip
    source, _ = sf.read(long, dtype="int16")
    pieces = [sf.read(out / f"talk-{k:06d}.flac", dtype="int16") for k in range(3)]
    assert all(rate == 44100 for _, rate in pieces)
    assert [len(p) for p, _ in pieces] == [441000, 441000, len(source) - 882000]
    assert np.array_equal(np.concatenate([p for p, _ in pieces]), source)  # lossless, in order
    assert not list(out.rglob("*.tmp"))
    before = (out / "talk-000001.flac").read_bytes()
    assert main(args + ["--no-progress"]) == 2  # existing output needs --overwrite
    assert main(args + ["--no-progress", "--overwrite"]) == 0
    assert (out / "talk-000001.flac").read_bytes() == before  # deterministic


def test_segment_refuses_two_recordings_with_one_name(tmp_path):
    from ssamba.data.segment import find_recordings

    a = _recording(tmp_path / "x" / "talk.wav", 1.0)
    b = _recording(tmp_path / "y" / "talk.flac", 1.0)
    with pytest.raises(UsageError, match="rename"):
        find_recordings([a, b])


# ---------------------------------------------------------------------------- training windows
@pytest.fixture()
def reads(monkeypatch):
    """Every soundfile.read call's (start, frames)."""
    calls = []
    real = sf.read

    def read(file, frames=-1, start=0, *args, **kw):
        calls.append((start, frames))
        return real(file, frames, start, *args, **kw)

    monkeypatch.setattr(sf, "read", read)
    return calls


def test_random_windows_differ_by_epoch_and_are_reproducible_per_seed(tmp_path, reads):
    long = _recording(tmp_path / "long.wav", 30.0)
    ds = AudioDataset(tmp_path, 100, train=True, normalize=None, seed=1)
    items = {}
    for epoch in range(3):
        ds.set_epoch(epoch)
        items[epoch] = ds[0]["fbank"]
    assert not torch.equal(items[0], items[1]) and not torch.equal(items[1], items[2])
    again = AudioDataset(tmp_path, 100, train=True, normalize=None, seed=1)
    again.set_epoch(1)
    assert torch.equal(again[0]["fbank"], items[1])
    other = AudioDataset(tmp_path, 100, train=True, normalize=None, seed=2)
    other.set_epoch(1)
    assert not torch.equal(other[0]["fbank"], items[1])
    need = window_samples(100)
    assert {frames for _, frames in reads} == {need}  # only the window, never the file
    assert len({start for start, _ in reads}) >= 3
    # the item is the window it read, and it fills all 100 frames
    start = reads[-1][0]
    whole = audio.load_audio(long)
    expected = audio.fbank(whole[start : start + need], target_length=100)
    torch.testing.assert_close(other[0]["fbank"], expected)


def test_validation_windows_are_the_start_every_epoch(tmp_path, reads):
    long = _recording(tmp_path / "long.wav", 30.0)
    ds = AudioDataset(tmp_path, 100, train=False, normalize=None)
    first = ds[0]["fbank"]
    ds.set_epoch(5)
    assert torch.equal(ds[0]["fbank"], first)
    assert reads == [(0, window_samples(100))] * 2
    head = audio.load_audio(long)[: window_samples(100)]
    torch.testing.assert_close(first, audio.fbank(head, target_length=100))
    # pretraining's opt-in: an unaugmented dataset with random windows
    pre = AudioDataset(tmp_path, 100, train=False, normalize=None, window="random", seed=3)
    assert not torch.equal(pre[0]["fbank"], first)
    with pytest.raises(UsageError):
        AudioDataset(tmp_path, 100, window="middle")


def test_resampled_windows_are_read_at_the_native_rate(tmp_path, reads):
    _recording(tmp_path / "long.wav", 20.0, rate=44100)
    ds = AudioDataset(tmp_path, 100, train=True, normalize=None, seed=0)
    fb = ds[0]["fbank"]
    need = int(np.ceil((window_samples(100) + RESAMPLE_MARGIN) * 44100 / 16000))
    assert [frames for _, frames in reads] == [need]
    assert fb.shape == (100, 128) and bool((fb[-1] != 0).any())  # no padded frames


def test_short_files_are_read_whole_as_before(tmp_path, reads):
    clip = _recording(tmp_path / "clip.wav", 0.5)
    fb = AudioDataset(tmp_path, 100, train=True, normalize=None)[0]["fbank"]
    assert reads == [(0, -1)]
    torch.testing.assert_close(fb, audio.fbank(audio.load_audio(clip), target_length=100))


def test_segment_and_shard_help_show_defaults_and_load_no_torch():
    code = (
        "import argparse, sys\nfrom ssamba.cli import data\n"
        "p = argparse.ArgumentParser(prog='ssamba')\nsub = p.add_subparsers()\n"
        "data.register(sub)\n"
        "for cmd in ('segment', 'shard'):\n"
        "    try:\n        p.parse_args([cmd, '--help'])\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": src, "COLUMNS": "200"},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("False")
    for default in ("--seconds S", "(default: 10.0)", "(default: 1.0)", "(default: 1GB)"):
        assert default in res.stdout


def test_a_truncated_long_wav_is_refused_even_when_only_a_window_is_read(tmp_path):
    long = _recording(tmp_path / "long.wav", 30.0)
    data = long.read_bytes()
    long.write_bytes(data[: len(data) * 2 // 3])  # the header still declares 30 s
    with pytest.raises(AudioError, match="truncated"):
        AudioDataset(tmp_path, 100, train=True)[0]
