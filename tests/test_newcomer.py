"""Issue 25: a newcomer's first hour. Splits that cannot leak, defaults that fit the run, one
vocabulary across commands, results others can read, and near-miss names that suggest the right
one. Each test failed against the code before its fix."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import one_error_line
from ssamba.cli import main
from ssamba.fileio import atomic_write_json, atomic_write_text, staged_folder


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------- item 4: the umask
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writers_and_staged_folders_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        text = atomic_write_text(tmp_path / "a.txt", "x")
        js = atomic_write_json(tmp_path / "sub" / "b.json", {"a": 1})
        with staged_folder(tmp_path / "model") as tmp:
            (tmp / "w.bin").write_bytes(b"1")
    finally:
        os.umask(old)
    assert mode(text) == mode(js) == 0o666 & ~umask
    assert mode(tmp_path / "model") == 0o777 & ~umask
    assert mode(tmp_path / "model" / "w.bin") == 0o666 & ~umask


# ---------------------------------------------------------------------------- shared data
FREQS = {"high": 3000.0, "low": 300.0}


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    """Two classes of short noisy tones in a folder per class (4 each), and all.csv listing
    them with a split column (train 2, valid 1, test 1 per class)."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    rows = []
    for label, freq in FREQS.items():
        (root / label).mkdir()
        for k, split in enumerate(("train", "train", "valid", "test")):
            t = np.arange(int(0.6 * 16000)) / 16000
            x = 0.3 * np.sin(2 * np.pi * freq * rng.uniform(0.95, 1.05) * t)
            x += 0.02 * rng.standard_normal(t.size)
            sf.write(root / label / f"{k}.wav", x.astype(np.float32), 16000)
            rows.append(f"{label}/{k}.wav,{label},{split}")
    (root / "all.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return root


def pretrain_argv(train: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--depth", "2", "--train", str(train), "-o", str(out),
            "--target-length", "64", "--no-progress", "--workers", "0", *extra]  # fmt: skip


def finetune_argv(train: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--depth", "2", "--train", str(train), "-o", str(out),
            "--target-length", "64", "--no-progress", "--workers", "0", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def dasl_data(tones, tmp_path_factory) -> Path:
    from ssamba.dasl import build_dasl_mixtures

    out = tmp_path_factory.mktemp("dasl")
    build_dasl_mixtures(tones, out, 4, seconds=2, seed=0, mode="crop", name="train")
    return out / "train.csv"


def dasl_argv(train: Path, out: Path, *extra: str) -> list[str]:
    return ["dasl", "--depth", "2", "--train", str(train), "-o", str(out), "--fstride", "32",
            "--tstride", "32", "--no-progress", "--workers", "0", *extra]  # fmt: skip


# ---------------------------------------------------------------------------- item 2: reruns
@pytest.mark.parametrize("command", ["pretrain", "finetune", "dasl"])
@pytest.mark.parametrize("rerun", ["plain", "resume"])
def test_a_run_that_failed_before_its_first_step_does_not_block_the_corrected_rerun(
    command, rerun, tones, dasl_data, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = {
        "pretrain": lambda *a: pretrain_argv(tones, out, *a),
        "finetune": lambda *a: finetune_argv(tones, out, *a),
        "dasl": lambda *a: dasl_argv(dasl_data, out, *a),
    }[command]
    assert main(argv("--batch-size", "64")) == 2
    one_error_line(capsys.readouterr().err, "no full step of batch 64")
    again = argv("--batch-size", "2", "--max-steps", "1", "--warmup-steps", "0")
    if rerun == "resume":
        again.append("--resume")
    assert main(again) == 0, capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["batch_size"] == 2
    assert (out / "final" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------- item 6: near misses
@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("SSAMBA_tiny_400.pth", "ssamba_tiny_400"),  # the README's spelling of a release
        ("SSAMBA_tiny_400", "ssamba_tiny_400"),
        ("ssamba_tiny_40", "ssamba_tiny_400"),  # a typo of a release
        ("ssamba-base-250", "ssamba_base_250"),
        ("ssamba_tinny", "ssamba_tiny"),  # a typo of a preset
        ("SSAST_Base", "ssast_base"),
    ],
)
def test_a_near_miss_model_name_suggests_the_right_one(name, suggestion, tmp_path, monkeypatch):
    import ssamba
    from ssamba.errors import SsambaError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSAMBA_HOME", str(tmp_path / "home"))
    with pytest.raises(SsambaError, match=f"did you mean {suggestion}\\?"):
        ssamba.load_model(name)


def test_a_near_miss_release_says_where_to_put_the_file(tmp_path, monkeypatch):
    import ssamba
    from ssamba.errors import SsambaError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSAMBA_HOME", str(tmp_path / "home"))
    with pytest.raises(SsambaError) as err:
        ssamba.load_model("SSAMBA_tiny_400.pth")
    assert str(tmp_path / "home" / "ssamba_tiny_400.pth") in str(err.value)


def test_an_unrelated_missing_name_suggests_nothing(tmp_path, monkeypatch):
    import ssamba
    from ssamba.errors import SsambaError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SsambaError) as err:
        ssamba.load_model("my_model.pth")
    assert "did you mean" not in str(err.value)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["finetune", "--model", "ssamba_tinny", "--train", "x", "-o", "y"],
            "did you mean ssamba_tiny?",
        ),
        (
            ["pretrain", "--recipe", "ssamba_tiny_40", "--train", "x", "-o", "y"],
            "did you mean ssamba_tiny_400?",
        ),
        (["finetune", "--recipe", "ESC-500", "--train", "x", "-o", "y"], "did you mean esc50?"),
        (["embed", "x", "-c", "ssamba_tiny", "-o", "y", "--format", "npzz"], "did you mean npz?"),
        (["pretrain", "--train", "x", "-o", "y", "--max-step", "3"], "did you mean --max-steps?"),
    ],
)
def test_a_near_miss_on_the_command_line_suggests_the_right_one(argv, needle, tmp_path, capsys,
                                                                 monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, needle)


# ---------------------------------------------------------------------------- item 3: defaults
def logged_lrs(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["lr"] for r in map(json.loads, lines) if r.get("kind") == "train"]


def test_a_warm_up_longer_than_the_run_is_scaled_to_it_with_a_note(tones, tmp_path, caplog):
    out = tmp_path / "run"
    argv = pretrain_argv(tones, out, "--batch-size", "2", "--max-steps", "20", "--lr", "1e-3",
                         "--log-every", "1")  # fmt: skip
    with caplog.at_level("INFO"):
        assert main(argv) == 0  # the default --warmup-steps 1000: 50 times the run
    lrs = logged_lrs(out)
    assert len(lrs) == 20
    assert lrs[1] == pytest.approx(1e-3)  # warm over 10% of the run (2 steps), then the --lr
    assert lrs[0] == pytest.approx(0.5e-3)
    notes = [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()]
    assert len(notes) == 1 and "1000" in notes[0] and "20 steps" in notes[0], notes
    # a warm-up that fits the run is kept as asked, without a note
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main([*argv, "--warmup-steps", "4", "--overwrite"]) == 0
    assert logged_lrs(out)[:5] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3])
    assert not [r for r in caplog.records if "warm-up" in r.getMessage()]


@pytest.fixture(scope="module")
def pretrained_256(tmp_path_factory) -> Path:
    """A tiny 'pretrained' model laid out as pretraining leaves it: 64 frames, strides 16."""
    import ssamba

    model = ssamba.create_model(
        "ssamba_tiny", depth=2, input_tdim=64, fstride=16, tstride=16, pretrain_heads=True
    )
    return model.save_pretrained(tmp_path_factory.mktemp("pretrained") / "final")


def finetune_from(ckpt: Path, train: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "-c", str(ckpt), "--train", str(train), "-o", str(out), "--no-progress",
            "--workers", "0", "--batch-size", "2", "--max-steps", "1", *extra]  # fmt: skip


def test_fine_tuning_inherits_the_checkpoints_input_size_and_strides(
    pretrained_256, tones, tmp_path, caplog
):
    import ssamba

    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        assert main(finetune_from(pretrained_256, tones, out)) == 0
    settings = json.loads((out / "run.json").read_text())
    assert (settings["target_length"], settings["fstride"], settings["tstride"]) == (64, 16, 16)
    config = ssamba.load_model(out / "final").config
    assert (config.input_tdim, config.fstride, config.tstride) == (64, 16, 16)
    assert not [r for r in caplog.records if "the checkpoint's" in r.getMessage()]


def test_a_change_from_the_checkpoints_input_settings_wins_and_is_noted_in_one_line(
    pretrained_256, tones, tmp_path, caplog
):
    import ssamba

    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        assert main(finetune_from(pretrained_256, tones, out, "--target-length", "48",
                                  "--fstride", "10")) == 0  # fmt: skip
    settings = json.loads((out / "run.json").read_text())
    assert (settings["target_length"], settings["fstride"], settings["tstride"]) == (48, 10, 16)
    config = ssamba.load_model(out / "final").config
    assert (config.input_tdim, config.fstride, config.tstride) == (48, 10, 16)
    notes = [r.getMessage() for r in caplog.records if "the checkpoint's" in r.getMessage()]
    assert len(notes) == 1, notes
    assert "48 frames" in notes[0] and "64" in notes[0] and "fstride 10" in notes[0]
    assert "tstride" not in notes[0]  # unchanged: not mentioned


def test_a_fresh_fine_tuning_keeps_the_documented_defaults():
    from ssamba.configs import FinetuneConfig

    cfg = FinetuneConfig(out="o", train="t")
    assert (cfg.target_length, cfg.fstride, cfg.tstride) == (1024, 10, 10)
    cfg = FinetuneConfig(out="o", train="t", checkpoint="ckpt")
    assert (cfg.target_length, cfg.fstride, cfg.tstride) == (None, None, None)  # the ckpt's
    cfg = FinetuneConfig(out="o", train="t", checkpoint="ckpt", target_length=96, tstride=12)
    assert (cfg.target_length, cfg.fstride, cfg.tstride) == (96, None, 12)


# ---------------------------------------------------------------------------- item 1: splits
def test_read_splits_selects_each_role_from_one_manifest(tones):
    from ssamba.data import read_splits

    alone = read_splits(str(tones / "all.csv"))
    assert {r: len(m) for r, m in alone.items()} == {"train": 4, "valid": 2, "test": 2}
    assert {m.split for m in alone.values()} == {"train", "valid", "test"}
    same = str(tones / "all.csv")
    given = read_splits(same, same, same)  # each role takes its own rows: nothing leaks
    assert [len(given[r]) for r in ("train", "valid", "test")] == [4, 2, 2]
    explicit = read_splits(f"{same}:train", f"{same}:test")
    assert explicit["test"] is None and explicit["valid"].split == "test"
    assert [ex.path.name for ex in explicit["valid"]] == ["3.wav", "3.wav"]


def test_every_reader_takes_the_path_split_form(tones):
    from ssamba.data import read_manifest

    manifest = read_manifest(f"{tones / 'all.csv'}:valid")
    assert len(manifest) == 2 and {ex.split for ex in manifest} == {"valid"}


def test_an_unknown_split_names_the_splits_there(tones):
    from ssamba.data import read_manifest
    from ssamba.errors import ManifestError

    with pytest.raises(ManifestError, match="no examples in split 'dev'.*test, train, valid"):
        read_manifest(f"{tones / 'all.csv'}:dev")


@pytest.fixture
def leaky(tones, tmp_path) -> Path:
    """The newcomer's all.csv without a split column: train and test would be the same files."""
    rows = (tones / "all.csv").read_text().splitlines()
    path = tmp_path / "flat.csv"
    path.write_text("path,label\n" + "".join(f"{tones / r.split(',')[0]},{r.split(',')[1]}\n"
                                              for r in rows[1:]))  # fmt: skip
    return path


def test_overlap_between_train_and_held_out_sets_is_an_error_naming_count_and_example(leaky):
    from ssamba.data import read_splits
    from ssamba.errors import ManifestError

    with pytest.raises(ManifestError, match="8 file.*--train.*--valid.*0.wav.*--allow-overlap"):
        read_splits(str(leaky), str(leaky))
    checked = read_splits(str(leaky), str(leaky), allow_overlap=True)
    assert len(checked["valid"]) == 8


@pytest.mark.parametrize("command", ["probe", "finetune", "pretrain", "dasl"])
def test_every_command_refuses_a_train_set_that_is_also_held_out(command, leaky, dasl_data,
                                                                 tmp_path, capsys):  # fmt: skip
    out = str(tmp_path / "out")
    flat = str(leaky)
    argv = {
        "probe": ["probe", "-c", "ssamba_tiny", "--train", flat, "--valid", flat, "--test", flat,
                  "-o", out, "--no-progress"],
        "finetune": finetune_argv(leaky, tmp_path / "out", "--valid", flat, "--test", flat),
        "pretrain": pretrain_argv(leaky, tmp_path / "out", "--valid", flat),
        "dasl": dasl_argv(dasl_data, tmp_path / "out", "--test", str(dasl_data)),
    }[command]  # fmt: skip
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, "also in", "--allow-overlap")
    assert not (tmp_path / "out" / "run.json").exists()  # refused before the run starts


def test_finetune_on_one_manifest_uses_its_splits_and_records_them(tones, tmp_path, capsys):
    out = tmp_path / "run"
    argv = finetune_argv(tones / "all.csv", out, "--batch-size", "2", "--max-steps", "1")
    assert main(argv) == 0, capsys.readouterr().err
    settings = json.loads((out / "run.json").read_text())
    all_csv = str(tones / "all.csv")
    assert (settings["train"], settings["valid"], settings["test"]) == (
        f"{all_csv}:train", f"{all_csv}:valid", f"{all_csv}:test")  # fmt: skip
    assert "test acc" in capsys.readouterr().out


def test_probe_on_one_manifest_uses_its_splits(tones, tmp_path, capsys):
    out = tmp_path / "probe"
    argv = ["probe", "-c", "ssamba_tiny", "--train", str(tones / "all.csv"), "-o", str(out),
            "--no-progress", "--max-iter", "5"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((out / "probe_results.json").read_text())
    assert (results["train"]["files"], results["valid"]["files"], results["test"]["files"]) == (
        4, 2, 2)  # fmt: skip


# ---------------------------------------------------------------------------- item 5: vocabulary
# Where one option name may differ between commands, and why. Anything else that differs (in
# what the value is, its metavar or its default) fails test_one_option_one_meaning.
REASONS = {
    "--out": "the output's kind: a folder (DIR), a JSON file, a model file, a PNG; demo and "
    "check-data name their defaults",
    "--checkpoint": "what it may be (weights to start from, a model to evaluate, several to "
    "average) and so what its absence means",
    "--format": "each command writes its own file formats",
    "--mode": "dasl-build's mixing mode, bench's inference or training",
    "--device": "bench and export choose cpu unless told (a measurement, a trace)",
    "--classes": "check-data checks a manifest's labels, evaluate names a model's classes",
    "--min-seconds": "per-command thresholds (a problem in check-data, a dropped piece in "
    "prepare and segment)",
    "--seconds": "a clip length (prepare, segment, demo-data), a recording length (dasl, "
    "dasl-build)",
    "--workers": "prepare and demo-data: threads of a data-building job, not loader processes",
    "--max-minutes": "bench's budget bounds the whole sweep",
    "--model-overrides": "pretrain also has --drop-path",
    "--target-length": "stats pads only when asked; training inherits the checkpoint's or its "
    "recipe's",
    "--normalize": "dasl: the reference script's AudioSet statistics",
    "--fstride": "dasl: the reference script's 16; convert: read from the weights",
    "--tstride": "dasl: the reference script's 16; convert: read from the weights",
    "--seed": "what it seeds differs (its default 0 does not)",
    "--recipe": "crossval: the task its prepared folder names",
}
# Per-task training defaults (ssamba/configs.py: each task's reference settings).
TASK_DEFAULTS = {
    "--batch-size", "--epochs", "--lr", "--weight-decay", "--eval-every", "--freqm", "--timem",
    "--lr-decay", "--lr-decay-start", "--head-lr-mult", "--warmup-steps", "--model", "--depth",
    "--valid",
}  # fmt: skip


def _parser():
    from ssamba.cli import build_parser

    return build_parser()


def _default(option) -> str:
    if option.kind == "flag" and option.default in ("", "off"):
        return "off"  # a flag's absence
    return option.default.removesuffix(", or the --recipe's")


def test_one_option_one_meaning_metavar_and_default_in_every_command():
    from ssamba.cli.vocabulary import shared

    problems = []
    for name, opts in shared(_parser()).items():
        if name in REASONS:
            continue
        meanings = {o.meaning for o in opts}
        if len(meanings) > 1:
            problems.append(f"{name}: " + "; ".join(f"{o.command} {o.meaning}" for o in opts))
        defaults = {_default(o) for o in opts}
        if len(defaults) > 1 and name not in TASK_DEFAULTS:
            problems.append(f"{name}: defaults " + "; ".join(f"{o.command} {o.default!r}"
                                                                for o in opts))  # fmt: skip
    assert not problems, "\n".join(problems)


def test_every_help_default_is_printed_once_and_no_option_is_abbreviated():
    from ssamba.cli.vocabulary import options, subcommands

    parser = _parser()
    assert not parser.allow_abbrev
    assert all(not sub.allow_abbrev for _, sub in subcommands(parser))
    twice = [f"{o.command} {o.name}: {o.help}" for o in options(parser)
             if o.help.lower().count("default") > 1]  # fmt: skip
    assert not twice, "\n".join(twice)


def test_the_shared_options_table_in_docs_is_up_to_date():
    from ssamba.cli.vocabulary import table

    docs = Path(__file__).resolve().parents[1] / "docs" / "cli_options.md"
    assert docs.read_text() == table(_parser()), (
        "regenerate: python -m ssamba.cli.vocabulary > docs/cli_options.md"
    )


@pytest.mark.parametrize(
    "command, old, new",
    [
        ("embed", ["--frames"], "--frame-embeddings"),
        ("export", ["--frames", "64"], "--target-length"),
        ("export", ["--output", "tokens"], "--returns"),
    ],
)
def test_old_spellings_work_one_release_with_a_deprecation_line(command, old, new, capsys):
    from ssamba.cli import build_parser

    base = {
        "embed": ["embed", "x", "-c", "c", "-o", "o"],
        "export": ["export", "-c", "c", "-o", "o.onnx"],
    }[command]
    args = build_parser().parse_args([*base, *old])
    if command == "embed":
        assert args.frames is True
    elif old[0] == "--frames":
        assert args.frames == 64
    else:
        assert args.output == "tokens"
    err = capsys.readouterr().err
    assert f"warning: {old[0]} is deprecated" in err and new in err


def test_finetune_into_a_folder_holding_a_run_is_refused_before_the_model_is_loaded(
    tmp_path, capsys, monkeypatch
):
    import ssamba.finetune

    out = tmp_path / "run"
    (out / "checkpoints" / "step_00000001").mkdir(parents=True)
    (out / "run.json").write_text("{}")

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the folder was checked")

    monkeypatch.setattr(ssamba.finetune, "finetune", no_loading)
    assert main(["finetune", "--train", str(tmp_path), "-o", str(out), "-c", "x"]) == 2
    one_error_line(capsys.readouterr().err, "already holds a run")


# ---------------------------------------------------------------------------- item 7 (part)
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_the_same_file_twice_with_different_labels_is_an_error_naming_both(tones, tmp_path, fmt):
    from ssamba.data import read_manifest
    from ssamba.errors import ManifestError

    wav = tones / "low" / "0.wav"
    if fmt == "csv":
        path = tmp_path / "m.csv"
        path.write_text(f"path,label\n{wav},low\n{tones / 'low' / '1.wav'},low\n{wav},high\n")
    else:
        path = tmp_path / "m.json"
        path.write_text(json.dumps({"data": [{"wav": str(wav), "labels": "low"},
                                             {"wav": str(wav), "labels": "high"}]}))  # fmt: skip
    with pytest.raises(ManifestError, match="0.wav.*twice with different labels.*low.*high"):
        read_manifest(path)
    assert len(read_manifest(path, ignore_labels=True)) >= 2  # labels ignored: no conflict


@pytest.mark.parametrize("command", ["stats", "check-data"])
def test_an_output_file_that_exists_as_a_folder_names_the_users_path(command, tones, tmp_path,
                                                                     capsys):  # fmt: skip
    out = tmp_path / "out.json"
    out.mkdir()
    argv = [command, str(tones), "-o", str(out), "--no-progress", "--workers", "0"]
    if command == "stats":
        argv.append("--overwrite")
    assert main(argv) in (1, 2)
    line = one_error_line(capsys.readouterr().err, str(out))
    assert ".tmp" not in line


# ---------------------------------------------------------------------------- bad files
@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> Path:
    """A tiny two-class 'fine-tuned' model of 64 frames, with its classes.json."""
    import ssamba

    model = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=64, num_classes=2)
    folder = model.save_pretrained(tmp_path_factory.mktemp("finetuned") / "final")
    (Path(folder) / "classes.json").write_text(json.dumps(sorted(FREQS)))
    return Path(folder)


def with_bad_file(
    tones: Path, tmp_path: Path, kind: str = "corrupt", split: str | None = None
) -> tuple[Path, Path]:
    """A labelled manifest of the tones (those of ``split`` only, when given) plus one bad
    file: not audio ("corrupt"), or a WAV or FLAC cut short of what its header declares
    ("truncated-wav", "truncated-flac")."""
    if kind == "corrupt":
        bad = tmp_path / "bad.wav"
        bad.write_bytes(b"RIFF but not audio at all" * 10)
    else:
        bad = tmp_path / f"cut.{kind.split('-')[1]}"
        t = np.arange(16000) / 16000
        sf.write(bad, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
        os.truncate(bad, bad.stat().st_size // 2)
    picked = [r.split(",") for r in (tones / "all.csv").read_text().splitlines()[1:]]
    rows = [f"{tones / p},{lab}" for p, lab, part in picked if split in (None, part)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "\n".join([*rows, f"{bad},low"]) + "\n")
    return manifest, bad


def test_evaluate_stops_at_a_bad_file_naming_it_or_skips_and_counts_it(
    finetuned, tones, tmp_path, capsys
):
    manifest, bad = with_bad_file(tones, tmp_path)
    out = tmp_path / "eval"
    argv = ["evaluate", "-c", str(finetuned), str(manifest), "-o", str(out), "--no-progress",
            "--workers", "0"]  # fmt: skip
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, str(bad), "--on-bad-file skip")
    assert not out.exists()
    assert main([*argv, "--on-bad-file", "skip"]) == 0, capsys.readouterr().err
    assert "1 bad file(s) left out" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert str(bad) not in (out / "per_class.csv").read_text() + json.dumps(metrics)
    assert len(np.load(out / "scores.npz")["paths"]) == 8


# ---------------------------------------------------------------------------- item 7a: folders
@pytest.mark.parametrize("command", ["evaluate", "finetune", "pretrain", "dasl", "embed", "probe"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_folder_that_exists_as_a_file_names_the_users_path(
    command, overwrite, finetuned, tones, dasl_data, tmp_path, capsys
):
    out = tmp_path / "out"
    out.write_text("my notes\n")
    argv = {
        "evaluate": ["evaluate", "-c", str(finetuned), str(tones / "all.csv"), "-o", str(out),
                     "--no-progress", "--workers", "0"],
        "finetune": finetune_argv(tones, out, "--batch-size", "2", "--max-steps", "1"),
        "pretrain": pretrain_argv(tones, out, "--batch-size", "2", "--max-steps", "1"),
        "dasl": dasl_argv(dasl_data, out, "--batch-size", "2", "--max-steps", "1"),
        "embed": ["embed", str(tones / "low"), "-c", str(finetuned), "-o", str(out),
                  "--no-progress"],
        "probe": ["probe", "-c", str(finetuned), "--train", str(tones / "all.csv"), "-o",
                  str(out), "--no-progress", "--max-iter", "2"],
    }[command]  # fmt: skip
    if overwrite:
        argv.append("--overwrite")
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, str(out), "not a folder")
    assert ".tmp" not in line
    assert out.read_text() == "my notes\n"  # nothing written, nothing replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------- item 7b: options
@pytest.mark.parametrize(
    "arch, field, value",
    [
        ("ssamba", "num_heads", 4),
        ("ssamba", "attention", "explicit"),
        ("ssast", "d_state", 8),
        ("ssast", "d_conv", 3),
        ("ssast", "expand", 1),
        ("ssast", "dt_rank", 4),
        ("ssast", "bidirectional", False),
        ("ssast", "residual_in_fp32", True),
        ("ssast", "norm", "rmsnorm"),
    ],
)
def test_a_model_field_of_the_other_architecture_is_refused_naming_both(arch, field, value):
    import ssamba
    from ssamba.errors import UsageError
    from ssamba.models.config import ModelConfig

    with pytest.raises(UsageError, match=f"{field}.*{'SSAST' if arch == 'ssamba' else 'SSAMBA'}"
                       f".*not.*{arch}"):  # fmt: skip
        ModelConfig(arch=arch, depth=2, **{field: value})
    with pytest.raises(UsageError, match=field):
        ssamba.create_model(f"{arch}_tiny", depth=2, **{field: value})


def test_every_preset_and_official_layout_passes_the_architecture_check(tmp_path):
    import ssamba
    from ssamba.models.config import PRESETS, ModelConfig, preset_config

    for name in PRESETS:
        config = preset_config(name, depth=2)
        assert ModelConfig.from_saved(config.saved_dict()) == config
    golden = Path(__file__).parent / "data" / "golden"
    for arch, depth in (("ssamba", 4), ("ssast", 2)):
        path = golden / f"official_{arch}_tiny_depth{depth}" / "pretrain_state_dict.pt"
        assert ssamba.load_model(path).config.arch == arch
    # a field of the other architecture that an older version saved (it never had an effect)
    saved = preset_config("ssast_tiny", depth=2).saved_dict()
    saved.update(norm="rmsnorm", d_state=8)
    config = ModelConfig.from_saved(saved)
    assert (config.norm, config.d_state) == ("layernorm", 16)


@pytest.mark.parametrize(
    "model, extra, needle",
    [
        ("ssamba_tiny", ["--model-overrides", '{"num_heads": 4}'], "num_heads"),
        ("ssast_tiny", ["--model-overrides", '{"d_state": 8}'], "d_state"),
        ("ssast_tiny", ["--unidirectional"], "bidirectional"),
        ("ssast_tiny", ["--norm", "rmsnorm"], "norm"),
    ],
)
def test_an_option_that_does_not_apply_to_the_chosen_model_is_refused(
    model, extra, needle, tones, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = pretrain_argv(tones, out, "--model", model, "--batch-size", "2", "--max-steps", "1",
                         *extra)  # fmt: skip
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, needle, model.split("_")[0])
    assert not (out / "final").exists()


# ---------------------------------------------------------------------------- item 7d: truncated
TRUNCATED = ["truncated-wav", "truncated-flac"]


@pytest.mark.parametrize("kind", TRUNCATED)
@pytest.mark.parametrize("target_length", [64, 1024])  # a window of the file, the whole file
def test_the_training_dataset_stops_at_a_truncated_file_or_skips_it(kind, target_length, tones,
                                                                     tmp_path):  # fmt: skip
    from ssamba.data import AudioDataset
    from ssamba.errors import AudioError

    manifest, bad = with_bad_file(tones, tmp_path, kind)
    last = 8  # the bad file's row
    with pytest.raises(AudioError, match="truncated|cannot decode") as err:
        AudioDataset(manifest, target_length, train=True)[last]
    assert str(bad) in str(err.value)
    skipping = AudioDataset(manifest, target_length, train=True, on_bad_file="skip")
    assert skipping[last]["skipped"] == 1 and skipping.skipped == 1


@pytest.mark.parametrize("kind", TRUNCATED)
@pytest.mark.parametrize("command", ["embed", "probe", "evaluate"])
def test_every_command_stops_at_a_truncated_file_naming_it_or_skips_it(
    command, kind, finetuned, tones, tmp_path, capsys
):
    manifest, bad = with_bad_file(tones, tmp_path, kind, "train" if command == "probe" else None)
    out = tmp_path / "out"
    argv = {
        "embed": ["embed", str(bad), str(tones / "low" / "0.wav"), "-c", str(finetuned), "-o",
                  str(out)],
        "probe": ["probe", "-c", str(finetuned), "--train", str(manifest), "--valid",
                  f"{tones / 'all.csv'}:valid", "-o", str(out), "--max-iter", "2"],
        "evaluate": ["evaluate", "-c", str(finetuned), str(manifest), "-o", str(out),
                     "--workers", "0"],
    }[command]  # fmt: skip
    argv.append("--no-progress")
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, str(bad), "--on-bad-file skip")
    assert main([*argv, "--on-bad-file", "skip"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert {"embed": "1 bad", "probe": "1 bad files skipped", "evaluate": "1 bad file(s)"}[
        command] in printed, printed  # fmt: skip


@pytest.mark.parametrize("kind", TRUNCATED)
def test_check_data_reports_a_truncated_file(kind, tones, tmp_path, capsys):
    manifest, bad = with_bad_file(tones, tmp_path, kind)
    main(["check-data", str(manifest), "--no-progress", "--workers", "0"])
    printed = capsys.readouterr()
    assert str(bad) in printed.out + printed.err
    assert "truncated" in printed.out + printed.err


# ---------------------------------------------------------------------------- item 7c: leftovers
def test_a_probe_cache_an_interrupted_run_left_is_never_read_as_complete(
    finetuned, tones, tmp_path, capsys, monkeypatch
):
    import ssamba.probe

    out = tmp_path / "probe"
    argv = ["probe", "-c", str(finetuned), "--train", str(tones / "all.csv"), "-o", str(out),
            "--no-progress", "--max-iter", "2"]  # fmt: skip
    real = np.savez
    writes = []

    def killed_midway(f, **arrays):
        writes.append(1)
        if len(writes) == 3:  # the third file: half written, then the process is stopped
            f.write(b"PK\x03\x04 half an npz")
            raise KeyboardInterrupt
        real(f, **arrays)

    monkeypatch.setattr(ssamba.probe.np, "savez", killed_midway)
    assert main(argv) == 130
    monkeypatch.setattr(ssamba.probe.np, "savez", real)
    cached = sorted((out / "cache").iterdir())
    assert [p.suffix for p in cached] == [".npz", ".npz"]  # the two complete files only
    for path in cached:
        with np.load(path) as data:
            assert data["clip"].shape[-1] > 0
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    assert len(list((out / "cache").glob("*.npz"))) == 8
    assert not [p for p in (out / "cache").iterdir() if p.suffix != ".npz"]
