"""ssamba.embed: clip/frame embeddings of waveforms and files, and the ``ssamba embed`` command."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import ssamba
from ssamba import embedding_store, embeddings
from ssamba.cli import embed as cli_embed
from ssamba.data import BAD_FILE_POLICIES
from ssamba.embeddings import embed, embed_files, num_layers
from ssamba.errors import CheckpointError, UsageError
from ssamba.models.patches import column_times

SR = 16000


@pytest.fixture(scope="module")
def model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ssamba.create_model("ssamba_tiny", depth=2, input_tdim=128).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


def noise(seconds: float, seed: int = 0, sr: int = SR) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(int(round(seconds * sr)), generator=gen) * 2 - 1) * 0.3


def expected_columns(n_samples: int, tstride: int = 16) -> int:
    """Columns whose centre (160 * t * tstride + 1400 samples) lies within the audio."""
    return max(1, (n_samples - 1400) // (160 * tstride) + 1) if n_samples >= 1400 else 1


# ------------------------------------------------------------------------------ Python API


def test_shapes_and_timestamps(model):
    waves = [noise(s, i) for i, s in enumerate((0.5, 1.0, 3.3, 0.02))]
    emb = embed(model, waves, sample_rate=SR)
    assert emb.clip.shape == (4, 192) and emb.clip.dtype == torch.float32
    assert len(emb) == 4 and emb.dim == 192 and emb.layers == (-1,)
    for w, frames, times in zip(waves, emb.frames, emb.timestamps, strict=True):
        k = expected_columns(len(w))
        assert frames.shape == (k, 192)
        # centre of column t: 10 ms * 16 t + 87.5 ms, computed per index
        assert torch.allclose(times, (torch.arange(k) * 0.16 + 0.0875).double(), atol=1e-12)
        assert times[-1] <= max(len(w) / SR, 0.0875)
    assert [f.shape[0] for f in emb.frames] == [3, 6, 21, 1]
    # the clip embedding is the mean of the real columns (padding left out)
    for clip, frames in zip(emb.clip, emb.frames, strict=True):
        torch.testing.assert_close(clip, frames.mean(0), rtol=1e-5, atol=1e-6)
    assert emb.durations == pytest.approx([0.5, 1.0, 3.3, 0.02])
    assert not emb.clip.is_inference() and not emb.frames[0].is_inference()


def test_column_times_no_drift():
    t = column_times(100000, 16)
    assert t[99999] == (99999 * 160 + 87.5) / 1000


def test_deterministic_and_batch_independent(model):
    a, b, c = noise(1.0, 1), noise(1.0, 2), noise(2.5, 3)
    alone = embed(model, a, sample_rate=SR)
    again = embed(model, a, sample_rate=SR)
    assert torch.equal(alone.clip, again.clip) and torch.equal(alone.frames[0], again.frames[0])
    batch = embed(model, [b, a, c, a], sample_rate=SR, batch_size=8)
    one_by_one = embed(model, [b, a, c, a], sample_rate=SR, batch_size=1)
    for emb in (batch, one_by_one):
        for j in (1, 3):
            torch.testing.assert_close(emb.clip[j], alone.clip[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(emb.frames[j], alone.frames[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch.frames[2], one_by_one.frames[2], rtol=0, atol=1e-5)


def test_model_stays_in_training_mode_and_gives_eval_results(model):
    wave = noise(1.0, 4)
    ref = embed(model, wave, sample_rate=SR)
    model.train()
    try:
        out = embed(model, wave, sample_rate=SR)
        assert model.training
    finally:
        model.eval()
    assert torch.equal(out.clip, ref.clip)


def test_layers():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ssamba.create_model("ssamba_tiny", depth=4, input_tdim=128).eval()
    wave = noise(1.2, 5)
    last = embed(model, wave, sample_rate=SR)
    both = embed(model, wave, sample_rate=SR, layers=[0, -1])
    assert num_layers(model) == 2
    assert both.clip.shape == (1, 384) and both.frames[0].shape == (last.frames[0].shape[0], 384)
    torch.testing.assert_close(both.clip[:, 192:], last.clip)
    # index 0 is the first pair's raw stream, not the final normalised output
    assert not torch.allclose(both.clip[:, :192], last.clip)
    # L - 1 and -1 are the same (the final output)
    torch.testing.assert_close(embed(model, wave, sample_rate=SR, layers=1).clip, last.clip)
    with pytest.raises(ValueError, match="out of range"):
        embed(model, wave, sample_rate=SR, layers=[2])


def test_long_audio_whole_and_windowed(model):
    wave = noise(4.1, 6)
    whole = embed(model, wave, sample_rate=SR)
    k = expected_columns(len(wave))
    assert whole.frames[0].shape == (k, 192)
    win = embed(model, wave, sample_rate=SR, window_seconds=1.28)  # hop = window
    assert win.frames[0].shape == whole.frames[0].shape
    assert torch.equal(win.timestamps[0], whole.timestamps[0])
    # without overlap the first 8 columns come from the first window, which is the same as
    # embedding the first 128 frames alone (20720 samples)
    first = embed(model, wave[: 160 * 127 + 400], sample_rate=SR)
    torch.testing.assert_close(win.frames[0][:8], first.frames[0], rtol=0, atol=1e-4)
    overlap = embed(model, wave, sample_rate=SR, window_seconds=1.28, hop_seconds=0.64)
    assert overlap.frames[0].shape == whole.frames[0].shape
    # windows of 8 columns every 4: column 6 is most central in the second window (its t = 2)
    second = embed(model, wave[160 * 64 : 160 * 64 + 160 * 127 + 400], sample_rate=SR)
    torch.testing.assert_close(overlap.frames[0][6], second.frames[0][2], rtol=0, atol=1e-4)
    torch.testing.assert_close(overlap.frames[0][5], first.frames[0][5], rtol=0, atol=1e-4)
    # windows of a long clip differ from the whole clip (positional embedding, context)
    assert not torch.allclose(win.frames[0], whole.frames[0])
    with pytest.raises(ValueError, match="skip audio"):
        embed(model, wave, sample_rate=SR, window_seconds=1.0, hop_seconds=2.0)
    with pytest.raises(ValueError, match="needs window"):
        embed(model, wave, sample_rate=SR, hop_seconds=1.0)


def test_input_types(model, tmp_path, make_wav):
    wave = noise(0.8, 7)
    ref = embed(model, wave, sample_rate=SR)
    from_numpy = embed(model, wave.numpy(), sample_rate=SR)
    torch.testing.assert_close(from_numpy.clip, ref.clip)
    batch2d = embed(model, torch.stack([wave, wave]), sample_rate=SR)
    assert batch2d.clip.shape == (2, 192)
    torch.testing.assert_close(batch2d.clip[1], ref.clip[0], rtol=0, atol=1e-5)
    # resampled when the rate differs: 0.8 s at 44.1 kHz gives the same number of columns
    resampled = embed(model, np.zeros(int(0.8 * 44100), np.float32) + 0.01, sample_rate=44100)
    assert resampled.frames[0].shape == ref.frames[0].shape
    # paths, single or in a list
    path = make_wav(tmp_path / "a.wav", 0.8, 440.0)
    by_path = embed(model, path)
    assert by_path.names == [str(path)]
    listed = ssamba.embed(model, [str(path), path])  # the public name is the same function
    torch.testing.assert_close(listed.clip[0], by_path.clip[0])
    with pytest.raises(ValueError, match="sample_rate"):
        embed(model, wave)
    with pytest.raises(TypeError, match="float"):
        embed(model, (wave.numpy() * 32767).astype(np.int16), sample_rate=SR)
    with pytest.raises(ValueError, match="NaN"):
        embed(model, torch.full((16000,), float("nan")), sample_rate=SR)
    with pytest.raises(ssamba.audio.AudioError, match="missing.wav"):
        embed(model, tmp_path / "missing.wav")


def test_ssast_model_embeds():
    torch.manual_seed(1)
    m = ssamba.create_model("ssast_tiny", depth=2, input_tdim=128).eval()
    emb = embed(m, [noise(0.5), noise(2.0)], sample_rate=SR, layers=[0, 1])
    assert emb.clip.shape == (2, 384) and emb.frames[1].shape == (12, 384)


# ------------------------------------------------------------------------------ CLI


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ssamba")
    cli_embed.register(parser.add_subparsers())
    args = parser.parse_args(["embed", *map(str, argv)])
    return args.func(args)


@pytest.fixture
def audio_folder(tmp_path, make_wav):
    root = tmp_path / "audio"
    make_wav(root / "a.wav", 0.6, 300.0)
    make_wav(root / "sub" / "b.flac", 1.4, 600.0)
    make_wav(root / "sub" / "deeper" / "c.ogg", 0.9, 900.0, sr=22050)
    return root


def test_cli_npy_mirrors_names_and_resumes(checkpoint, audio_folder, tmp_path, capsys):
    out = tmp_path / "emb"
    assert run_cli(audio_folder, "-c", checkpoint, "--out", out, "--no-progress") == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy"))
    assert files == ["a.npy", "sub/b.npy", "sub/deeper/c.npy"]
    assert np.load(out / "a.npy").shape == (192,)
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "npy" and len(index["files"]) == 3
    assert index["settings"]["layers"] == [-1]
    entry = index["files"][str(audio_folder / "sub" / "b.flac")]
    assert entry["clip"] == "sub/b.npy" and entry["num_frames"] == expected_columns(22400)
    # the CLI gives what the Python API gives
    model = ssamba.load_model(checkpoint)
    ref = embed(model, audio_folder / "sub" / "b.flac").clip[0].numpy()
    np.testing.assert_allclose(np.load(out / "sub" / "b.npy"), ref, rtol=0, atol=1e-5)

    mtime = (out / "a.npy").stat().st_mtime_ns
    capsys.readouterr()
    assert run_cli(audio_folder, "-c", checkpoint, "--out", out, "--no-progress") == 0
    stdout = capsys.readouterr().out
    assert "3 of 3 files already embedded" in stdout and "embedded 0 files" in stdout
    assert (out / "a.npy").stat().st_mtime_ns == mtime

    # other settings into the same folder: refused unless --overwrite
    with pytest.raises(UsageError, match="other settings.*layers"):
        run_cli(audio_folder, "-c", checkpoint, "--out", out, "--layers", "0", "--no-progress")
    run_cli(audio_folder, "-c", checkpoint, "-o", out, "--layers", "0", "-1", "--overwrite")
    assert np.load(out / "a.npy").shape == (384,)


def test_cli_frames_and_single_files(checkpoint, audio_folder, tmp_path, make_wav):
    out = tmp_path / "frames"
    run_cli(
        audio_folder / "a.wav",
        audio_folder / "sub",
        "-c",
        checkpoint,
        "-o",
        out,
        "--frame-embeddings",
    )
    frames = np.load(out / "sub" / "b.frames.npy")
    times = np.load(out / "sub" / "b.timestamps.npy")
    assert frames.shape == (expected_columns(22400), 192) and times.shape == (frames.shape[0],)
    assert times[0] == pytest.approx(0.0875)

    for fmt in ("npz", "safetensors"):
        out = tmp_path / fmt
        run_cli(audio_folder, "-c", checkpoint, "-o", out, "--format", fmt, "--frame-embeddings")
        index = json.loads((out / "index.json").read_text())
        assert index["file"] == f"embeddings.{fmt}"
        if fmt == "npz":
            with np.load(out / index["file"]) as data:
                arrays = {k: data[k] for k in data.files}
        else:
            from safetensors.numpy import load_file

            arrays = load_file(str(out / index["file"]))
        entry = index["files"][str(audio_folder / "sub" / "deeper" / "c.ogg")]
        assert arrays[entry["clip"]].shape == (192,)
        assert arrays[entry["frames"]].shape[0] == arrays[entry["timestamps"]].shape[0]
        assert len(arrays) == 9 and not (out / ".parts").exists()

    # a re-run with one more file keeps the others and adds it
    extra = make_wav(tmp_path / "extra" / "d.wav", 0.5, 200.0)
    run_cli(
        audio_folder,
        extra,
        "-c",
        checkpoint,
        "-o",
        out,
        "--format",
        "safetensors",
        "--frame-embeddings",
    )
    index = json.loads((out / "index.json").read_text())
    assert len(index["files"]) == 4 and index["files"][str(extra)]["key"] == "extra/d"
    assert index["files"][str(audio_folder / "a.wav")]["key"] == "a"  # keeps its earlier key
    from safetensors.numpy import load_file

    assert len(load_file(str(out / "embeddings.safetensors"))) == 12


def test_cli_manifest_input(checkpoint, audio_folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("audio/a.wav\naudio/sub/b.flac\n")
    out = tmp_path / "from_list"
    run_cli(listing, "-c", checkpoint, "-o", out, "--no-progress")
    assert sorted(p.name for p in out.rglob("*.npy")) == ["a.npy", "b.npy"]


def test_cli_bad_file(checkpoint, audio_folder, tmp_path, write_corrupt, capsys):
    bad = write_corrupt(audio_folder / "sub" / "broken.wav")
    with pytest.raises(UsageError, match=r"broken\.wav.*--on-bad-file skip"):
        run_cli(audio_folder, "-c", checkpoint, "-o", tmp_path / "e1", "--no-progress")
    out = tmp_path / "e2"
    assert run_cli(audio_folder, "-c", checkpoint, "-o", out, "--on-bad-file", "skip") == 0
    captured = capsys.readouterr()
    assert "broken.wav" in captured.err
    assert "embedded 3 files" in captured.out and "1 bad files skipped" in captured.out
    index = json.loads((out / "index.json").read_text())
    assert list(index["bad_files"]) == [str(bad)]
    assert not (out / "sub" / "broken.npy").exists()


def test_cli_errors(checkpoint, tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        run_cli(tmp_path / "nothing", "-c", checkpoint, "-o", tmp_path / "x")
    (tmp_path / "x.wav").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no such"):
        run_cli(tmp_path / "x.wav", "-c", tmp_path / "no_model", "-o", tmp_path / "x")
    with pytest.raises(UsageError, match="--hop needs --window"):
        run_cli(tmp_path / "x.wav", "-c", checkpoint, "-o", tmp_path / "x", "--hop", "1")
    # a folder that holds other files is not written into unless --overwrite
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds other files.*--overwrite"):
        run_cli(tmp_path / "x.wav", "-c", checkpoint, "-o", tmp_path / "busy")


def test_cli_choices_match_the_library():
    """The CLI writes some choices out (so --help loads no torch): they must stay the library's."""
    assert cli_embed.FORMATS == embedding_store.FORMATS
    assert cli_embed.BAD_FILE_POLICIES == BAD_FILE_POLICIES
    assert embeddings.POOLINGS == ("mean", "mean+std", "bands", "bands+std")


def test_embed_files_batches_and_bad_files(model, audio_folder, write_corrupt):
    paths = sorted(p for p in audio_folder.rglob("*") if p.is_file())
    paths.insert(1, write_corrupt(audio_folder / "broken.wav"))
    with pytest.raises(ssamba.audio.AudioError, match="broken.wav"):
        list(embed_files(model, paths, batch_size=2))
    with pytest.raises(UsageError, match="on_bad_file"):
        embed_files(model, paths, on_bad_file="ignore")  # checked on call, not on iteration
    batches = list(embed_files(model, paths, batch_size=2, on_bad_file="skip"))
    assert [b.size for b in batches] == [2, 2]
    assert list(batches[0].bad) == [1] and batches[0].indices == [0]
    assert [i for b in batches for i in b.indices] == [0, 2, 3]
    ref = embed(model, paths[3]).clip[0]
    torch.testing.assert_close(batches[1].embeddings.clip[1], ref, rtol=0, atol=1e-5)


def test_band_pooling_keeps_frequency_rows_and_std_appends():
    model = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=128).eval()
    wave = torch.randn(16000) * 0.1
    mean = ssamba.embed(model, wave, sample_rate=16000)
    bands = ssamba.embed(model, wave, sample_rate=16000, pooling="bands")
    both = ssamba.embed(model, wave, sample_rate=16000, pooling="bands+std")
    dim = model.config.embed_dim
    assert mean.clip.shape == (1, dim) and bands.clip.shape == (1, 8 * dim)
    assert both.clip.shape == (1, 16 * dim)
    # the mean over the 8 bands of the band-kept vector is the plain mean pooling
    torch.testing.assert_close(
        bands.clip.reshape(8, dim).mean(0), mean.clip[0], rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(both.clip[:, : 8 * dim], bands.clip)
    with pytest.raises(ValueError, match="pooling"):
        ssamba.embed(model, wave, sample_rate=16000, pooling="max")
