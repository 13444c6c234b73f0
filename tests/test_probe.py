"""ssamba.probe: linear probing of frozen clip embeddings, its cache and the ``probe`` command."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import ssamba
import ssamba.embeddings
import ssamba.probe as probe_mod
from conftest import TONE_CLASSES, make_wav
from ssamba.cli import evaluate as cli_evaluate
from ssamba.cli import main
from ssamba.embeddings import layer_columns
from ssamba.errors import UsageError
from ssamba.probe import fit_linear, linear_probe, linear_probes


@pytest.fixture(scope="module")
def model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ssamba.create_model("ssamba_tiny", depth=2, input_tdim=64).eval()


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """Folder-per-class splits of 0.4 s tones: train 8 per class, valid and test 3 per class."""
    root = tmp_path_factory.mktemp("tones")
    counts = {"train": 8, "valid": 3, "test": 3}
    for s, (split, n) in enumerate(counts.items()):
        for name, freq in TONE_CLASSES.items():
            for k in range(n):
                detune = 1 + 0.03 * ((k * 7 + s * 3) % 5 - 2)  # a few percent around the tone
                make_wav(
                    root / split / name / f"{k}.wav",
                    0.4,
                    freq * detune,
                    amplitude=0.2 + 0.05 * (k % 4),
                    noise=0.02,
                    seed=100 * s + k,
                )
    return root


def test_linear_probe_separates_tones(model, tones, tmp_path):
    results = linear_probe(
        model,
        tones / "train",
        tones / "valid",
        tones / "test",
        cache_dir=tmp_path / "cache",
        l2_grid=(1e-3, 1e-1),
    )
    assert results["task"] == "multiclass" and results["metric"] == "accuracy"
    assert results["classes"] == sorted(TONE_CLASSES)
    assert results["train"]["files"] == 24 and results["test"]["files"] == 9
    assert results["valid"]["accuracy"] >= 0.8  # chance is 1/3
    assert results["test"]["accuracy"] >= 0.8
    assert results["l2"] in (1e-3, 1e-1) and len(results["l2_grid"]) == 2
    assert results["embedding"]["dim"] == 192
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 42
    json.dumps(results)  # JSON-ready


@pytest.fixture(scope="module")
def model_2_streams():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = ssamba.create_model("ssamba_tiny", depth=4, input_tdim=64).eval()
    assert ssamba.embeddings.num_layers(model) == 2  # the first pair's stream, the final output
    return model


@pytest.mark.parametrize("pooling", ["mean", "bands+std"])
def test_layer_columns_cut_one_embedding_into_its_layers(model_2_streams, pooling):
    model = model_2_streams
    waves = torch.randn(2, 8000, generator=torch.Generator().manual_seed(3))
    every = ssamba.embed(model, waves, 16000, layers=[0, 1], pooling=pooling).clip
    for keep in ([1], [0], [0, 1], [1, 0]):
        alone = ssamba.embed(model, waves, 16000, layers=keep, pooling=pooling).clip
        cut = every[:, layer_columns([0, 1], keep, every.shape[1], pooling)]
        torch.testing.assert_close(cut, alone, rtol=0, atol=0)
    with pytest.raises(UsageError, match="not among the embedded layers"):
        layer_columns([0, 1], [2], every.shape[1], pooling)


def test_linear_probes_equal_one_probe_per_view(model_2_streams, tones, tmp_path):
    """Several layer choices from one embedding pass give what separate probes give."""
    model = model_2_streams
    views = {"last": None, "first": [0], "all": [0, 1]}
    both = linear_probes(
        model, tones / "train", tones / "valid", tones / "test", views, l2_grid=(1e-3, 1e-1),
        cache_dir=tmp_path / "cache", pooling="bands+std",
    )  # fmt: skip
    assert list(both) == list(views)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 42  # every file embedded once
    for name, layers in views.items():
        alone = linear_probe(
            model, tones / "train", tones / "valid", tones / "test", layers=layers,
            l2_grid=(1e-3, 1e-1), pooling="bands+std",
        )  # fmt: skip
        assert both[name]["embedding"]["dim"] == alone["embedding"]["dim"]
        assert both[name]["l2"] == alone["l2"]
        for split in ("train", "valid", "test"):
            assert both[name][split]["accuracy"] == alone[split]["accuracy"]
        for got, want in zip(both[name]["l2_grid"], alone["l2_grid"], strict=True):
            assert got["valid_loss"] == pytest.approx(want["valid_loss"], rel=1e-6)
    assert (
        both["last"]["embedding"]["layers"] == [1]
        and both["first"]["embedding"]["dim"] < (both["all"]["embedding"]["dim"])
    )


def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="ssamba")
    cli_evaluate.register(parser.add_subparsers())
    args = parser.parse_args(["probe", *map(str, argv)])
    return args.func(args)


def test_cli_writes_results_and_reuses_cache(model, tones, tmp_path, monkeypatch, capsys):
    ckpt = model.save_pretrained(tmp_path / "model")
    out = tmp_path / "probe"
    argv = ["-c", ckpt, "--train", tones / "train", "--valid", tones / "valid", "--out", out]
    argv += ["--l2", "0.01", "--no-progress"]
    assert run_cli(*argv) == 0
    results = json.loads((out / "probe_results.json").read_text())
    assert results["valid"]["accuracy"] >= 0.8 and "test" not in results
    assert "valid accuracy" in capsys.readouterr().out
    assert len(list((out / "cache").glob("*.npz"))) == 33

    def fail(*args, **kwargs):
        raise AssertionError("embed() called although everything is cached")

    monkeypatch.setattr(ssamba.embeddings, "embed", fail)
    # the results exist: replaced only with --overwrite (the cache is reused either way)
    with pytest.raises(UsageError, match="probe_results.json: output exists.*--overwrite"):
        run_cli(*argv)
    assert run_cli(*argv, "--overwrite") == 0
    again = json.loads((out / "probe_results.json").read_text())
    assert again["valid"] == results["valid"]
    # other layers are other cache entries
    with pytest.raises(AssertionError, match="cached"):
        run_cli(*argv, "--layers", "0", "-1", "--overwrite")


def test_cli_config_file_and_replay(model, tones, tmp_path, capsys):
    """--config: defaults < file < flags; the run.json a run writes replays it."""
    ckpt = model.save_pretrained(tmp_path / "model")
    config = tmp_path / "probe.toml"
    config.write_text(
        f'train = "{tones / "train"}"\nvalid = "{tones / "valid"}"\n'
        "l2 = [0.01]\nmax_iter = 50\nno_progress = true\n"
    )
    out = tmp_path / "a"
    assert main(["probe", "-c", str(ckpt), "-o", str(out), "--config", str(config)]) == 0
    first = json.loads((out / "probe_results.json").read_text())
    assert first["l2"] == 0.01 and [g["l2"] for g in first["l2_grid"]] == [0.01]
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == "probe" and record["max_iter"] == 50
    assert "overwrite" not in record and record["train"] == str(tones / "train")
    # the replay, into another folder and with one flag changed (flags win over the file)
    replay = tmp_path / "b"
    argv = ["probe", "--config", str(out / "run.json"), "-o", str(replay), "--l2", "0.1"]
    assert main(argv) == 0
    second = json.loads((replay / "probe_results.json").read_text())
    assert second["l2"] == 0.1 and second["valid"]["files"] == first["valid"]["files"]
    # a misspelt setting is an error, not ignored
    config.write_text("l2_weights = [0.1]\n")
    assert main(["probe", "-c", str(ckpt), "-o", str(out), "--config", str(config)]) == 2
    assert "unknown setting(s) l2_weights" in capsys.readouterr().err


def test_cli_constants_match_the_library():
    """The CLI writes some defaults out (so --help loads no torch): they must be the library's."""
    assert cli_evaluate.DEFAULT_L2 == probe_mod.DEFAULT_L2
    assert cli_evaluate.RESULTS_FILE == probe_mod.RESULTS_FILE
    assert cli_evaluate.POOLINGS == ssamba.embeddings.POOLINGS


def test_bad_files(model, tones, tmp_path, write_corrupt):
    train = tmp_path / "train"
    for name in TONE_CLASSES:
        for k in range(2):
            make_wav(train / name / f"{k}.wav", 0.3, TONE_CLASSES[name] * (1 + 0.02 * k))
    write_corrupt(train / "low" / "broken.wav")
    with pytest.raises(ssamba.audio.AudioError, match="broken.wav"):
        linear_probe(model, train, tones / "valid", l2_grid=(0.01,))
    results = linear_probe(model, train, tones / "valid", l2_grid=(0.01,), on_bad_file="skip")
    assert results["train"]["files"] == 6
    assert list(results["train"]["bad_files"]) == [str(train / "low" / "broken.wav")]
    ckpt = model.save_pretrained(tmp_path / "model")
    with pytest.raises(UsageError, match=r"broken\.wav.*--on-bad-file skip"):
        run_cli("-c", ckpt, "--train", train, "--valid", tones / "valid", "--out", tmp_path / "o")


def test_multilabel(model, tmp_path):
    """Clips holding one or two of three tones, labelled with all they hold: sigmoid + mAP."""
    rng = np.random.default_rng(0)
    names = list(TONE_CLASSES)
    rows = {"train": [], "valid": []}
    combos = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    for split, reps in (("train", 2), ("valid", 1)):
        for r in range(reps):
            for c, combo in enumerate(combos):
                t = np.arange(int(0.4 * 16000)) / 16000
                wave = sum(np.sin(2 * np.pi * TONE_CLASSES[names[i]] * t) for i in combo) * 0.2
                wave = wave + 0.01 * rng.standard_normal(len(t))
                path = tmp_path / split / f"{r}_{c}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                import soundfile as sf

                sf.write(str(path), wave.astype(np.float32), 16000)
                label = ";".join(names[i] for i in combo)
                rows[split].append(f'{path.name},"{label}"')
    for split, lines in rows.items():
        (tmp_path / split / "list.csv").write_text("path,labels\n" + "\n".join(lines) + "\n")
    results = linear_probe(
        model, tmp_path / "train" / "list.csv", tmp_path / "valid" / "list.csv", l2_grid=(1e-2,)
    )
    assert results["task"] == "multilabel" and results["metric"] == "mAP"
    assert "accuracy" not in results["valid"]
    assert results["valid"]["mAP"] > 0.7  # chance: about 0.5 (each tone is in half the clips)


def test_fit_linear_is_deterministic_and_regularised():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 5))
    y = np.eye(2)[(x[:, 0] > 0).astype(int)]
    w1, b1 = fit_linear(x, y, False, 1e-3)
    w2, b2 = fit_linear(x, y, False, 1e-3)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)
    w_strong, _ = fit_linear(x, y, False, 10.0)
    assert w_strong.norm() < w1.norm()
    # the informative feature dominates
    assert (w1[0, 1] - w1[0, 0]).abs() > (w1[1:, 1] - w1[1:, 0]).abs().max()


def test_fit_in_the_row_space_equals_the_fit_on_all_features():
    """More features than clips: fit_probe fits in an orthonormal basis of the rows; the weights
    mapped back equal a fit on every feature (L-BFGS never leaves the row space)."""
    from ssamba.probe import fit_linear, row_space

    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 200))
    y = np.eye(3)[rng.integers(0, 3, 30)]
    z, q = row_space(x)
    assert z.shape == (30, 30) and q is not None
    np.testing.assert_allclose(z @ q.numpy().T, x, atol=1e-10)
    w_full, b_full = fit_linear(x, y, False, 1e-2)
    w_red, b_red = fit_linear(z, y, False, 1e-2)
    w_back = q @ w_red
    scale = float(w_full.abs().max())
    assert float((w_back - w_full).abs().max()) < 1e-4 * scale
    assert float((b_red - b_full).abs().max()) < 1e-4 * max(1.0, float(b_full.abs().max()))
    # fewer features than rows: nothing changes
    x_tall = rng.standard_normal((50, 8))
    same, none = row_space(x_tall)
    assert none is None and same is x_tall


@pytest.mark.parametrize("multilabel", [False, True])
def test_probe_objective_and_its_gradients_are_autograds(multilabel):
    """The written-out gradients of the probe's fit against autograd on the same loss."""
    from ssamba.probe import _loss, objective

    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 7, generator=g, dtype=torch.float64)
    y = (torch.rand(30, 4, generator=g) < 0.4).double()
    if not multilabel:
        y = torch.nn.functional.one_hot(torch.randint(0, 4, (30,), generator=g), 4).double()
    w = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    reference = _loss(x @ w + b, y, multilabel) + 0.3 * w.square().sum()
    reference.backward()
    loss, gw, gb = objective(x, y, w.detach(), b.detach(), multilabel, 0.3)
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, w.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb, b.grad, rtol=1e-10, atol=1e-12)
