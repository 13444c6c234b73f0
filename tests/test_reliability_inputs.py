"""Bad input gets one clear line (issue 15, items 1, 2 and 4).

Each test runs the command line in-process (``ssamba.cli.main``) with one bad input and checks
the exit status (2: bad input, 1: a failure at run time or problems found by ``check-data``),
that stderr is exactly one ``error:`` line naming the option, value or file, and that nothing
was written where nothing should be. Tiny models and synthetic audio throughout.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import make_wav, write_corrupt
from ssamba.audio import load_audio
from ssamba.cli import main
from ssamba.data import AudioDataset, drop_bad, read_manifest
from ssamba.errors import AudioError, ManifestError, UsageError
from ssamba.models.config import ModelConfig, preset_config
from ssamba.models.model import AudioModel

TINY = ["--model", "ssamba_tiny", "--depth", "2", "--target-length", "64", "--batch-size", "2"]
QUIET = ["--no-progress", "--device", "cpu", "--max-steps", "1"]


# ---------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Six 0.7 s tones in two classes, manifests of them, and bad files beside them."""
    root = tmp_path_factory.mktemp("reliability")
    wavs = []
    for label, freq in (("low", 220.0), ("high", 3520.0)):
        for k in range(3):
            wavs.append(make_wav(root / "tones" / label / f"{k}.wav", 0.7, freq * (1 + k / 20)))
    rows = [f"{p},{p.parent.name}" for p in wavs]
    (root / "train.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    (root / "list.txt").write_text("\n".join(map(str, wavs)) + "\n")
    for k in range(3):
        write_corrupt(root / "bad" / f"{k}.wav", seed=k)
    return root


def run(capsys, *argv) -> tuple[int, list[str], str]:
    """(exit status, the non-empty stderr lines, stdout) of ``ssamba ARGV``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


def one_error(capsys, argv, code: int = 2, *names: str, warned: bool = False) -> str:
    """Run ``argv``; assert the exit status and exactly one ``error:`` line naming ``names``
    (``warned``: after the one ``warning:`` line that training from random weights prints)."""
    status, lines, _ = run(capsys, *argv)
    if warned:
        assert lines and lines[0].startswith("warning: no -c/--checkpoint"), lines
        lines = lines[1:]
    assert status == code, lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in line
    for name in names:
        assert name in line, line
    return line


def pretrain(data: Path, out: Path, *extra) -> list:
    return ["pretrain", "--train", data / "list.txt", "-o", out, *TINY, *QUIET, *extra]


def tiny_folder(path: Path, **config) -> Path:
    """A save_pretrained folder of a 2-layer SSAMBA tiny (random weights)."""
    torch.manual_seed(0)
    AudioModel(preset_config("ssamba_tiny", depth=2, input_tdim=64, **config)).save_pretrained(path)
    return path


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))  # NaN is written as NaN


# ---------------------------------------------------------------------------- pretrain options
@pytest.mark.parametrize(
    "flag, value, allowed",
    [
        ("--batch-size", "0", ">= 1"),
        ("--depth", "0", ">= 1"),
        ("--depth", "-1", ">= 1"),
        ("--log-every", "0", ">= 1"),
        ("--workers", "-1", ">= 0"),
        ("--num-workers", "-1", ">= 0"),
        ("--drop-path", "2", "between 0 and 1"),
        ("--mask-patch", "0", ">= 1"),  # no longer silently 50
        ("--target-length", "0", ">= 16"),
        ("--target-length", "8", ">= 16"),
        ("--model", "ssamba_huge", "invalid choice"),
        ("--grad-clip", "-1", "> 0"),
        ("--warmup-steps", "-5", ">= 0"),
        ("--epochs", "0", ">= 1"),
        ("--epochs", "-1", ">= 1"),
        ("--max-steps", "-3", ">= 1"),
        ("--save-every", "-1", ">= 0"),
    ],
)
def test_pretrain_option_out_of_range(data, tmp_path, capsys, flag, value, allowed):
    out = tmp_path / "run"
    line = one_error(capsys, pretrain(data, out, flag, value), 2, flag, value, allowed)
    assert "--help" in line
    assert not out.exists()


def test_odd_depth_of_a_bidirectional_model(data, tmp_path, capsys):
    out = tmp_path / "run"
    one_error(capsys, pretrain(data, out, "--depth", "3"), 2, "depth=3", "pairs")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu(data, tmp_path, capsys):
    out = tmp_path / "run"
    one_error(capsys, pretrain(data, out, "--device", "cuda"), 2, "--device cuda", "not available")
    assert not out.exists()


def test_unknown_device(data, tmp_path, capsys):
    out = tmp_path / "run"
    one_error(capsys, pretrain(data, out, "--device", "gpu7"), 2, "--device", "gpu7")
    assert not out.exists()


@pytest.mark.parametrize("value", ["0,0", "nan,4", "1,-2", "a,b"])
def test_normalize_mean_std_refused(data, tmp_path, capsys, value):
    out = tmp_path / "run"
    one_error(capsys, pretrain(data, out, "--normalize", value), 2, "normalize", repr(value))
    assert not out.exists()


def test_mask_patch_more_than_the_input_has(data, tmp_path, capsys):
    out = tmp_path / "run"  # 64 frames at stride 16: 8 x 4 = 32 patches
    one_error(
        capsys, pretrain(data, out, "--mask-patch", "1000"), 2, "mask_patch 1000", "32 patches"
    )
    assert not (out / "final").exists()


@pytest.mark.parametrize(
    "overrides, names",
    [('{"embed_dim": -4}', ["embed_dim", "-4"]), ('{"colour": 1}', ["colour", "unknown"])],
)
def test_model_overrides_checked(data, tmp_path, capsys, overrides, names):
    out = tmp_path / "run"
    one_error(capsys, pretrain(data, out, "--model-overrides", overrides), 2, *names)
    assert not out.exists()


def test_resume_with_overwrite_conflict(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    one_error(capsys, pretrain(data, out, "--resume", "--overwrite"), 2, "resume", "overwrite")
    assert (out / "keep.txt").read_text() == "x"


def test_path_list_that_lists_itself(data, tmp_path, capsys):
    listing = tmp_path / "self.txt"
    listing.write_text(f"{listing}\n{data / 'tones/low/0.wav'}\n")
    out = tmp_path / "run"
    argv = ["pretrain", "--train", listing, "-o", out, *TINY, *QUIET]
    one_error(capsys, argv, 2, str(listing), "line 1", "itself")
    assert not out.exists()


def test_every_file_bad_with_skip(data, tmp_path, capsys):
    listing = tmp_path / "bad.txt"
    listing.write_text("\n".join(str(p) for p in sorted((data / "bad").iterdir())) + "\n")
    out = tmp_path / "run"
    argv = ["pretrain", "--train", listing, "-o", out, *TINY, *QUIET, "--on-bad-file", "skip"]
    status, lines, _ = run(capsys, *argv)
    assert status == 2
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "every one of its 3 audio files is bad" in errors[0], lines
    assert not (out / "final").exists()


# ---------------------------------------------------------------------------- fine-tuning
def test_checkpoint_and_conflicting_model(data, tmp_path, capsys):
    folder = tiny_folder(tmp_path / "ssamba")
    out = tmp_path / "run"
    argv = ["finetune", "--train", data / "train.csv", "-o", out, "-c", folder,
            "--model", "ssast_tiny", "--target-length", "64", *QUIET]  # fmt: skip
    one_error(capsys, argv, 2, "--model ssast_tiny", "conflicts", str(folder))
    assert not out.exists()


def test_csv_label_column_named_otherwise(data, tmp_path, capsys):
    csv = tmp_path / "cls.csv"
    rows = (data / "train.csv").read_text().splitlines()[1:]
    csv.write_text("file,cls\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    argv = ["finetune", "--train", csv, "-o", out, *TINY, *QUIET]
    one_error(capsys, argv, 2, str(csv), "'file,cls'", "label or labels", warned=True)
    assert not out.exists()
    one_error(capsys, ["check-data", csv, "--no-progress"], 2, "'file,cls'", "label or labels")
    # unlabelled use of the same file is fine: the column is simply not read
    assert len(read_manifest(csv, ignore_labels=True)) == 6


def test_unlabelled_finetune_train(data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["finetune", "--train", data / "list.txt", "-o", out, *TINY, *QUIET]
    one_error(capsys, argv, 2, "list.txt", "labels", warned=True)
    assert not out.exists()


# ---------------------------------------------------------------------------- embed and probe
@pytest.mark.parametrize("extra", [["--window", "0"], ["--window", "1", "--hop", "0"]])
def test_embed_window_and_hop_zero(data, tmp_path, capsys, extra):
    out = tmp_path / "emb"
    argv = ["embed", data / "list.txt", "-c", "ssamba_tiny", "-o", out, *extra]
    one_error(capsys, argv, 2, extra[-2], "> 0")
    assert not out.exists()


def test_embed_one_sample_file(data, tmp_path, capsys):
    folder = tiny_folder(tmp_path / "model")
    one = tmp_path / "one.wav"
    sf.write(one, np.array([0.1], dtype=np.float32), 16000)
    out = tmp_path / "emb"
    argv = ["embed", one, "-c", folder, "-o", out, "--device", "cpu", "--no-progress"]
    one_error(capsys, argv, 2, str(one), "too short")
    assert not list(out.glob("**/*.npy"))


def test_probe_unlabelled_train(data, tmp_path, capsys):
    folder = tiny_folder(tmp_path / "model")
    out = tmp_path / "probe"
    argv = ["probe", "-c", folder, "--train", data / "list.txt", "--valid", data / "train.csv",
            "-o", out, "--device", "cpu", "--no-progress"]  # fmt: skip
    one_error(capsys, argv, 2, "list.txt", "no labels")
    assert not (out / "probe_results.json").exists()


def test_probe_negative_l2(data, tmp_path, capsys):
    out = tmp_path / "probe"
    argv = ["probe", "-c", "ssamba_tiny", "--train", data / "train.csv", "--valid",
            data / "train.csv", "-o", out, "--l2", "-1"]  # fmt: skip
    one_error(capsys, argv, 2, "--l2", "-1", ">= 0")
    assert not out.exists()


# ---------------------------------------------------------------------------- checkpoints
def test_average_nothing(tmp_path, capsys):
    out = tmp_path / "avg"
    one_error(capsys, ["average", "-o", out], 2, "nothing to average")
    assert not out.exists()


def test_average_from_step_past_the_last(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_2").mkdir(parents=True)
    out = tmp_path / "avg"
    argv = ["average", "--run", run_dir, "--from-step", "999", "-o", out]
    one_error(capsys, argv, 2, "--from-step 999", "steps: 2")
    assert not out.exists()


def test_convert_negative_classes(tmp_path, capsys):
    out = tmp_path / "conv"
    argv = ["convert", "-c", tmp_path / "x.pth", "-o", out, "--num-classes", "-3"]
    one_error(capsys, argv, 2, "--num-classes", "-3")
    assert not out.exists()


@pytest.mark.parametrize(
    "changes, names",
    [
        ({"embed_dim": -192}, ["embed_dim", "-192"]),
        ({"depth": -2}, ["depth", "-2"]),
        ({"norm_std": 0}, ["norm_std", "0"]),
        ({"norm_mean": math.nan}, ["norm_mean", "nan"]),
    ],
)
def test_config_json_checked(data, tmp_path, capsys, changes, names):
    folder = tiny_folder(tmp_path / "model")
    edit_config(folder, **changes)
    out = tmp_path / "emb"
    argv = ["embed", data / "list.txt", "-c", folder, "-o", out, "--device", "cpu"]
    one_error(capsys, argv, 2, "config.json", *names)
    assert not out.exists()


def test_model_config_refuses_bad_numbers():
    with pytest.raises(UsageError, match="norm_std"):
        ModelConfig(norm_std=0.0)
    with pytest.raises(UsageError, match="num_classes"):
        ModelConfig(num_classes=-3)
    with pytest.raises(UsageError, match="drop_path"):
        ModelConfig(drop_path=2.0)
    assert ModelConfig(depth=2).dt_rank == 12  # valid values still build


def test_rejected_pickle_never_suggests_the_unsafe_option(data, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    evil = tmp_path / "evil.pth"
    torch.save({"weights": Payload()}, evil)
    out = tmp_path / "emb"
    argv = ["embed", data / "list.txt", "-c", evil, "-o", out, "--device", "cpu"]
    line = one_error(capsys, argv, 2, str(evil), "refused")
    assert "weights_only" not in line
    assert not out.exists()


# ---------------------------------------------------------------------------- data commands
def test_stats_of_silent_files(tmp_path, capsys):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    (tmp_path / "list.txt").write_text(f"{silent}\n")
    out = tmp_path / "stats.json"
    argv = ["stats", tmp_path / "list.txt", "-o", out, "--no-progress"]
    one_error(capsys, argv, 2, "list.txt", "std 0")
    assert not out.exists()


def test_check_data_sample_rate_zero(data, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["check-data", data / "list.txt", "--sample-rate", "0", "-o", out]
    one_error(capsys, argv, 2, "--sample-rate", "0")
    assert not out.exists()


def _truncated_wav(path: Path) -> Path:
    """A 1 s WAV cut to 0.5 s of data: its header still declares 1 s."""
    make_wav(path, seconds=1.0)
    raw = path.read_bytes()
    path.write_bytes(raw[: 44 + 16000])  # 8000 16-bit samples
    assert sf.info(str(path)).frames == 8000  # what libsndfile reports: the header is ignored
    return path


def test_check_data_sees_what_training_sees(data, tmp_path, capsys):
    good = data / "tones/low/0.wav"
    truncated = _truncated_wav(tmp_path / "truncated.wav")
    short = make_wav(tmp_path / "short.wav", seconds=0.1)  # 8 frames: under one patch
    manifest = tmp_path / "m.csv"
    rows = [f"{good},low", f"{truncated},low", f"{short},high", f"{good},low"]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "report.json"
    status, lines, stdout = run(capsys, "check-data", manifest, "--no-progress", "-o", out)
    assert status == 1 and not lines
    problems = {(p["path"], p["problem"].split(":")[0]) for p in json.loads(out.read_text())[
        "problems"]}  # fmt: skip
    assert problems == {
        (str(truncated), "truncated"),
        (str(short), "too short"),
        (str(good), "listed 2 times in the manifest"),
    }
    assert "header declares 1.000 s" in stdout and "16-frame patch" in stdout


def test_a_truncated_wav_is_a_bad_file_everywhere_not_a_short_clip(tmp_path, capsys):
    """Decoding (embed, training, evaluation) refuses it as check-data flags it: it used to be
    embedded as its surviving half without a word."""
    truncated = _truncated_wav(tmp_path / "truncated.wav")
    with pytest.raises(AudioError, match="truncated: the header declares 1.000 s"):
        load_audio(truncated)
    model = tmp_path / "model"
    AudioModel(preset_config("ssamba_tiny", depth=2, input_tdim=64)).save_pretrained(model)
    out = tmp_path / "emb"
    one_error(capsys, ["embed", truncated, "-c", model, "-o", out, "--no-progress"], 2,
              "truncated.wav",
              "truncated")  # fmt: skip


# ---------------------------------------------------------------------------- skip mode
@pytest.fixture
def mixed(data, tmp_path) -> Path:
    """Four good clips and two bad files, labelled."""
    bad = write_corrupt(tmp_path / "x.wav")
    rows = [f"{data / 'tones/low/0.wav'},low", f"{bad},low", f"{data / 'tones/high/0.wav'},high",
            f"{data / 'tones/low/1.wav'},low", f"{tmp_path / 'gone.wav'},high",
            f"{data / 'tones/high/1.wav'},high"]  # fmt: skip
    path = tmp_path / "mixed.csv"
    path.write_text("path,label\n" + "\n".join(rows) + "\n")
    return path


def test_skip_mode_evaluation_items_are_flagged_not_substituted(mixed):
    ds = AudioDataset(mixed, target_length=64, on_bad_file="skip")
    flags = [ds[i]["bad"] for i in range(len(ds))]
    assert flags == [False, True, False, False, True, False]
    assert ds.skipped == 2
    train = AudioDataset(mixed, target_length=64, on_bad_file="skip", train=True)
    assert "bad" not in train[1] and train[1]["skipped"] == 1  # training still substitutes
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    kept = drop_bad(batch)
    assert kept["index"].tolist() == [0, 2, 3, 5] and kept["fbank"].shape[0] == 4
    assert drop_bad(torch.utils.data.default_collate([ds[1], ds[4]])) is None


def test_skip_mode_evaluation_counts_good_clips_only(mixed):
    from ssamba.evaluation import evaluate_model

    torch.manual_seed(0)
    model = AudioModel(preset_config("ssamba_tiny", depth=2, input_tdim=64, num_classes=2))
    ds = AudioDataset(mixed, target_length=64, on_bad_file="skip")
    result = evaluate_model(model, ds, classes=["high", "low"], progress=False)
    assert result.metrics["num_examples"] == 4
    assert len(result.paths) == 4 and not any("x.wav" in p for p in result.paths)
    assert any("2 bad file(s)" in note for note in result.notes)


def test_skip_mode_validation_counts_good_clips_only(mixed):
    from ssamba.configs import FinetuneConfig
    from ssamba.finetune import FinetuneTask
    from ssamba.training import Distributed, eval_loader

    cfg = FinetuneConfig(out="unused", target_length=64, on_bad_file="skip")
    torch.manual_seed(0)
    model = AudioModel(preset_config("ssamba_tiny", depth=2, input_tdim=64, num_classes=2))
    task = FinetuneTask(cfg, model, ["high", "low"])
    valid = AudioDataset(read_manifest(mixed, classes=["high", "low"]), 64, on_bad_file="skip")
    dist = Distributed.from_env("cpu")
    scores, targets = task.predict(eval_loader(valid, dist, 4), dist)
    assert scores.shape == (4, 2) and targets.shape == (4, 2)
    assert targets.argmax(1).tolist() == [1, 0, 1, 0]  # low, high, low, high: the good clips


def test_duplicate_rows_refused_in_evaluation(data, tmp_path):
    from ssamba.errors import EvaluationError
    from ssamba.evaluation import evaluate_model

    path = tmp_path / "dup.csv"
    rows = (data / "train.csv").read_text().splitlines()
    path.write_text("\n".join(rows + [rows[1]]) + "\n")
    model = AudioModel(preset_config("ssamba_tiny", depth=2, input_tdim=64, num_classes=2))
    with pytest.raises(EvaluationError, match="more than once"):
        evaluate_model(model, path, classes=["high", "low"], progress=False)


@pytest.mark.parametrize("flag", ["valid", "test"])
def test_duplicate_rows_refused_in_finetuning_before_it_trains(data, tmp_path, flag):
    from ssamba.configs import FinetuneConfig
    from ssamba.finetune import finetune

    path = tmp_path / "dup.csv"
    rows = (data / "train.csv").read_text().splitlines()
    path.write_text("\n".join(rows + [rows[1]]) + "\n")
    splits = {"valid": str(data / "train.csv"), "test": None} | {flag: str(path)}
    train = str(data / "train.csv")
    cfg = FinetuneConfig(out=str(tmp_path / "run"), model="ssamba_tiny", train=train,
                         target_length=64, model_overrides={"depth": 2}, progress=False,
                         workers=0, allow_overlap=True, **splits)  # fmt: skip
    with pytest.raises(ManifestError, match=f"--{flag} .*dup.csv: .* is listed more than once"):
        finetune(cfg)
    assert not (tmp_path / "run" / "final").exists()  # stopped before training


def test_manifest_that_lists_itself_is_a_manifest_error(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("list.txt\n")
    with pytest.raises(ManifestError, match="itself"):
        read_manifest(path)


# ---------------------------------------------------------------------------- the error path
def test_internal_error_is_one_line_exit_1(data, tmp_path, capsys, monkeypatch):
    import ssamba.pretrain

    def boom(*args, **kwargs):
        raise RuntimeError("the scan kernel fell over\nsecond line")

    monkeypatch.setattr(ssamba.pretrain, "pretrain", boom)
    monkeypatch.delenv("SSAMBA_DEBUG", raising=False)
    line = one_error(capsys, pretrain(data, tmp_path / "run"), 1, "internal error: RuntimeError")
    assert "the scan kernel fell over second line" in line and "--debug" in line


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(data, tmp_path, capsys, monkeypatch, how):
    argv = pretrain(data, tmp_path / "run", "--device", "gpu7")
    if how == "flag":
        argv = ["--debug", *argv]
        monkeypatch.delenv("SSAMBA_DEBUG", raising=False)
    else:
        monkeypatch.setenv("SSAMBA_DEBUG", "1")
    status, lines, _ = run(capsys, *argv)
    assert status == 2
    assert lines[0].startswith("Traceback") and lines[-1].startswith("error: --device")


def test_no_traceback_without_debug(capsys, monkeypatch):
    monkeypatch.setenv("SSAMBA_DEBUG", "0")
    one_error(capsys, ["stats", "/nonexistent/manifest.txt"], 2, "/nonexistent/manifest.txt")


def test_unknown_option_is_one_line(capsys):
    one_error(capsys, ["stats", "x.txt", "--colour"], 2, "--colour", "unrecognized")


@pytest.mark.parametrize(
    "key, value, names",
    [("batch_size", 0, ["finetune.batch_size", ">= 1"]), ("target_length", 8, ["target_length"])],
)
def test_recipe_values_checked(key, value, names):
    from ssamba.errors import RecipeError
    from ssamba.recipes import load_recipe, validate_recipe

    recipe = load_recipe("esc50")
    validate_recipe(recipe)  # the shipped recipe is valid
    recipe["finetune"][key] = value
    with pytest.raises(RecipeError) as err:
        validate_recipe(recipe, "esc50.json")
    assert all(name in str(err.value) for name in names), err.value


def test_unreadable_pth_message_has_no_unsafe_hint(data, tmp_path, capsys):
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"not a checkpoint")
    out = tmp_path / "emb"
    argv = ["embed", data / "list.txt", "-c", bogus, "-o", out, "--device", "cpu"]
    line = one_error(capsys, argv, 2, str(bogus), "not a readable PyTorch state_dict")
    assert "weights_only" not in line and "Unsupported operand" in line
    assert not out.exists()
