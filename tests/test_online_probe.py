"""The online probe of ``ssamba pretrain --probe``: the score it logs is ``ssamba probe``'s, it
leaves training unchanged, keeps the best model, survives resume, and its kNN vote is a plain
majority vote."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ssamba
import ssamba.pretrain
import ssamba.probe as probe_mod
from conftest import make_wav
from ssamba.cli import build_parser, main
from ssamba.data import read_manifest
from ssamba.embeddings import embed_files
from ssamba.errors import UsageError
from ssamba.pretrain import pretrain
from ssamba.probe import holdout_split, knn_accuracy, linear_probe, subsample
from ssamba.training import read_metrics
from ssamba.training.loggers import _scalars
from test_pretrain import chirps, config, train_losses

# overlapping frequency ranges: the classes are learnable but not perfectly separable
RANGES = {"low": (300, 1000), "mid": (700, 1700), "high": (1300, 2600)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine a second intra-op thread
    makes these runs several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Unlabelled chirps to pretrain on; noisy tones of overlapping classes to probe."""
    root = tmp_path_factory.mktemp("online_probe")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("valid", 4)):
        for name, (low, high) in RANGES.items():
            for k in range(n):
                freq = rng.uniform(low, high)
                path = root / "noisy" / split / name / f"{k}.wav"
                make_wav(path, 0.4, freq, amplitude=0.2, noise=0.15, seed=int(rng.integers(1e6)))
    return chirps(root / "audio", 16, 0), root / "noisy" / "train", root / "noisy" / "valid"


def probe_records(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "probe"}


def test_logged_score_is_ssamba_probe_on_the_saved_model(data, tmp_path, capsys, monkeypatch):
    audio, train, valid = data
    batch_sizes = []

    def spy(model, paths, *, batch_size, **options):
        batch_sizes.append(batch_size)
        return embed_files(model, paths, batch_size=batch_size, **options)

    monkeypatch.setattr(probe_mod, "embed_files", spy)
    out = tmp_path / "run"
    argv = ["pretrain", "--depth", "2", "--train", str(audio), "-o", str(out), "--workers", "0"]
    argv += ["--target-length", "64", "--batch-size", "8", "--max-steps", "3", "--lr", "1e-3"]
    argv += ["--warmup-steps", "1", "--no-progress", "--probe", f"{train},{valid}"]
    argv += ["--probe", str(train), "--probe-every", "2", "--keep-best-probe"]
    argv += ["--probe-pooling", "mean+std", "--probe-layers", "0", "-1", "--probe-batch-size", "3"]
    assert main(argv) == 0
    assert batch_sizes and set(batch_sizes) == {3}
    monkeypatch.undo()
    assert "online probe:" in capsys.readouterr().out
    records = probe_records(out)
    assert sorted(records) == [0, 2, 3]  # step 0 (the initial weights), every 2, the end
    # two sets under the same parent folder: "noisy" and "noisy_2" (TEST held out of TRAIN)
    options = dict(layers=[0, -1], pooling="mean+std")
    model = ssamba.load_model(out / "final")
    expected = {
        "noisy": linear_probe(model, train, valid, **options)["valid"]["accuracy"],
        "noisy_2": linear_probe(
            model, *holdout_split(read_manifest(train), 0.2, seed=0), **options
        )["valid"]["accuracy"],
    }
    last = records[3]
    for name, score in expected.items():
        assert last[f"probe/{name}/score"] == pytest.approx(score, abs=1e-6), name
        assert 0 <= last[f"probe/{name}/knn"] <= 1
    assert last["probe/score"] == pytest.approx(np.mean(list(expected.values())), abs=1e-6)
    assert last["probe/seconds"] > 0
    # best_probe/: the model of the best mean score, loadable, with what selected it
    scores = {step: r["probe/score"] for step, r in records.items()}
    best_step = max(scores, key=lambda s: (scores[s], -s))  # the first of equal scores
    info = json.loads((out / "best_probe" / "probe.json").read_text())
    assert info["step"] == best_step and info["score"] == pytest.approx(scores[best_step])
    best = ssamba.load_model(out / "best_probe")
    again = linear_probe(best, train, valid, **options)["valid"]["accuracy"]
    assert info["sets"]["noisy"]["score"] == pytest.approx(again, abs=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_probe_step"] == best_step and 0 < summary["probe_fraction"] < 1
    assert json.loads((out / "run.json").read_text())["probe"] == [f"{train},{valid}", str(train)]


def test_a_run_with_the_probe_ends_with_the_weights_of_one_without(data, tmp_path):
    audio, train, valid = data
    common = dict(max_steps=3, workers=0, model_overrides={"depth": 2, "drop_path": 0.1})
    pretrain(config(tmp_path / "plain", audio, **common))
    pretrain(config(tmp_path / "probed", audio, probe=[f"{train},{valid}"], probe_every=1,
                    **common))  # fmt: skip
    assert sorted(probe_records(tmp_path / "probed")) == [0, 1, 2, 3]
    assert train_losses(tmp_path / "plain") == train_losses(tmp_path / "probed")
    a = ssamba.load_model(tmp_path / "plain" / "final").state_dict()
    b = ssamba.load_model(tmp_path / "probed" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_best_probe_score_survives_resume(data, tmp_path, monkeypatch):
    """Scores scripted per probe: the best (step 0) comes before the checkpoint the run resumes
    from; the resumed run must not replace best_probe/ with a worse model."""
    audio, train, valid = data
    script = iter([0.9, 0.5, 0.6, 0.7, 0.8])

    def scripted(model, train_set, test_set, **options):
        return {"score": next(script), "metric": "accuracy"}

    monkeypatch.setattr(ssamba.pretrain, "probe_scores", scripted)
    out = tmp_path / "run"
    settings = dict(workers=0, probe=[f"{train},{valid}"], probe_every=1, keep_best_probe=True)
    pretrain(config(out, audio, max_steps=2, save_every=2, **settings))
    state = torch.load(out / "checkpoints" / "step_00000002" / "trainer_state.pt")
    assert state["callback"] == {"best_score": 0.9, "best_step": 0}
    summary = pretrain(config(out, audio, max_steps=4, save_every=2, resume=True, **settings))
    assert (summary["best_probe_score"], summary["best_probe_step"]) == (0.9, 0)
    assert json.loads((out / "best_probe" / "probe.json").read_text())["step"] == 0
    assert {s: r["probe/score"] for s, r in probe_records(out).items()} == {
        0: 0.9, 1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8
    }  # fmt: skip


def test_bad_probe_values_fail_up_front_in_one_line(data, tmp_path, capsys):
    audio, train, _ = data
    base = ["pretrain", "--depth", "2", "--train", str(audio), "--target-length", "64"]
    for value, expected in [
        (f"{train},{tmp_path / 'missing.csv'}", "missing.csv: manifest not found"),
        (f"{train},a,b", "expected [NAME=]TRAIN[,TEST]"),
        (f"bad name={train}", "the name 'bad name'"),
        (str(audio), "no labels"),  # an unlabelled folder
    ]:
        out = tmp_path / "never"
        assert main([*base, "-o", str(out), "--probe", value, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --probe ") and expected in err and "\n" not in err, err
        assert not out.exists()  # stopped before the run started
    with pytest.raises(UsageError, match="--keep-best-probe needs"):
        config(tmp_path / "x", audio, keep_best_probe=True)
    with pytest.raises(UsageError, match="--probe-layers: layer 5 out of range"):
        pretrain(config(tmp_path / "x", audio, probe=[str(train)], probe_layers=[5]))
    actions = build_parser()._actions
    sub = next(a for a in actions if isinstance(a, argparse._SubParsersAction)).choices["pretrain"]
    shown = " ".join(sub.format_help().split())
    assert "--probe-every N probe every N steps; 0: at every evaluation" in shown
    assert "(default: 0)" in shown and "--probe-max-files N" in shown and "(default: 2000)" in shown
    assert "--probe-batch-size N clips embedded together by the probe" in shown


def test_knn_is_a_majority_vote_with_ties_to_the_nearest():
    rng = np.random.default_rng(3)
    x_train, x_test = rng.standard_normal((30, 5)), rng.standard_normal((40, 5))
    y_train, y_test = rng.integers(0, 3, 30), rng.integers(0, 3, 40)

    def brute_force(k):
        right = 0
        for x, y in zip(x_test, y_test, strict=True):
            sims = [
                (float(x @ t / (np.linalg.norm(x) * np.linalg.norm(t))), i)
                for i, t in enumerate(x_train)
            ]
            nearest = [i for _, i in sorted(sims, key=lambda s: (-s[0], s[1]))[:k]]
            votes = {c: sum(y_train[i] == c for i in nearest) for c in set(y_train[nearest])}
            top = max(votes.values())
            right += next(y_train[i] for i in nearest if votes[y_train[i]] == top) == y
        return right / len(y_test)

    for k in (1, 2, 4, 6, 20, 100):  # even k: ties; 100 > 30: every training point votes
        assert knn_accuracy(x_train, y_train, x_test, y_test, k) == brute_force(k), k
    # a tie goes to the nearest neighbour's class, not to the lower class index
    near, far = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    x = np.concatenate([far, near])
    assert knn_accuracy(x, np.array([0, 1]), np.array([[0.9, 0.1]]), np.array([1]), k=2) == 1.0


def test_holdout_and_subsets_are_stratified_and_seeded(data):
    _, train, _ = data
    manifest = read_manifest(train)  # 8 files per class
    kept, held = holdout_split(manifest, 0.2, seed=0)
    assert len(held) == 6 and len(kept) == 18
    assert sorted(ex.labels[0] for ex in held) == sorted(["high", "low", "mid"] * 2)
    assert not {ex.path for ex in kept} & {ex.path for ex in held}
    assert holdout_split(manifest, 0.2, seed=0)[1].examples == held.examples
    assert holdout_split(manifest, 0.2, seed=1)[1].examples != held.examples
    small = subsample(manifest, 5, seed=0)
    assert len(small) == 5 and small.examples == subsample(manifest, 5, seed=0).examples
    assert subsample(manifest, 100, seed=0) is manifest
    # TensorBoard shows probe/NAME/score as it is, not as probe/probe/NAME/score
    assert _scalars({"kind": "probe", "step": 1, "probe/score": 0.5}) == {"probe/score": 0.5}
