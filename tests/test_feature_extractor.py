"""FeatureExtractor: preprocessor_config.json round trip, equality with ssamba.fbank plus the
model's own normalisation, padding and lengths, and the statistics training now defaults to."""

from __future__ import annotations

import json
import math

import pytest
import torch

import ssamba
from ssamba.audio import fbank, normalize_fbank
from ssamba.errors import UsageError
from ssamba.feature_extractor import FeatureExtractor


def tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return 0.3 * torch.sin(2 * math.pi * freq * t) + 0.01 * torch.randn(t.shape[0])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model trained (in this story) with its own statistics, saved as a folder."""
    torch.manual_seed(0)
    model = ssamba.create_model(
        "ssamba_tiny", depth=2, input_tdim=128, norm_mean=-6.5, norm_std=3.25
    )
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    return model, folder


def test_round_trip_through_preprocessor_config(saved, tmp_path):
    model, folder = saved
    fe = FeatureExtractor.from_pretrained(folder)
    assert (fe.mean, fe.std, fe.max_length) == (-6.5, 3.25, 128)
    on_disk = json.loads((folder / "preprocessor_config.json").read_text())
    assert on_disk["feature_extractor_type"] == "SsambaFeatureExtractor"
    assert fe.to_dict() == on_disk  # the same fields a transformers user reads
    legacy = {**on_disk, "feature_extractor_type": "ASTFeatureExtractor"}  # older folders
    assert FeatureExtractor.from_dict(legacy) == fe
    fe2 = FeatureExtractor(max_length=300, mean=1.0, std=2.0, return_attention_mask=True)
    fe2.save_pretrained(tmp_path)
    assert FeatureExtractor.from_pretrained(tmp_path) == fe2
    assert FeatureExtractor.from_model(model) == fe


def test_features_equal_fbank_plus_the_models_normalisation(saved):
    model, folder = saved
    fe = ssamba.FeatureExtractor.from_pretrained(folder)
    waves = [tone(0.5), tone(1.7, freq=1000.0)]
    out = fe(waves, sampling_rate=16000)
    assert out["input_values"].shape == (2, 128, 128)
    for i, wave in enumerate(waves):
        ref = normalize_fbank(fbank(wave, target_length=128), -6.5, 3.25)
        torch.testing.assert_close(out["input_values"][i], ref, rtol=0, atol=0)
    assert out["lengths"].tolist() == [48, 128]  # 0.5 s = 48 frames; 1.7 s cut to 128
    assert "attention_mask" not in out
    with torch.no_grad():  # the batch feeds the model directly
        assert model(out["input_values"]).shape == (2, 192)


def test_longest_padding_lengths_and_attention_mask():
    fe = FeatureExtractor(max_length=64)
    out = fe([tone(0.3), tone(0.6)], sampling_rate=16000, padding="longest",
             return_attention_mask=True)  # fmt: skip
    n_short, n_long = 1 + (4800 - 400) // 160, 1 + (9600 - 400) // 160
    assert out["input_values"].shape == (2, n_long, 128)  # not cut to max_length
    assert out["lengths"].tolist() == [n_short, n_long]
    assert out["attention_mask"].sum(dim=1).tolist() == [n_short, n_long]
    pad = out["input_values"][0, n_short:]  # zeros before normalisation, as the reference pads
    torch.testing.assert_close(pad, torch.full_like(pad, (0 - fe.mean) / (2 * fe.std)))


def test_resamples_and_checks_its_input():
    fe = FeatureExtractor(max_length=64)
    wave = tone(0.5, rate=16000)
    a = fe(wave, sampling_rate=16000)["input_values"]
    b = fe(tone(0.5, rate=32000), sampling_rate=32000)["input_values"]
    assert a.shape == b.shape == (1, 64, 128)
    with pytest.raises(UsageError, match="sampling_rate"):
        fe(wave)
    with pytest.raises(UsageError, match="padding"):
        fe(wave, sampling_rate=16000, padding="nope")
    with pytest.raises(UsageError, match="1-D float"):
        fe(torch.zeros(10, 2, 3), sampling_rate=16000)
    with pytest.raises(UsageError, match="unknown feature extractor fields"):
        FeatureExtractor.from_dict({"hop": 3})
    with pytest.raises(UsageError, match="WhisperFeatureExtractor.*SsambaFeatureExtractor"):
        FeatureExtractor.from_dict({"feature_extractor_type": "WhisperFeatureExtractor"})


def test_training_defaults_to_the_checkpoints_statistics(saved):
    from ssamba.checkpoints import model_stats
    from ssamba.configs import FinetuneConfig, PretrainConfig

    model, folder = saved
    assert PretrainConfig(out="x", train="t").normalize == "auto"
    assert FinetuneConfig(out="x", train="t").normalize == "auto"
    assert model_stats("auto") is None  # before the model is built: keep what it was saved with
    assert model_stats("auto", model) == (-6.5, 3.25)
    assert model_stats("audioset", model) == (-4.2677393, 4.5689974)
    assert model_stats("none", model) is None


def test_finetune_from_the_checkpoint_uses_its_statistics(saved, tmp_path, monkeypatch, capsys):
    """finetune with -c CKPT normalises its data as CKPT was trained (no audioset default), and
    without -c warns on stderr that the weights are random."""
    import soundfile as sf

    from ssamba import finetune as finetune_module
    from ssamba.cli import main

    _, folder = saved
    seen = {}
    real = finetune_module.AudioDataset

    def spy(manifest, target_length, stats, **kw):
        seen["stats"] = stats
        return real(manifest, target_length, stats, **kw)

    monkeypatch.setattr(finetune_module, "AudioDataset", spy)
    rows = ["path,label"]
    for i in range(4):
        sf.write(tmp_path / f"{i}.wav", tone(0.5, freq=300.0 + 200 * i).numpy(), 16000)
        rows.append(f"{tmp_path / f'{i}.wav'},{'ab'[i % 2]}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    common = ["finetune", "--train", str(tmp_path / "train.csv"), "--target-length", "128",
              "--max-steps", "1", "--batch-size", "2", "--no-progress", "--fstride", "16",
              "--tstride", "16", "--depth", "2"]  # fmt: skip
    assert main([*common, "-c", str(folder), "-o", str(tmp_path / "a")]) == 0
    assert seen["stats"] == (-6.5, 3.25)
    assert "RANDOM" not in capsys.readouterr().err
    assert main([*common, "-o", str(tmp_path / "b")]) == 0
    assert seen["stats"] == pytest.approx((-4.2677393, 4.5689974))  # a preset: AudioSet
    err = capsys.readouterr().err
    assert "warning: no -c/--checkpoint: fine-tuning starts from RANDOM weights" in err
