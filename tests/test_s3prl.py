"""The s3prl upstream contract, exercised as s3prl's featurizers use it (s3prl itself needs
torchaudio, which does not install here): a softmax-weighted sum over ``hidden_states``, frame
counts from ``get_downsample_rates`` within s3prl's tolerance, per-clip lengths."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import ssamba
from ssamba.audio import fbank
from ssamba.checkpoints import RandomWeightsWarning
from ssamba.errors import CheckpointError, UsageError
from ssamba.s3prl import UpstreamExpert, ssamba_tiny, ssast_tiny, upstream

# s3prl's two length checks: upstream/interfaces.py (old Featurizer) and nn/upstream.py.
TOLERANCE_OLD, TOLERANCE_NEW = 5, 3


class Featurizer(torch.nn.Module):
    """What s3prl's Featurizer does with an upstream's output (re-stated, not imported)."""

    def __init__(self, up):
        super().__init__()
        with torch.no_grad():
            hidden = up([torch.randn(16000)])["hidden_states"]
        self.layer_num = len(hidden)
        self.weights = torch.nn.Parameter(torch.zeros(self.layer_num))
        self.rate = up.get_downsample_rates("hidden_states")

    def forward(self, wavs, hidden):
        stacked = torch.stack(hidden, dim=0)
        _, *shape = stacked.shape
        weights = F.softmax(self.weights, dim=-1)
        summed = (weights.unsqueeze(-1) * stacked.view(self.layer_num, -1)).sum(0).view(*shape)
        longest = max(len(w) for w in wavs)
        assert abs(summed.size(1) - round(longest / self.rate)) < TOLERANCE_OLD
        return [f[: round(len(w) / self.rate)] for f, w in zip(summed, wavs, strict=True)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = ssamba.create_model("ssamba_tiny", depth=2)
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    return folder


def test_featurizer_over_hidden_states(tiny):
    up = UpstreamExpert(tiny, window_secs=1.0).eval()
    assert up.get_downsample_rates("hidden_states") == 1600  # 160 * tstride 10
    feat = Featurizer(up)
    assert feat.layer_num == 1 + 1  # patch-embedding stream + one Mamba layer pair
    wavs = [torch.randn(16000 * 3 + 700), torch.randn(5000)]
    with torch.no_grad():
        out = up(wavs)
    hidden = out["hidden_states"]
    expected = math.ceil(len(wavs[0]) / 1600)  # the official trim: len(range(0, n, rate))
    dim = 12 * 192  # official layout: 12 frequency rows (stride 10) of 192 features
    assert all(h.shape == (2, expected, dim) for h in hidden)
    assert abs(expected - round(len(wavs[0]) / 1600)) < TOLERANCE_NEW
    feats = feat(wavs, hidden)
    assert [f.shape[0] for f in feats] == [30, 3]  # round(len / rate), as s3prl cuts
    assert torch.equal(out["last_hidden_state"], hidden[-1])


@pytest.mark.parametrize("seconds", [0.3, 1.0, 5.55, 13.0])
def test_frame_count_matches_the_downsample_rate_for_any_length(tiny, seconds):
    up = UpstreamExpert(tiny, window_secs=1.0, pooling="mean").eval()
    n = int(seconds * 16000)
    with torch.no_grad():
        hidden = up([torch.randn(n)])["hidden_states"]
    assert hidden[0].shape[1] == math.ceil(n / 1600)  # no frame lost per window
    assert hidden[0].shape[2] == 192


def test_final_state_is_the_encoder_output_of_each_window(tiny):
    """One window, computed by hand from ssamba's front end and model: same numbers."""
    up = UpstreamExpert(tiny, window_secs=1.0, pooling="mean").eval()
    model = up.model
    wave = torch.randn(16000)
    need = 160 * (up.window_frames - 1) + 400  # the window plus its look-ahead frames
    fb = fbank(F.pad(wave, (0, need - wave.numel())))
    cfg = model.config
    fb = (fb - cfg.norm_mean) / (2 * cfg.norm_std)
    with torch.no_grad():
        enc = model.encode(fb[None])
        ref = enc.patch_tokens.reshape(1, *enc.grid, -1).mean(dim=1)
        got = up([wave])["hidden_states"][-1]
    assert enc.grid == (12, 10)
    torch.testing.assert_close(got, ref[:, :10], rtol=1e-5, atol=1e-5)


def test_windows_of_six_and_ten_seconds_and_gradients(tiny):
    for secs in (6.0, 10.0):
        up = UpstreamExpert(tiny, window_secs=secs, pooling="mean", max_windows=1)
        assert up.columns * up.tstride == secs * 100
    up = upstream(tiny, window_secs=1.0, pooling="mean", refresh=True)
    up([torch.randn(20000)])["hidden_states"][-1].sum().backward()  # s3prl's -f (fine-tune)
    grad = up.model.patch_embed.proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_entry_functions(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("SSAMBA_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="ssamba_tiny_400.pth"):
        ssamba_tiny()  # the released checkpoint by default, with where to put it
    assert ssamba_tiny(str(tiny), window_secs=1.0).columns == 10
    with pytest.warns(RandomWeightsWarning):
        up = ssast_tiny(window_secs=1.0, stride=16, pooling="mean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the SSAST baseline works the same way
        with torch.no_grad():
            hidden = up([torch.randn(16000)])["hidden_states"]
    assert len(hidden) == 13 and hidden[0].shape == (1, math.ceil(16000 / 2560), 192)
    with pytest.raises(UsageError, match="pooling"):
        UpstreamExpert(up.model, pooling="max")
