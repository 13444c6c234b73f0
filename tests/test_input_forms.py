"""Issue 25, item 7: every input form that one command accepts is accepted or clearly refused by
all the others.

The forms (:func:`ssamba.data.input_form` recognises them, in one place): a manifest, one split
of it (``PATH:SPLIT``), a folder of audio (here a folder per class), a data set folder
(``ssamba data``/``ssamba prepare``), WebDataset shards (``ssamba shard``) and one audio file.
Each (command, form) case runs the command line in-process: an accepted form runs and reads the
rows it should (counted in what the command prints or writes); a refused one exits 2 with one
``error:`` line naming the user's path, the form it is and what the command takes instead.
Tiny models (2 layers, 64 frames) and 0.6 s tones throughout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import one_error_line
from ssamba.cli import main

FREQS = {"high": 3000.0, "low": 300.0}
SPLITS = ("train", "train", "valid", "test")  # per class: 4 train, 2 valid, 2 test rows in all
WHOLE, TRAIN_ROWS = 8, 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``tones/{high,low}/{0..3}.wav`` with ``all.csv`` (a split column); a data set folder as
    ``ssamba data`` writes one (build.json, manifest.csv of every split); shards of every clip;
    a prepared folder of two folds (prepare.json, all.csv with fold splits, fold manifests); a
    DASL manifest; a tiny two-class model with its classes.json."""
    import ssamba
    from ssamba.dasl import build_dasl_mixtures
    from ssamba.data import read_manifest, write_shards

    root = tmp_path_factory.mktemp("forms")
    rng = np.random.default_rng(0)
    rows, fold_rows = [], []
    t = np.arange(int(0.6 * 16000)) / 16000
    for label, freq in FREQS.items():
        for k, split in enumerate(SPLITS):
            x = 0.3 * np.sin(2 * np.pi * freq * rng.uniform(0.95, 1.05) * t)
            x += 0.02 * rng.standard_normal(t.size)
            wav = root / "tones" / label / f"{k}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(wav, x.astype(np.float32), 16000)
            rows.append(f"{wav},{label},{split}")
            fold_rows.append(f"{wav},{label},fold{1 + k % 2}")
    (root / "all.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    built = root / "built"  # as `ssamba data` leaves it
    built.mkdir()
    (built / "build.json").write_text("{}")
    (built / "manifest.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    prepared = root / "prepared"  # as `ssamba prepare` leaves a task with folds
    prepared.mkdir()
    (prepared / "prepare.json").write_text("{}")
    (prepared / "all.csv").write_text("path,label,split\n" + "\n".join(fold_rows) + "\n")
    for k in (1, 2):
        for part, held in (("train", False), ("eval", True)):
            picked = [r.rsplit(",", 1)[0] for r in fold_rows if r.endswith(f"fold{k}") == held]
            (prepared / f"fold{k}_{part}.csv").write_text("path,label\n" + "\n".join(picked))
    write_shards(read_manifest(root / "all.csv"), root / "shards", 1 << 30)
    build_dasl_mixtures(root / "tones", root / "dasl", 4, seconds=2, seed=0, mode="crop",
                        name="train")  # fmt: skip
    held = []  # a validation set of other clips, for the probe
    for label, freq in FREQS.items():
        x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(root / f"held_{label}.wav", x.astype(np.float32), 16000)
        held.append(f"held_{label}.wav,{label}")
    (root / "held.csv").write_text("path,label\n" + "\n".join(held) + "\n")
    model = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=64, num_classes=2)
    folder = Path(model.save_pretrained(root / "model"))
    (folder / "classes.json").write_text(json.dumps(sorted(FREQS)))
    return root


def form_spec(data: Path, form: str, command: str) -> str:
    """The user's path of ``form`` (crossval's manifest and data set folder are of folds)."""
    if command == "crossval":
        specs = {"manifest": "prepared/all.csv", "split": "prepared/all.csv:fold1",
                 "data set folder": "prepared"}  # fmt: skip
        if form in specs:
            return str(data / specs[form])
    if command == "dasl" and form == "manifest":
        return str(data / "dasl" / "train.csv")
    return str(data / {
        "manifest": "all.csv",
        "split": "all.csv:train",
        "audio folder": "tones",
        "data set folder": "built",
        "shards": "shards",
        "audio file": "tones/low/0.wav",
    }[form])  # fmt: skip


TRAIN = ["--depth", "2", "--target-length", "64", "--batch-size", "4", "--epochs", "1",
         "--warmup-steps", "0", "--no-progress", "--workers", "0"]  # fmt: skip


def command_argv(command: str, spec: str, data: Path, out: Path) -> list[str]:
    model, o = str(data / "model"), str(out)
    quiet = ["--no-progress", "--workers", "0"]
    return {
        "stats": ["stats", spec, *quiet],
        "check-data": ["check-data", spec, *quiet],
        "shard": ["shard", spec, "-o", o, "--no-progress"],
        "segment": ["segment", spec, "-o", o, "--seconds", "0.5", "--min-seconds", "0.01",
                    "--no-progress"],
        "embed": ["embed", spec, "-c", model, "-o", o, "--no-progress"],
        "evaluate": ["evaluate", "-c", model, spec, "-o", o, *quiet],
        "probe": ["probe", "-c", model, "--train", spec, "--valid", str(data / "held.csv"), "-o",
                  o, "--no-progress", "--max-iter", "2"],
        "pretrain": ["pretrain", "--train", spec, "-o", o, *TRAIN],
        "pretrain --probe": ["pretrain", "--train", str(data / "tones"), "-o", o, "--probe", spec,
                             "--max-steps", "1", "--probe-batch-size", "8", *TRAIN],
        "finetune": ["finetune", "--train", spec, "-o", o, *TRAIN],
        "dasl": ["dasl", "--train", spec, "-o", o, "--depth", "2", "--fstride", "32",
                 "--tstride", "32", "--batch-size", "2", "--max-steps", "1", "--no-progress",
                 "--workers", "0"],
        "dasl-build": ["dasl-build", spec, "-o", o, "-n", "2", "--seconds", "2"],
        "crossval": ["crossval", "--prepared", spec, "-o", o, "--folds", "1", "--init", "none",
                     "--max-steps", "1", *TRAIN],
    }[command]  # fmt: skip


def rows_read(command: str, out: Path, stdout: str) -> int:
    """How many clips the command read, from what it printed or wrote."""
    found = {
        "stats": r"\((\d+) files",
        "check-data": r"files: (\d+)",
        "shard": r"(\d+) clips in",
        "segment": r"from (\d+) recordings",
        "embed": r"embedded (\d+) files",
        "evaluate": r"examples: (\d+)",
        "pretrain": r"done: (\d+) steps",  # batches of 4 clips
        "finetune": r"done: (\d+) steps",
    }
    if command == "probe":
        return json.loads((out / "probe_results.json").read_text())["train"]["files"]
    number = int(re.search(found[command], stdout)[1])
    return 4 * number if command in ("pretrain", "finetune") else number


# What each form stands for: the rows a command that reads one whole set takes, and a command
# whose --train takes the train rows of a manifest with a split column.
WHOLE_ROWS = {"manifest": WHOLE, "split": TRAIN_ROWS, "audio folder": WHOLE,
              "data set folder": WHOLE, "shards": WHOLE, "audio file": 1}  # fmt: skip
ROLE_ROWS = {**WHOLE_ROWS, "manifest": TRAIN_ROWS, "data set folder": TRAIN_ROWS}
ROLES = {"probe", "pretrain", "finetune"}

FORMS = ("manifest", "split", "audio folder", "data set folder", "shards", "audio file")
# Every command x form: True accepted, False refused. The forms a command takes: a decoding
# reader takes manifests, PATH:SPLIT and folders of audio; commands with --train/--valid/--test
# (and the whole-set readers check-data and stats) data set folders too; the training dataset
# (pretrain, finetune, evaluate) also streams shards; embed and segment take audio files.
ACCEPTS = {
    "stats": {"manifest", "split", "audio folder", "data set folder"},
    "check-data": {"manifest", "split", "audio folder", "data set folder"},
    "shard": {"manifest", "split", "audio folder"},
    "segment": {"audio folder", "audio file"},
    "embed": {"manifest", "split", "audio folder", "data set folder", "audio file"},
    "evaluate": {"manifest", "split", "audio folder", "shards"},
    "probe": {"manifest", "split", "audio folder", "data set folder"},
    "pretrain": {"manifest", "split", "audio folder", "data set folder", "shards"},
    "pretrain --probe": {"manifest", "split", "audio folder", "data set folder"},
    "finetune": {"manifest", "split", "audio folder", "data set folder", "shards"},
    "dasl": {"manifest"},  # its own manifests; the other decodable forms: test_dasl.py
    "dasl-build": {"manifest", "split", "audio folder"},
    "crossval": {"manifest", "split", "data set folder"},
}
NOT_TRIED = {("dasl", "split"), ("dasl", "audio folder"), ("dasl", "data set folder")}
CASES = [(c, f) for c in ACCEPTS for f in FORMS if (c, f) not in NOT_TRIED]
# How a refusal names each form (InputForm.describe)
FORM_WORDS = {"manifest": "manifest", "split": "PATH:SPLIT", "audio folder": "folder of audio",
              "data set folder": "data set folder", "shards": "WebDataset shards",
              "audio file": "an audio file"}  # fmt: skip


@pytest.mark.parametrize("command, form", CASES)
def test_every_command_accepts_or_clearly_refuses_every_input_form(
    command, form, data, tmp_path, capsys
):
    spec = form_spec(data, form, command)
    out = tmp_path / "out"
    code = main(command_argv(command, spec, data, out))
    captured = capsys.readouterr()
    if form not in ACCEPTS[command]:
        assert code == 2, captured.out + captured.err
        line = one_error_line(captured.err, spec, FORM_WORDS[form], "takes")
        assert f"`ssamba {command.split()[0]}" in line
        if form in ("data set folder", "shards", "audio file"):  # and what to pass instead
            assert "; pass " in line, line
        assert not (out / "run.json").exists()
        return
    assert code == 0, captured.err
    if command == "crossval":
        folds = json.loads((out / "crossval.json").read_text())["folds"]
        assert list(folds) == ["1"]
        train = (out / "fold1" / "run.json").read_text()
        assert json.loads(train)["train"].endswith("fold1_train.csv")
    elif command in ("pretrain --probe", "dasl", "dasl-build"):
        assert "done" in captured.out or "recordings" in captured.out
    else:
        expected = (ROLE_ROWS if command in ROLES else WHOLE_ROWS)[form]
        assert rows_read(command, out, captured.out) == expected, captured.out


@pytest.mark.parametrize("option", ["--valid", "--test"])
@pytest.mark.parametrize("command", ["probe", "finetune"])
def test_held_out_options_take_the_same_forms_as_train(command, option, data, tmp_path, capsys):
    argv = command_argv(command, str(data / "all.csv:train"), data, tmp_path / "out")
    if command == "probe":
        argv.remove("--valid")  # and its value
        argv.remove(str(data / "held.csv"))
    assert main([*argv, option, str(data / "shards")]) == (2 if command == "probe" else 0)
    err = capsys.readouterr().err
    if command == "probe":
        one_error_line(err, str(data / "shards"), "WebDataset shards", f"probe {option}` takes")


def test_input_form_recognises_each_form_in_one_place(data):
    from ssamba.data import input_form

    kinds = {form: input_form(form_spec(data, form, "any")).kind for form in FORMS}
    assert kinds == {form: form for form in FORMS}
    assert input_form(data / "prepared").kind == "data set folder"
    assert input_form(f"{data}/shards/shard-{{000000..000000}}.tar").kind == "shards"
    assert input_form(data / "nothing.csv").kind == "missing"


def test_a_data_set_folder_stands_for_its_manifest_of_every_split(data):
    from ssamba.data import read_manifest, read_splits

    whole = read_manifest(data / "built")
    assert whole.source == data / "built" / "manifest.csv" and len(whole) == WHOLE
    sets = read_splits(str(data / "built"))
    assert [len(sets[r]) for r in ("train", "valid", "test")] == [4, 2, 2]


def test_a_folder_of_manifests_without_audio_names_them(data, tmp_path, capsys):
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "train.csv").write_text((data / "all.csv").read_text())
    assert main(["check-data", str(folder), "--no-progress"]) == 2
    one_error_line(capsys.readouterr().err, str(folder), "train.csv", "pass one of them")


@pytest.mark.parametrize(
    "probe, sizes",
    [
        ("all.csv", (4, 2)),  # its train rows, its valid rows as TEST
        ("all.csv:train", (4, None)),  # TEST held out of the train rows
        ("all.csv:train,all.csv:test", (4, 2)),
        ("tones", (8, None)),
    ],
)
def test_the_online_probe_reads_its_sets_as_train_and_valid_are(data, probe, sizes):
    from ssamba.configs import parse_probe_spec
    from ssamba.pretrain import _probe_manifests

    specs = ",".join(str(data / part) for part in probe.split(","))
    _, train_path, test_path = parse_probe_spec(specs)
    train, test = _probe_manifests(train_path, test_path, seed=0, allow_overlap=False)
    if sizes[1] is None:  # a stratified fifth held out of TRAIN
        assert len(train) + len(test) == sizes[0] and len(test) >= 1
    else:
        assert (len(train), len(test)) == sizes
    assert not {ex.path for ex in train} & {ex.path for ex in test}


def test_the_online_probe_refuses_a_test_set_that_is_in_train(data, tmp_path, capsys):
    argv = command_argv("pretrain --probe", f"{data / 'all.csv'},{data / 'tones'}", data,
                        tmp_path / "out")  # fmt: skip
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, "--probe", "also in", "--allow-overlap")


def test_crossval_of_a_manifest_trains_on_the_other_folds(data, tmp_path, capsys):
    out = tmp_path / "cv"
    argv = command_argv("crossval", str(data / "prepared" / "all.csv"), data, out)
    assert main(argv) == 0, capsys.readouterr().err
    train = (out / "folds" / "fold1_train.csv").read_text().splitlines()[1:]
    held = (out / "folds" / "fold1_eval.csv").read_text().splitlines()[1:]
    expected = (data / "prepared" / "fold1_eval.csv").read_text().splitlines()[1:]
    assert len(train) == len(held) == 4 and sorted(r.split(",")[0] for r in held) == sorted(
        r.split(",")[0] for r in expected
    )
    assert not {r.split(",")[0] for r in train} & {r.split(",")[0] for r in held}


def test_crossval_of_a_manifest_without_folds_names_its_splits(data, tmp_path, capsys):
    argv = command_argv("crossval", str(data / "all.csv"), data, tmp_path / "cv")
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, "all.csv", "not folds", "test, train, valid")
