"""Pretraining: the objective, learning, exact resume, torchrun/DDP parity, failure handling."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import ssamba
from conftest import TONE_CLASSES, make_wav
from ssamba.cli import main
from ssamba.configs import RUN_CONTROL, DaslConfig, FinetuneConfig, PretrainConfig
from ssamba.errors import TrainingError
from ssamba.pretrain import MaskedPatchObjective, clip_masks, pretrain
from ssamba.training import progress_bar, read_metrics

GOLDEN = Path(__file__).parent / "data" / "golden" / "official_ssamba_tiny_depth4"
SRC = Path(__file__).resolve().parents[1] / "src"


def chirps(folder: Path, n: int, seed: int) -> Path:
    """Short noisy chirps: structured enough for masked patch prediction to be learnable."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(10560) / 16000  # 64 fbank frames: the clips fit the input, no random window
    for i in range(n):
        f = rng.uniform(200, 3000)
        x = 0.3 * np.sin(2 * np.pi * f * t * (1 + 0.3 * t)) + 0.02 * rng.standard_normal(t.size)
        sf.write(folder / f"{i:03d}.wav", x.astype(np.float32), 16000)
    return folder


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_audio")
    return chirps(root / "train", 32, 0), chirps(root / "valid", 8, 1)


def config(out, train, valid=None, **kw):
    base = dict(
        out=str(out),
        model="ssamba_tiny",
        train=str(train),
        valid=None if valid is None else str(valid),
        target_length=64,
        batch_size=8,
        warmup_steps=2,
        lr=1e-3,
        progress=False,
        log_every=1,
        model_overrides={"depth": 2},
    )
    base.update(kw)
    return PretrainConfig(**base)


def train_losses(out):
    return {
        r["step"]: r["loss"]
        for r in read_metrics(Path(out) / "metrics.jsonl")
        if r["kind"] == "train"
    }


def test_joint_loss_is_nce_plus_ten_mse():
    torch.manual_seed(0)
    model = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=64).eval()
    fbank = torch.randn(2, 64, 128)
    masks = clip_masks([0, 1], (8, 4), 10, "cluster", "k")
    mask_g = clip_masks([0, 1], (8, 4), 10, "cluster", "g")
    loss, parts = MaskedPatchObjective(model, "joint", 10.0)(fbank, masks, mask_g)
    acc, nce = model.forward_pretrain(fbank, "mpc", mask_index=masks)
    mse = model.forward_pretrain(fbank, "mpg", mask_index=mask_g)
    assert loss.item() == pytest.approx((nce + 10 * mse).item(), rel=1e-6)
    assert parts["acc"].item() == acc.item()
    # masks depend on the clip identity only, never on its position in a batch
    assert torch.equal(clip_masks([1], (8, 4), 10, "cluster", "k")[0], masks[1])


def test_masked_patch_accuracy_rises_well_above_chance(audio, tmp_path):
    train, valid = audio
    summary = pretrain(config(tmp_path / "run", train, valid, max_steps=30, eval_every=10))
    chance = 1 / 25  # 25 of the 32 patches of a 64-frame clip are masked
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train_acc = np.mean([r["acc"] for r in records if r["kind"] == "train"][-5:])
    valid_acc = [r["acc"] for r in records if r["kind"] == "valid"]
    assert train_acc > 5 * chance, train_acc
    assert max(valid_acc) > 2.5 * chance, valid_acc  # held-out clips, fixed masks
    assert summary["steps"] == 30 and summary["best_metric"] == max(valid_acc)
    for name in ("final", "best"):
        assert ssamba.load_model(tmp_path / "run" / name).config.depth == 2


def test_resume_after_kill_equals_uninterrupted_run(audio, tmp_path):
    train, _ = audio
    steps = dict(max_steps=8, save_every=3)
    pretrain(config(tmp_path / "full", train, **steps))
    expected = train_losses(tmp_path / "full")

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ssamba", "pretrain", "--model", "ssamba_tiny", "--depth", "2"]
    cmd += ["--train", str(train), "--out", str(out), "--target-length", "64", "--batch-size", "8"]
    cmd += ["--warmup-steps", "2", "--lr", "1e-3", "--no-progress", "--log-every", "1"]
    cmd += ["--max-steps", "8", "--save-every", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_00000003").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # killed at an arbitrary moment after the first checkpoint
    proc.wait()
    assert main(cmd[3:] + ["--resume"]) == 0
    resumed = train_losses(out)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(audio, tmp_path, monkeypatch):
    train, _ = audio
    forward = MaskedPatchObjective.forward
    calls = {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        loss, parts = forward(self, *args)
        if calls["n"] == 4:
            loss = loss * float("nan")
            parts["loss"] = loss.detach()
        return loss, parts

    monkeypatch.setattr(MaskedPatchObjective, "forward", poisoned)
    with pytest.raises(TrainingError, match="NaN/inf at step 3.*step_00000002"):
        pretrain(config(tmp_path / "run", train, max_steps=6, save_every=2))
    latest = (tmp_path / "run" / "latest").read_text().strip()
    assert latest.endswith("step_00000002")
    ssamba.load_model(tmp_path / "run" / latest)  # intact


def test_output_folder_is_not_overwritten(audio, tmp_path, capsys):
    train, _ = audio
    args = ["pretrain", "--depth", "2", "--train", str(train), "--out", str(tmp_path / "r")]
    args += ["--target-length", "64", "--batch-size", "8", "--max-steps", "1", "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(args + ["--resume", "--lr", "5e-4"]) == 2
    assert "lr: 0.0001 -> 0.0005" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_continue_pretraining_from_an_official_checkpoint(audio, tmp_path):
    train, _ = audio
    cfg = config(tmp_path / "run", train, checkpoint=str(GOLDEN / "pretrain_state_dict.pt"))
    cfg.model_overrides = {}
    cfg.max_steps = 2
    pretrain(cfg)
    model = ssamba.load_model(tmp_path / "run" / "final")
    assert (model.config.depth, model.config.input_tdim, model.grid) == (4, 64, (8, 4))


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="no torchrun",
)
def test_torchrun_two_processes_match_a_single_process(audio, tmp_path):
    """... with the online probe in the DDP run only: rank 0 probes while the other rank waits,
    and the training is the same as without it."""
    train, _ = audio
    common = ["pretrain", "--depth", "2", "--drop-path", "0", "--train", str(train)]
    common += ["--target-length", "64", "--batch-size", "8", "--max-steps", "4", "--lr", "1e-3"]
    common += ["--warmup-steps", "2", "--no-progress", "--log-every", "1"]
    assert main(common + ["--out", str(tmp_path / "single")]) == 0
    for split, n in (("train", 3), ("test", 2)):
        for name, freq in TONE_CLASSES.items():
            for k in range(n):
                make_wav(tmp_path / "tones" / split / name / f"{k}.wav", 0.3, freq * (1 + k / 50))
    probe = ["--probe", f"{tmp_path / 'tones' / 'train'},{tmp_path / 'tones' / 'test'}"]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "ssamba"]
        + common
        + probe
        + ["--probe-every", "2", "--out", str(tmp_path / "ddp")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    single, ddp = train_losses(tmp_path / "single"), train_losses(tmp_path / "ddp")
    assert sorted(ddp) == [1, 2, 3, 4]
    for step in single:
        assert ddp[step] == pytest.approx(single[step], rel=1e-4), step
    # Weights: gradients agree to float rounding (summation order differs), but Adam normalises
    # each element, so near-zero gradients may move by up to lr per step either way.
    a = ssamba.load_model(tmp_path / "single" / "final").state_dict()
    b = ssamba.load_model(tmp_path / "ddp" / "final").state_dict()
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diffs.max() <= 2 * 1e-3 * 4 and diffs.median() < 1e-6
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["world_size"] == 2
    records = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "probe"] == [0, 2, 4]  # by rank 0 alone


def test_progress_bar_under_a_time_budget_names_it_instead_of_a_step_total():
    assert progress_bar(100, 0, enabled=False) is None
    bar = progress_bar(220_000, 3, enabled=True, minutes=3.0)
    try:
        assert bar.total is None and bar.n == 3 and "3 min budget" in bar.desc
    finally:
        bar.close()
    bar = progress_bar(50, 0, enabled=True)
    try:
        assert bar.total == 50
    finally:
        bar.close()


def test_config_file_replays_a_run(audio, tmp_path, capsys):
    """run.json holds the command-line settings: `--config run.json` reproduces them."""
    train, _ = audio
    args = ["pretrain", "--depth", "2", "--train", str(train), "-o", str(tmp_path / "a")]
    args += ["--target-length", "64", "--batch-size", "8", "--max-steps", "1", "--no-progress"]
    args += ["--lr", "5e-4", "--betas", "0.9", "0.99", "--mask-mode", "random", "--seed", "3"]
    assert main(args) == 0
    first = json.loads((tmp_path / "a" / "run.json").read_text())
    assert first["command"] == "pretrain" and first["model_overrides"] == {"depth": 2}
    replay = ["pretrain", "--config", str(tmp_path / "a" / "run.json"), "-o", str(tmp_path / "b")]
    assert main(replay + ["--no-progress"]) == 0
    second = json.loads((tmp_path / "b" / "run.json").read_text())
    assert {**first, "out": None} == {**second, "out": None}
    # flags given on the command line win over the file; an unknown setting is an error
    assert main(replay[:-1] + [str(tmp_path / "c"), "--no-progress", "--seed", "4"]) == 0
    assert json.loads((tmp_path / "c" / "run.json").read_text())["seed"] == 4
    (tmp_path / "bad.json").write_text(json.dumps({**first, "learning_rate": 1}))
    capsys.readouterr()
    assert (
        main(["pretrain", "--config", str(tmp_path / "bad.json"), "-o", str(tmp_path / "d")]) == 2
    )
    assert "learning_rate" in capsys.readouterr().err


def test_training_help_shows_defaults_and_loads_no_torch():
    code = (
        "import argparse, contextlib, io, sys\n"
        "import ssamba.cli.dasl, ssamba.cli.train\n"
        "p = argparse.ArgumentParser(prog='ssamba'); sub = p.add_subparsers()\n"
        "ssamba.cli.train.register(sub); ssamba.cli.dasl.register(sub)\n"
        "for cmd in ('pretrain', 'finetune', 'crossval', 'dasl', 'dasl-build'):\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        p.parse_args([cmd, '--help'])\n"
        "    print(f'=== {cmd}'); print(out.getvalue())\n"
        "print('torch loaded:', 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("torch loaded: False")
    helps = dict(part.split("\n", 1) for part in res.stdout.split("=== ")[1:])
    flat = {cmd: " ".join(text.split()) for cmd, text in helps.items()}
    assert "--lr LR learning rate (default: 0.0001, or the --recipe's)" in flat["pretrain"]
    assert (
        "--mpg-weight MPG_WEIGHT weight of the generative (MSE) loss (default: 10.0, or the "
        "--recipe's)" in (flat["pretrain"])
    )
    assert (
        "--eval-every N evaluate every N steps; 0: every epoch (default: 4000)"
        in (flat["pretrain"])
    )
    assert "(default: 0.0, or the --recipe's)" in flat["finetune"]  # --mixup
    assert (
        "--seed N random seed (weights, data order, masks, augmentation) (default: 0)"
        in (flat["dasl"])
    )
    assert "--lr-decay LR_DECAY learning rate factor at each decay (default: 0.85)" in flat["dasl"]
    assert "(default: 60)" in flat["dasl-build"]


@pytest.mark.parametrize(
    "command, cls",
    [("pretrain", PretrainConfig), ("finetune", FinetuneConfig), ("dasl", DaslConfig)],
)
def test_every_recorded_setting_is_an_option(command, cls):
    """What run.json records must be settable on the command line (for --config run.json)."""
    import argparse
    import dataclasses

    from ssamba.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices[command]._actions}
    recorded = {f.name for f in dataclasses.fields(cls)} - RUN_CONTROL
    assert recorded <= dests, recorded - dests


@pytest.mark.parametrize(
    "mask_patch, mask_mode", [(30, "cluster"), (60, "random"), (None, "frame")]
)
def test_validation_masks_are_official_cluster_masks_whatever_the_training_masks(
    mask_patch, mask_mode, monkeypatch
):
    from ssamba.pretrain import PretrainTask, default_mask_patch
    from ssamba.training import Distributed

    cfg = config("unused", "unused", target_length=256, mask_patch=mask_patch, mask_mode=mask_mode)
    torch.manual_seed(0)
    model = ssamba.create_model(
        "ssamba_tiny", depth=2, input_tdim=256, pretrain_heads=True, fstride=16, tstride=16
    )
    task = PretrainTask(cfg, model)
    seen = []

    def record(fbank, kind, mask_index):
        seen.append((kind, mask_index.clone()))
        zero = torch.zeros(())
        return (zero, zero) if kind == "mpc" else zero

    monkeypatch.setattr(model, "forward_pretrain", record)
    batch = {"fbank": torch.randn(3, 256, 128), "index": torch.tensor([0, 1, 2])}
    task.evaluate([batch], Distributed.from_env("cpu"))
    official = default_mask_patch(8 * 16)  # 100 of the 128 patches of a 256-frame clip
    assert official == round(128 * 400 / 512) and [k for k, _ in seen] == ["mpc", "mpg"]
    for _, masks in seen:
        assert masks.shape == (3, official)
    # exactly the cluster masks of (seed, clip index): the same in every evaluation of any run
    expected = clip_masks([0, 1, 2], (8, 16), official, "cluster", f"c:valid:{cfg.seed}")
    assert torch.equal(seen[0][1], expected)


def test_pretraining_evaluates_every_4000_steps_by_default_as_the_official_run():
    from ssamba.cli import build_parser

    assert PretrainConfig(out="x", train="t").eval_every == 4000
    args = build_parser().parse_args(["pretrain", "--train", "t", "-o", "o"])
    assert args.eval_every == 4000
    assert FinetuneConfig(out="x").eval_every == 0  # fine-tuning still evaluates every epoch


def test_run_json_records_provenance_and_resume_elsewhere_accepts_it(audio, tmp_path):
    from ssamba.cli.common import RECORDED_ONLY

    train, _ = audio
    out = tmp_path / "run"
    pretrain(config(out, train, max_steps=1))
    run = json.loads((out / "run.json").read_text())
    keys = ("version", "git", "torch", "numba", "triton", "devices", "world_size", "precision")
    assert all(k in run for k in keys), run
    assert run["torch"] == torch.__version__ and run["devices"] == "1 x cpu"
    assert run["precision"] == "fp32" and run["world_size"] == 1
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SRC, capture_output=True, text=True)
    if head.returncode == 0:  # run from this checkout: its commit (maybe +dirty)
        assert run["git"].split("+")[0] == head.stdout.strip()
    assert set(keys) - {"precision"} <= RECORDED_ONLY  # a --config replay ignores them
    # the same run resumed on another machine with other software: allowed
    run.update(torch="0.0", numba=None, triton="9.9", devices="8 x NVIDIA H200", git="abc123")
    (out / "run.json").write_text(json.dumps(run))
    summary = pretrain(config(out, train, max_steps=2, resume=True))
    assert summary["steps"] == 2


def test_pretraining_recipes_and_ablation_flags():
    from ssamba.cli import build_parser
    from ssamba.cli.train import pretrain_config
    from ssamba.errors import RecipeError
    from ssamba.pretrain import build_model
    from ssamba.recipes.pretraining import (
        OFFICIAL_FIELDS,
        list_pretrain_recipes,
        load_pretrain_recipe,
    )

    names = list_pretrain_recipes()
    assert len(names) == 12 and "ssamba_base_250" in names and "ssamba_base_teacher" in names
    assert set(load_pretrain_recipe("ssamba_tiny_400")["pretrain"]) == set(OFFICIAL_FIELDS)
    parse = build_parser().parse_args
    base = ["pretrain", "--train", "t", "-o", "o"]
    cfg = pretrain_config(parse([*base, "--recipe", "ssamba_small_300"]))
    assert (cfg.model, cfg.mask_patch, cfg.target_length, cfg.lr) == (
        "ssamba_small",
        300,
        1024,
        1e-4,
    )
    assert (cfg.mask_mode, cfg.objective, cfg.eval_every) == ("cluster", "joint", 4000)
    assert (cfg.batch_size, cfg.epochs) == (64, 10)  # the official script's
    # options given win over the recipe
    cfg = pretrain_config(parse([*base, "--recipe", "ssamba_tiny_400", "--mask-patch", "250"]))
    assert (cfg.model, cfg.mask_patch) == ("ssamba_tiny", 250)
    assert pretrain_config(parse(base)).mask_patch is None  # no recipe: the defaults
    notes = " ".join(load_pretrain_recipe("ssamba_base_400")["notes"])
    assert "run_mask_patch_amba.sh" in notes and "GPUs" in notes  # sources and gaps named
    with pytest.raises(RecipeError, match="ssamba_tiny_250"):
        load_pretrain_recipe("ssamba_huge_400")
    # the paper's ablations map to the model config
    argv = [*base, "--depth", "2", "--unidirectional", "--norm", "rmsnorm", "--residual-fp32"]
    cfg = pretrain_config(parse([*argv, "--target-length", "64", "--mask-mode", "random"]))
    assert cfg.model_overrides == {
        "depth": 2, "norm": "rmsnorm", "bidirectional": False, "residual_in_fp32": True
    }  # fmt: skip
    config = build_model(cfg, None).config
    assert (config.bidirectional, config.norm, config.residual_in_fp32) == (False, "rmsnorm", True)
    plain = pretrain_config(parse([*base, "--no-residual-fp32"]))
    assert plain.model_overrides == {"residual_in_fp32": False}
    assert pretrain_config(parse(base)).model_overrides == {}
