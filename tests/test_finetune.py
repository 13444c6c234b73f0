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


# ---------------------------------------------------------------------------- LP-FT
@pytest.mark.parametrize("preset", ["ssamba_tiny", "ssast_tiny"])
def test_head_init_probe_starts_where_the_linear_probe_ends(tones, tmp_path, preset):
    """--head-init probe: the head is the probe of `ssamba probe` (same fit, same L2 choice) on
    the features it reads, so the model at step 0 scores exactly the probe's validation accuracy
    and logits."""
    from ssamba.data import AudioDataset, read_manifest
    from ssamba.finetune import build_model, head_inputs, probe_head
    from ssamba.probe import fit_probe, select_linear
    from ssamba.training import read_metrics

    config = cfg(tones, tmp_path / "run", model=preset, head_init="probe", pool="bands+std",
                 epochs=1, normalize="-4,4")  # fmt: skip
    summary = finetune(config)
    probe = summary["head_probe"]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    first = [r for r in records if r["kind"] == "valid" and r["step"] == 0]
    assert len(first) == 1 and first[0]["acc"] == pytest.approx(probe["valid"]["accuracy"])
    assert summary["best_metric"] >= first[0]["acc"]  # best/ is never worse than the probe

    # the head computes the probe's logits; the probe is the one `ssamba probe` fits
    stats = (-4.0, 4.0)
    model = build_model(config, 3, stats, pool="bands+std").eval()
    train = read_manifest(config.train)
    sets = {
        name: AudioDataset(read_manifest(path, classes=train.classes), 96, stats, train=False)
        for name, path in (("train", config.train), ("valid", config.valid))
    }
    data = {name: head_inputs(model, ds, 6, "cpu") for name, ds in sets.items()}
    reference = fit_probe(data, False, train.classes)
    chosen = select_linear(data, False)
    again = probe_head(model, {**sets, "test": None}, config, "cpu")
    assert again["l2"] == reference["l2"] == probe["l2"]
    assert again["valid"]["accuracy"] == reference["valid"]["accuracy"]
    fbank = torch.stack([sets["valid"][i]["fbank"] for i in range(4)])
    with torch.no_grad():
        logits = model(fbank).double()
    x = (data["valid"][0][:4] - chosen.mean) / chosen.std
    want = torch.as_tensor(x) @ chosen.weight + chosen.bias
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)


def test_head_init_probe_needs_a_validation_split(tones, tmp_path):
    with pytest.raises(UsageError, match="--head-init probe needs --valid"):
        finetune(cfg(tones, tmp_path / "run", head_init="probe", valid=None, epochs=1))
    with pytest.raises(UsageError, match="head_init"):
        FinetuneConfig(out="x", head_init="linear")
    for bad in (0, 1.5, True):
        with pytest.raises(UsageError, match="layer_decay"):
            FinetuneConfig(out="x", layer_decay=bad)
    with pytest.raises(UsageError, match="freeze_encoder_steps"):
        FinetuneConfig(out="x", freeze_encoder_steps=-1)


@pytest.mark.parametrize(
    ("preset", "depth", "layers"), [("ssamba_tiny", 4, 2), ("ssast_tiny", 2, 2)]
)
def test_layer_decay_rates_fall_by_the_factor_per_layer_from_the_top(preset, depth, layers):
    """lr x F^(distance from the top): final norm (and head) at the top, each layer (a pair of
    SSAMBA layers) one step down, patch/positional embeddings and class tokens at the bottom."""
    model = ssamba.create_model(
        preset, depth=depth, input_tdim=64, num_classes=3, pretrain_heads=False
    )
    config = FinetuneConfig(out="x", lr=1e-3, head_lr_mult=10.0, layer_decay=0.5)
    groups = FinetuneTask(config, model, ["a", "b", "c"]).param_groups()
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(rate) == sum(1 for _ in model.parameters())  # every parameter in one group
    stack = "layers" if preset.startswith("ssamba") else "blocks"
    per_layer = depth // layers
    for name, p in model.named_parameters():
        if name.startswith("mlp_head."):
            want = 1e-2
        elif name.startswith(("patch_embed", "pos_embed", "cls_token", "dist_token")):
            want = 1e-3 * 0.5 ** (layers + 1)
        elif name.startswith(f"encoder.{stack}."):
            k = int(name.split(".")[2]) // per_layer
            want = 1e-3 * 0.5 ** (layers - k)
        else:  # the final norm
            want = 1e-3
        assert rate[id(p)] == pytest.approx(want), name
    plain = FinetuneTask(FinetuneConfig(out="x"), model, ["a", "b", "c"]).param_groups()
    assert len(plain) == 2  # no decay: body and head, as before (checkpoints resume)


def test_freeze_encoder_steps_trains_only_the_head_then_everything(tones, tmp_path):
    start = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=96, fstride=16, tstride=16,
                                norm_mean=-4.0, norm_std=4.0, pretrain_heads=False)  # fmt: skip
    start.save_pretrained(tmp_path / "start")
    common = dict(checkpoint=str(tmp_path / "start"), fstride=16, tstride=16, normalize="auto",
                  model_overrides={}, valid=None, test=None)  # fmt: skip
    frozen = finetune(
        cfg(tones, tmp_path / "frozen", freeze_encoder_steps=3, max_steps=3, **common)
    )
    assert frozen["steps"] == 3
    after = ssamba.load_model(tmp_path / "frozen" / "final").state_dict()
    before = start.state_dict()
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0, msg=name)
    thawed = finetune(
        cfg(tones, tmp_path / "thawed", freeze_encoder_steps=2, max_steps=3, **common)
    )
    assert thawed["steps"] == 3
    moved = ssamba.load_model(tmp_path / "thawed" / "final").state_dict()
    assert not torch.equal(moved["patch_embed.proj.weight"], before["patch_embed.proj.weight"])
    schedule = LRSchedule()
    opt = torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0,
                             "frozen_until": 2}])  # fmt: skip
    opt.param_groups[0]["base_lr"] = 1.0
    rates = []
    for step in range(4):
        schedule.apply(opt, step)
        rates.append(opt.param_groups[0]["lr"])
    assert rates == [0.0, 0.0, 1.0, 1.0]


def test_lpft_options_are_in_run_json_and_replay_with_config(tones, tmp_path):
    from ssamba.cli import main

    out = tmp_path / "run"
    argv = ["finetune", "--train", str(tones / "train.csv"), "--valid", str(tones / "valid.csv"),
            "-o", str(out), "--model", "ssamba_tiny", "--depth", "2", "--target-length", "96",
            "--batch-size", "6", "--max-steps", "2", "--head-init", "probe", "--layer-decay",
            "0.75", "--freeze-encoder-steps", "1", "--pool", "bands", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((out / "run.json").read_text())
    assert (saved["head_init"], saved["layer_decay"], saved["freeze_encoder_steps"]) == (
        "probe", 0.75, 1)  # fmt: skip
    replay = ["finetune", "--config", str(out / "run.json"), "-o", str(tmp_path / "again")]
    assert main(replay + ["--no-progress"]) == 0
    again = json.loads((tmp_path / "again" / "run.json").read_text())
    assert {**saved, "out": None, "git": None} == {**again, "out": None, "git": None}


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_evaluate_reproduces_the_runs_own_test_metrics(tones, tmp_path, loss):
    """One prediction path: `ssamba evaluate` on best/ scores with the head's own activation
    (softmax for ce, sigmoid for bce) and so reports exactly the run's test metrics."""
    from ssamba.cli import main

    out = tmp_path / "run"
    summary = finetune(cfg(tones, out, loss=loss, epochs=2))
    assert ssamba.load_model(out / "best").config.head_loss == loss
    argv = ["evaluate", "-c", str(out / "best"), str(tones / "test.csv"), "-o",
            str(tmp_path / "eval"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    run = json.loads((out / "test_metrics.json").read_text())
    for key in ("acc", "map", "mauc", "d_prime"):
        assert evaluated[key] == run[key] == summary["test"][key], key
    scores = np.load(tmp_path / "eval" / "scores.npz")["scores"]
    if loss == "ce":  # softmax: every row sums to one
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_head_scores_follow_the_loss_and_old_folders_keep_the_sigmoid(tmp_path):
    from ssamba.evaluation import head_scores

    logits = torch.tensor([[2.0, -1.0, 0.5]])
    torch.testing.assert_close(head_scores(logits, "ce"), logits.softmax(-1))
    torch.testing.assert_close(head_scores(logits, "bce"), torch.sigmoid(logits))
    with pytest.raises(ValueError, match="head_loss"):
        head_scores(logits, "hinge")
    model = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=64, num_classes=3)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["head_loss"]  # a folder written before the field existed
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert ssamba.load_model(tmp_path / "m").config.head_loss == "bce"


def test_metric_loss_keeps_the_checkpoint_with_the_lowest_validation_loss(tones, tmp_path):
    """--metric loss: best/ is the evaluation with the lowest validation loss (the run's own
    loss on its scores), and summary.json reports that loss."""
    from ssamba.finetune import score_loss
    from ssamba.training import read_metrics

    out = tmp_path / "run"
    summary = finetune(cfg(tones, out, metric="loss", epochs=3, head_init="probe"))
    valid = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "valid"]
    lowest = min(valid, key=lambda r: r["loss"])
    assert valid[0]["step"] == 0 and len(valid) == 4
    assert summary["best_step"] == lowest["step"]
    assert summary["best_metric"] == pytest.approx(lowest["loss"])
    assert summary["test"]["loss"] > 0
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    want = -(np.log(0.7) + np.log(0.1)) / 2
    assert score_loss(scores, targets, "ce") == pytest.approx(want)
    bce = -(np.log(0.7) + np.log(0.8) + np.log(0.9) + np.log(0.9) + np.log(0.1) + np.log(0.2)) / 6
    assert score_loss(scores, targets, "bce") == pytest.approx(bce)
