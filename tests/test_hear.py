"""ssamba.hear: the HEAR 2021 API.

The checks of ``hearvalidator`` (hearbenchmark/hear-validator, hearvalidator/validate.py) are
re-stated here, because importing it pulls in TensorFlow:

- ``load_model`` exists, returns a ``torch.nn.Module`` (moved to the device with ``.to``) and is
  callable without a path;
- ``model.sample_rate`` in (16000, 22050, 44100, 48000); ``scene_embedding_size`` and
  ``timestamp_embedding_size`` are ints;
- ``get_timestamp_embeddings`` on 2 white-noise clips (uniform in [-1, 1)) of 1.07, 1.98 and
  4.0 s (``int(length * sample_rate)`` samples): float32 embeddings of 3 dims, timestamps of 2,
  ``embeddings.shape[:2] == timestamps.shape``, batch size kept, last dim the declared size;
  timestamp spacing deviates from its mean by at most 1 ms (a hop above 50 ms only warns: we
  require <= 50); the first timestamp is not after the mean hop (a warning there); the last is
  at least ``1000 * length - 2 * hop`` (error) -- and at least ``1000 * length - hop`` and
  ``1000 * length - 50`` (warnings there) -- and not after ``1000 * length`` ms (error);
- ``get_scene_embeddings`` on 4 clips of 2.74 s: float32, 2 dims, batch size kept, last dim
  ``scene_embedding_size``.

We add what the validator cannot see: batch consistency (a clip alone equals the same clip in a
batch), no cumulative rounding drift on long audio, the empty-path warning, device placement.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import ssamba
from ssamba import hear
from ssamba.embeddings import embed

ACCEPTABLE_SAMPLE_RATE = [16000, 22050, 44100, 48000]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=128)
    folder = base.save_pretrained(tmp_path_factory.mktemp("hear") / "model")
    m = hear.load_model(str(folder))
    m.to("cpu")  # the validator moves the model to its device
    return m


def white_noise(num_audio: int, length: float, sample_rate: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((num_audio, int(length * sample_rate)), generator=gen) * 2 - 1.0


def test_model_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate in ACCEPTABLE_SAMPLE_RATE
    assert isinstance(model.scene_embedding_size, int)
    assert isinstance(model.timestamp_embedding_size, int)
    assert model.scene_embedding_size == model.timestamp_embedding_size == 192
    for name in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
        assert callable(getattr(hear, name))


@pytest.mark.parametrize("length", [1.07, 1.98, 4.0])
def test_timestamp_embeddings_contract(model, length):
    num_audio = 2
    audio = white_noise(num_audio, length, model.sample_rate)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert embeddings.dtype == torch.float32
    emb, ts = embeddings.detach().cpu().numpy(), timestamps.detach().cpu().numpy()
    assert emb.ndim == 3 and ts.ndim == 2
    assert emb.shape[0] == num_audio
    assert emb.shape[:2] == ts.shape
    assert emb.shape[2] == model.timestamp_embedding_size
    assert np.isfinite(emb).all()

    diff = np.diff(ts)
    avg = float(np.mean(diff))
    assert float(np.max(diff)) <= 50.0  # the validator warns above 50 ms
    assert float(np.max(np.abs(diff - avg))) <= 1.0  # error above 1 ms
    min_time, max_time = float(np.min(ts)), float(np.max(ts))
    assert min_time <= avg  # warning otherwise
    assert max_time >= 1000 * length - 2 * avg  # error otherwise
    assert max_time >= 1000 * length - avg and max_time >= 1000 * length - 50  # warnings
    assert max_time <= 1000 * length  # error otherwise
    # our own stricter claims: every row identical, exactly i * 50 ms
    assert (ts == ts[:1]).all()
    np.testing.assert_array_equal(ts[0], np.arange(ts.shape[1]) * 50.0)


def test_scene_embeddings_contract(model):
    num_audio, length = 4, 2.74
    audio = white_noise(num_audio, length, model.sample_rate)
    embeddings = hear.get_scene_embeddings(audio, model)
    assert embeddings.dtype == torch.float32
    emb = embeddings.detach().cpu().numpy()
    assert emb.dtype == np.float32 and emb.ndim == 2
    assert emb.shape == (num_audio, model.scene_embedding_size)
    # the scene embedding is embed()'s clip embedding, in windows of input_tdim frames with a
    # half-window hop by default
    assert (model.window_seconds, model.hop_seconds) == (1.28, 0.64)
    ref = embed(
        model.model, audio[1], sample_rate=16000, window_seconds=1.28, hop_seconds=0.64
    ).clip[0]
    torch.testing.assert_close(embeddings[1], ref, rtol=0, atol=1e-5)


def test_batch_consistency(model):
    audio = white_noise(2, 1.5, 16000, seed=1)
    scene_all = hear.get_scene_embeddings(audio, model)
    emb_all, ts_all = hear.get_timestamp_embeddings(audio, model)
    one = audio[1:]
    torch.testing.assert_close(
        hear.get_scene_embeddings(one, model)[0], scene_all[1], rtol=0, atol=1e-5
    )
    emb_one, ts_one = hear.get_timestamp_embeddings(one, model)
    torch.testing.assert_close(emb_one[0], emb_all[1], rtol=0, atol=1e-5)
    assert torch.equal(ts_one[0], ts_all[1])
    # and it is deterministic
    assert torch.equal(hear.get_scene_embeddings(audio, model), scene_all)


def test_timestamps_have_no_drift():
    # one hour at 44.1 kHz, 25 ms hop: 1102.5 samples per hop, the validator's warning case
    ts = hear.timestamps_ms(44100 * 3600, 25.0, sample_rate=44100)
    assert ts.shape == (144001,)
    assert ts[-1] == 3600 * 1000.0
    assert torch.equal(ts, torch.arange(144001, dtype=torch.float64) * 25.0)
    # one sample short of a full hop: the last timestamp stays within the audio
    ts = hear.timestamps_ms(16000 * 2 - 1, 50.0)
    assert ts[-1] == 1950.0
    ts = hear.timestamps_ms(16000 * 2, 50.0)
    assert ts[-1] == 2000.0


def test_interpolation_hits_column_centres(model):
    fine = hear.HearModel(model.model, hop_ms=2.5, window_seconds=None)
    audio = white_noise(1, 1.0, 16000, seed=2)
    emb, ts = hear.get_timestamp_embeddings(audio, fine)
    frames = embed(model.model, audio[0], sample_rate=16000).frames[0]
    # column t is centred at 87.5 + 160 t ms = (35 + 64 t) * 2.5 ms
    for t in range(frames.shape[0]):
        i = 35 + 64 * t
        assert ts[0, i] == 87.5 + 160 * t
        torch.testing.assert_close(emb[0, i], frames[t], rtol=0, atol=1e-5)
    # held constant before the first centre, linear between centres
    torch.testing.assert_close(emb[0, 0], frames[0], rtol=0, atol=1e-5)
    mid = 35 + 32  # half-way between columns 0 and 1
    torch.testing.assert_close(emb[0, mid], (frames[0] + frames[1]) / 2, rtol=0, atol=1e-5)


def test_options(model):
    m = hear.HearModel(model.model, layers=[0, -1], hop_ms=25)
    assert m.scene_embedding_size == m.timestamp_embedding_size == 384
    emb, ts = hear.get_timestamp_embeddings(white_noise(1, 1.0, 16000), m)
    assert emb.shape == (1, 41, 384) and ts[0, 1] == 25.0
    with pytest.raises(ValueError, match="hop_ms"):
        hear.HearModel(model.model, hop_ms=0)
    with pytest.raises(ValueError, match="n_sounds"):
        hear.get_scene_embeddings(torch.zeros(16000), model)


def test_empty_path_warns_and_is_reproducible():
    with pytest.warns(UserWarning, match="RANDOMLY initialised ssamba_tiny"):
        a = hear.load_model("", depth=2, input_tdim=128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = hear.load_model(depth=2, input_tdim=128, hop_ms=25)
    assert b.hop_ms == 25.0 and a.model.config.arch == "ssamba"
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_devices(model):
    audio = white_noise(2, 1.07, 16000)
    cpu_emb = hear.get_scene_embeddings(audio, model)
    model.to("cuda")
    try:
        out = hear.get_scene_embeddings(audio, model)  # CPU audio, CUDA model
        assert out.device.type == "cpu"
        emb, ts = hear.get_timestamp_embeddings(audio.cuda(), model)
        assert emb.device.type == "cuda" and ts.device.type == "cuda"
        torch.testing.assert_close(out, cpu_emb, rtol=1e-3, atol=1e-3)
    finally:
        model.to("cpu")
