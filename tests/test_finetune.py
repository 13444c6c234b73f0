"""Fine-tuning: learning on synthesised labelled audio, recipes, schedules, label handling."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import ssamba
from ssamba.cli import build_parser
from ssamba.cli.train import finetune_config
from ssamba.configs import FinetuneConfig
from ssamba.errors import UsageError
from ssamba.finetune import FinetuneTask, finetune
from ssamba.training import LRSchedule

FREQS = {"low": 300.0, "mid": 900.0, "high": 2700.0}


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """Three tone classes with jittered pitch and noise: train/valid/test CSV manifests."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    rows = {"train": [], "valid": [], "test": []}
    for label, freq in FREQS.items():
        for i in range(14):
            split = "train" if i < 8 else ("valid" if i < 11 else "test")
            f = freq * rng.uniform(0.9, 1.1)
            x = 0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / f"{label}_{i}.wav", x.astype(np.float32), 16000)
            rows[split].append(f"{label}_{i}.wav,{label}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    return root


def cfg(root, out, **kw):
    base = dict(
        out=str(out),
        train=str(root / "train.csv"),
        valid=str(root / "valid.csv"),
        test=str(root / "test.csv"),
        target_length=96,
        batch_size=6,
        lr=1e-3,
        epochs=5,
        progress=False,
        model_overrides={"depth": 2},
    )
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.mark.parametrize("preset", ["ssamba_tiny", "ssast_tiny"])
def test_finetuning_learns_far_above_chance(tones, tmp_path, preset):
    summary = finetune(cfg(tones, tmp_path / "run", model=preset, freqm=8, timem=8))
    assert summary["test"]["acc"] >= 2 / 3  # twice chance (1/3) after 40 small steps
    best = tmp_path / "run" / "best"
    assert json.loads((best / "classes.json").read_text()) == ["high", "low", "mid"]
    model = ssamba.load_model(best)
    assert model.config.num_classes == 3 and model.config.pretrain_heads is False


def test_multilabel_bce_reports_map(tones, tmp_path):
    lines = ["path,label"]
    for line in (tones / "train.csv").read_text().splitlines()[1:]:
        path, label = line.split(",")
        lines.append(f'{path},"{label};{"tonal"}"')
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    for split in ("valid", "test"):
        text = (tones / f"{split}.csv").read_text()
        rows = [f'{r.split(",")[0]},"{r.split(",")[1]};tonal"' for r in text.splitlines()[1:]]
        (tmp_path / f"{split}.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    for wav in tones.glob("*.wav"):  # audio paths are relative to the manifest folder
        (tmp_path / wav.name).symlink_to(wav)
    summary = finetune(cfg(tmp_path, tmp_path / "run", loss="bce", metric="map", epochs=3))
    assert 0 <= summary["test"]["map"] <= 1 and summary["best_metric"] is not None
    with pytest.raises(ValueError, match="multi-label: use --loss bce"):
        finetune(cfg(tmp_path, tmp_path / "run2", epochs=1))


def test_unknown_test_label_is_an_error(tones, tmp_path):
    (tmp_path / "test.csv").write_text(f"path,label\n{tones / 'low_0.wav'},whistle\n")
    config = cfg(tones, tmp_path / "run", epochs=1, test=str(tmp_path / "test.csv"))
    with pytest.raises(ValueError, match="whistle"):
        finetune(config)


def test_recipe_then_explicit_options():
    parser = build_parser()
    args = parser.parse_args(
        ["finetune", "--recipe", "esc50", "--train", "t.csv", "--out", "o", "--lr", "0.5"]
    )
    config = finetune_config(args, args.recipe)
    assert (config.target_length, config.freqm, config.timem, config.noise) == (512, 24, 96, True)
    assert config.lr == 0.5 and config.batch_size == 48 and config.weight_decay == 5e-7
    assert config.checkpoint is None and config.normalize == "esc50"
    plain = finetune_config(parser.parse_args(["finetune", "--train", "t", "-o", "o"]))
    assert (plain.lr, plain.weight_decay, plain.fstride, plain.epochs) == (1e-4, 5e-7, 10, 1)
    # the old spelling of -c/--checkpoint still works; "none" means a fresh model
    old = parser.parse_args(["finetune", "--train", "t", "-o", "o", "--init", "ckpt"])
    assert finetune_config(old).checkpoint == "ckpt"
    fresh = parser.parse_args(["finetune", "--train", "t", "-o", "o", "-c", "none"])
    assert finetune_config(fresh).checkpoint is None


def test_settings_are_checked_when_a_config_is_made():
    with pytest.raises(UsageError, match="mixup"):
        FinetuneConfig(out="x", mixup=1.5)
    with pytest.raises(UsageError, match="batch_size"):
        FinetuneConfig(out="x", batch_size=0)
    with pytest.raises(UsageError, match="pass saved weights as checkpoint"):
        FinetuneConfig(out="x", model="some/folder")
    assert FinetuneConfig(out="x", init="old.pth").checkpoint == "old.pth"  # the old name


def test_step_decay_and_head_learning_rate():
    schedule = LRSchedule(warmup_steps=0, mode="step_decay", factor=0.5, decay_start=2)
    scales = []
    for epoch in range(4):
        scales.append(schedule.lr_factor(0))
        schedule.end_epoch(epoch)
    assert scales == [
        1.0,
        1.0,
        0.5,
        0.25,
    ]  # decays after epochs 2, 3, ... (1-based), as MultiStepLR
    warm = LRSchedule(warmup_steps=4)
    assert [warm.lr_factor(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    model = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=64, num_classes=3)
    task = FinetuneTask(FinetuneConfig(out="x", lr=1e-4, head_lr_mult=3.0), model, ["a", "b", "c"])
    body, head = task.param_groups()
    assert head["lr"] == pytest.approx(3e-4) and body["lr"] == 1e-4
    assert sum(p.numel() for p in head["params"]) == 192 * 2 + 192 * 3 + 3


def test_plateau_halving():
    # as torch's ReduceLROnPlateau: halves on the third evaluation without a new best (> patience)
    schedule = LRSchedule(mode="plateau", factor=0.5, patience=2)
    for metric in (0.1, 0.2, 0.2, 0.15, 0.3, 0.1, 0.1):
        schedule.observe(metric)
    assert schedule.scale == 1.0  # two stalls after each best: not yet
    for metric in (0.1, 0.3, 0.3, 0.3):
        schedule.observe(metric)
    assert schedule.scale == 0.25


def test_audioset20k_recipe_decays_as_the_official_multistep_lr():
    """run_as_amba.sh: MultiStepLR(milestones 15, 25, 35, 45, gamma 0.75), stepped per epoch."""
    from ssamba.recipes import load_recipe

    cfg = FinetuneConfig(out="x", **load_recipe("audioset20k")["finetune"])
    model = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=64, num_classes=3)
    schedule = FinetuneTask(cfg, model, ["a", "b", "c"]).schedule
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    official = torch.optim.lr_scheduler.MultiStepLR(opt, [15, 25, 35, 45], gamma=0.75)
    for epoch in range(cfg.epochs):
        assert schedule.lr_factor(0) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), epoch
        schedule.end_epoch(epoch)
        opt.step()
        official.step()


def test_average_epochs_writes_the_mean_of_those_epoch_checkpoints_and_tests_it(tones, tmp_path):
    out = tmp_path / "run"
    summary = finetune(cfg(tones, out, epochs=3, keep=1, average_epochs=[2, 3]))
    averaged = summary["averaged"]
    assert averaged["epochs"] == [2, 3] and averaged["checkpoints"] == 2  # kept despite keep=1
    assert 0.0 <= averaged["test"]["acc"] <= 1.0
    assert (
        json.loads((out / "averaged_test_metrics.json").read_text())["acc"]
        == (averaged["test"]["acc"])
    )
    steps = sorted((out / "checkpoints").glob("step_*"))[-2:]  # the ends of epochs 2 and 3
    states = [ssamba.load_model(p).state_dict() for p in steps]
    mean = ssamba.load_model(out / "averaged")
    for name, value in mean.state_dict().items():
        if value.is_floating_point():
            want = ((states[0][name].double() + states[1][name].double()) / 2).to(value.dtype)
            torch.testing.assert_close(value, want, rtol=0, atol=1e-7, msg=name)
    assert (out / "averaged" / "classes.json").is_file()
    with pytest.raises(UsageError, match="average_epochs"):
        FinetuneConfig(out="x", epochs=3, average_epochs=[2, 4])


def test_audioset20k_recipe_averages_epochs_12_to_40():
    argv = ["finetune", "--recipe", "audioset20k", "--train", "t.csv", "-o", "o"]
    assert finetune_config(build_parser().parse_args(argv), "audioset20k").average_epochs == [
        12,
        40,
    ]
