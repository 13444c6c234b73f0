"""Recipes (``load_recipe``) and ``ssamba prepare`` on small look-alike trees of each dataset."""

from __future__ import annotations

import argparse
import csv
import json
import warnings

import pytest

from ssamba.cli import main
from ssamba.cli.data import register, run_prepare
from ssamba.data import ManifestWarning, read_manifest
from ssamba.errors import PrepareError, RecipeError, UsageError
from ssamba.recipes import (
    FINETUNE_FIELDS,
    FINETUNE_OPTIONAL,
    list_recipes,
    load_recipe,
    validate_recipe,
)
from ssamba.recipes.prepare import PrepareWarning, prepare

TASKS = [
    "audioset20k",
    "esc50",
    "iemocap",
    "speechcommands_v1",
    "speechcommands_v2",
    "urbansound8k",
    "voxceleb1",
]
SHORT = 0.03  # seconds of audio per synthetic file


def test_recipes_load_and_validate():
    assert list_recipes() == TASKS
    for name in TASKS:
        r = load_recipe(name)
        assert r["name"] == name
        keys = set(r["finetune"])
        assert set(FINETUNE_FIELDS) - FINETUNE_OPTIONAL <= keys <= set(FINETUNE_FIELDS)
        assert "source" in r["expected"]
        assert ("folds" in r) != ("splits" in r)
    assert load_recipe("ESC-50")["name"] == "esc50"
    assert load_recipe("speechcommands")["num_classes"] == 35
    with pytest.raises(RecipeError, match="unknown task 'nope'"):
        load_recipe("nope")
    bad = load_recipe("esc50")
    bad["finetune"]["learning_rate"] = bad["finetune"].pop("lr")
    with pytest.raises(RecipeError, match="missing \\['lr'\\], unexpected \\['learning_rate'\\]"):
        validate_recipe(bad)


def test_recipe_values_follow_spec_table():
    """docs/finetuning.md: frames, batch, lr, epochs, freqm/timem, mixup, loss, metric."""
    expected = {
        "audioset20k": (527, 1024, 24, 1e-4, 50, 48, 192, 0.5, "bce", "map", 3.0),
        "esc50": (50, 512, 48, 1e-4, 50, 24, 96, 0.0, "ce", "acc", 1.0),
        "speechcommands_v2": (35, 128, 128, 2.5e-4, 30, 48, 48, 0.6, "bce", "acc", 1.0),
        "speechcommands_v1": (30, 128, 128, 2.5e-4, 30, 48, 48, 0.6, "bce", "acc", 1.0),
    }
    keys = "target_length batch_size lr epochs freqm timem mixup loss metric head_lr_mult".split()
    for name, values in expected.items():
        r = load_recipe(name)
        assert (r["num_classes"], *(r["finetune"][k] for k in keys)) == values, name
    for name in ("voxceleb1", "iemocap"):
        ft = load_recipe(name)["finetune"]
        assert ft["target_length"] == 1000 and ft["loss"] == "ce" and ft["metric"] == "acc"
    assert load_recipe("voxceleb1")["finetune"]["lr"] == 1e-4
    assert load_recipe("iemocap")["finetune"]["lr"] == 1e-5
    assert load_recipe("esc50")["finetune"]["noise"] is True
    assert load_recipe("speechcommands_v2")["finetune"]["warmup_steps"] == 1000
    for name in TASKS:
        ft = load_recipe(name)["finetune"]
        assert ft["weight_decay"] == 5e-7 and ft["fstride"] == ft["tstride"] == 10


def test_audioset20k_follows_the_official_script_schedule_and_averaging_window():
    r = load_recipe("audioset20k")
    ft = r["finetune"]
    assert (ft["lr_schedule"], ft["lr_milestones"], ft["lr_decay"]) == (
        "milestones",
        [15, 25, 35, 45],
        0.75,
    )
    assert r["average"] == {"first_epoch": 12, "last_epoch": 40}
    notes = " ".join(r["notes"])
    assert "12 to 40" in notes and "smoothly" not in notes and "12-25" not in notes
    bad = load_recipe("audioset20k")
    bad["average"] = {"first_epoch": 12, "last_epoch": 60}
    with pytest.raises(RecipeError, match="average epochs 12-60 not within 1-50"):
        validate_recipe(bad)
    bad["finetune"]["lr_milestones"] = []
    with pytest.raises(RecipeError, match="lr_milestones"):
        validate_recipe(bad)


# --------------------------------------------------------------------------------------------------
# Look-alike trees


def _wav(make_wav, path, sr=16000):
    return make_wav(path, SHORT, 440.0, sr)


def _esc50(root, make_wav, per_fold=2):
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    cats = {0: "dog", 1: "rooster"}
    for fold in range(1, 6):
        for k in range(per_fold):
            target = k % 2
            name = f"{fold}-{100 + k}-A-{target}.wav"
            _wav(make_wav, root / "audio" / name, sr=44100)
            rows.append(f"{name},{fold},{target},{cats[target]},True,{100 + k},A")
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="ssamba")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    assert args.func is run_prepare
    return args.func(args)


def test_prepare_esc50_folds(tmp_path, make_wav, capsys):
    src = _esc50(tmp_path / "dl" / "ESC-50-master", make_wav)  # found one level down
    out = tmp_path / "out"
    assert _run_cli(["prepare", "esc50", str(tmp_path / "dl"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fold1_train" in text and "44100 Hz: 10" in text
    for k in range(1, 6):
        train = read_manifest(out / f"fold{k}_train.csv")
        test = read_manifest(out / f"fold{k}_eval.csv", classes=out / "class_labels_indices.csv")
        assert len(train) == 8 and len(test) == 2
        assert train.classes == ["dog", "rooster"] and test.classes == ["dog", "rooster"]
        assert all(ex.path.is_absolute() and ex.path.is_file() for ex in train)
        assert all(ex.path.name.startswith(f"{k}-") for ex in test)
        assert not {ex.path for ex in train} & {ex.path for ex in test}
    assert len(read_manifest(out / "all.csv", split="fold3")) == 2
    report = json.loads((out / "prepare.json").read_text())
    assert report["counts"]["fold2_eval"] == 2 and report["source"] == str(src)
    # existing output is refused unless --overwrite (which replaces it whole)
    (out / "stale.csv").write_text("path,label\n")
    with pytest.raises(UsageError, match="pass --overwrite"):
        _run_cli(["prepare", "esc50", str(src), "-o", str(out)])
    assert _run_cli(["prepare", "esc50", str(src), "-o", str(out), "--overwrite"]) == 0
    assert (out / "prepare.json").is_file() and not (out / "stale.csv").exists()


def test_prepare_reports_missing_files_and_json_relative(tmp_path, make_wav):
    src = _esc50(tmp_path / "esc", make_wav)
    with open(src / "meta" / "esc50.csv", "a") as f:
        f.write("5-999-A-0.wav,5,0,dog,True,999,A\n")
    out = tmp_path / "o"
    with pytest.warns(PrepareWarning, match="1 files"):
        res = prepare("esc50", src, out, format="both", relative=True, rate_sample=0)
    assert res.missing["all"] == ["5-999-A-0.wav"]
    assert (out / "missing_all.txt").read_text().strip() == "5-999-A-0.wav"
    data = json.loads((out / "fold1_eval.json").read_text())["data"]
    assert not data[0]["wav"].startswith("/")
    m = read_manifest(out / "fold1_eval.json")  # class_labels_indices.csv next to it
    assert len(m) == 2 and m.classes == ["dog", "rooster"] and m[0].path.is_file()
    assert "missing (all): 1" in res.summary()


def _speechcommands(root, make_wav, words, per_word=4):
    valid, test = [], []
    for w in words:
        for k in range(per_word):
            rel = f"{w}/{k:08x}_nohash_0.wav"
            _wav(make_wav, root / rel)
            if k == 0:
                valid.append(rel)
            elif k == 1:
                test.append(rel)
    _wav(make_wav, root / "_background_noise_" / "white_noise.wav")
    (root / "validation_list.txt").write_text("\n".join(valid) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "LICENSE").write_text("CC-BY-4.0\n")
    return root


def test_prepare_speechcommands(tmp_path, make_wav):
    src = _speechcommands(tmp_path / "sc2", make_wav, ["yes", "no", "backward"])
    with pytest.warns(PrepareWarning, match="32 of the 35 words have no folder"):
        res = prepare("speechcommands_v2", src, tmp_path / "o2", rate_sample=0)
    assert res.counts == {"train": 6, "valid": 3, "test": 3}
    train = read_manifest(tmp_path / "o2" / "train.csv")
    assert train.classes == ["backward", "no", "yes"]
    assert not any("_background_noise_" in str(ex.path) for ex in train)
    assert any("_background_noise_" in n for n in res.notes)
    with pytest.warns(ManifestWarning, match="32 class"):
        classes = read_manifest(
            tmp_path / "o2" / "test.csv", classes=tmp_path / "o2" / "class_labels_indices.csv"
        ).classes
    assert len(classes) == 35
    # the v2 tree is not v1, and a v1 tree is not v2
    with pytest.raises(PrepareError, match="this is Speech Commands v2"):
        prepare("speechcommands_v1", src, tmp_path / "o1")
    src1 = _speechcommands(tmp_path / "sc1", make_wav, ["yes", "no"], per_word=3)
    with pytest.raises(PrepareError, match="looks like Speech Commands v1"):
        prepare("speechcommands_v2", src1, tmp_path / "o3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrepareWarning)
        res = prepare("speechcommands_v1", src1, tmp_path / "o1", rate_sample=0)
    assert res.counts == {"train": 2, "valid": 2, "test": 2} and res.num_classes == 30


def test_prepare_audioset(tmp_path, make_wav):
    src = tmp_path / "as"
    src.mkdir()
    (src / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n'
        '2,/m/0jbk,"Animal, pets"\n'
    )
    head = (
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
    )
    (src / "balanced_train_segments.csv").write_text(
        head + '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/04rlf"\n'
        'Y0-abcdefgh, 0.000, 10.000, "/m/0jbk"\n'
        'missingid01, 0.000, 10.000, "/m/0jbk"\n'
    )
    (src / "eval_segments.csv").write_text(head + 'evalclip_01, 5.000, 15.000, "/m/04rlf"\n')
    _wav(make_wav, src / "audio" / "bal" / "--PJHxphWEs.wav")
    _wav(make_wav, src / "audio" / "bal" / "Y0-abcdefgh_0.000_10.000.flac")
    _wav(make_wav, src / "audio" / "eval" / "Yevalclip_01.wav", sr=32000)
    with pytest.warns(PrepareWarning, match="1 segments"):
        res = prepare("audioset20k", src, tmp_path / "o", format="both")
    assert res.counts == {"train": 2, "eval": 1} and res.missing["train"] == ["missingid01"]
    assert res.num_classes == 3 and res.sample_rates == {16000: 2, 32000: 1}
    train = read_manifest(tmp_path / "o" / "train.json")  # SSAST JSON + class csv
    assert train.multilabel and train.classes == ["/m/09x0r", "/m/04rlf", "/m/0jbk"]
    assert train[0].labels == ("/m/09x0r", "/m/04rlf")
    assert train.display_names["/m/0jbk"] == "Animal, pets"
    csv_train = read_manifest(tmp_path / "o" / "train.csv")
    assert [ex.labels for ex in csv_train] == [ex.labels for ex in train]
    bad = src / "eval_segments.csv"
    bad.write_text(head + 'evalclip_01, 5.000, 15.000, "/m/unknown"\n')
    with pytest.raises(PrepareError, match="'/m/unknown' is not in class_labels_indices.csv"):
        prepare("audioset20k", src, tmp_path / "o")


def test_prepare_voxceleb1(tmp_path, make_wav):
    src = tmp_path / "vox1"
    lines = []
    for spk in ("id10001", "id10002"):
        for k, split in enumerate(("1", "1", "2", "3")):
            rel = f"{spk}/vid{k}/0000{k}.wav"
            _wav(make_wav, src / "wav" / rel)
            lines.append(f"{split} {rel}")
    (src / "iden_split.txt").write_text("\n".join(lines) + "\n")
    res = prepare("voxceleb1", src, tmp_path / "o", rate_sample=0)
    assert res.counts == {"train": 4, "valid": 2, "test": 2}
    test = read_manifest(tmp_path / "o" / "test.csv")
    assert test.classes == ["id10001", "id10002"]
    (src / "iden_split.txt").write_text("4 id10001/vid0/00000.wav\n")
    with pytest.raises(PrepareError, match="line 1"):
        prepare("voxceleb1", src, tmp_path / "o")


def test_prepare_iemocap(tmp_path, make_wav):
    src = tmp_path / "IEMOCAP_full_release"
    for s in range(1, 6):
        sess = src / f"Session{s}"
        dialog = f"Ses0{s}F_impro01"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for k, emo in enumerate(["neu", "exc", "ang", "sad", "fru", "xxx"]):
            utt = f"{dialog}_F00{k}"
            _wav(make_wav, sess / "sentences" / "wav" / dialog / f"{utt}.wav")
            lines.append(f"[{k}.0 - {k}.5]\t{utt}\t{emo}\t[2.5000, 2.5000, 2.5000]")
            lines.append(f"C-E1:\t{emo};\t()")
        emo_dir = sess / "dialog" / "EmoEvaluation"
        emo_dir.mkdir(parents=True)
        (emo_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        (emo_dir / "Categorical").mkdir()
    res = prepare("iemocap", src, tmp_path / "o", rate_sample=0)
    assert res.counts["fold1_eval"] == 4 and res.counts["fold1_train"] == 16
    assert len(res.counts) == 10 and res.num_classes == 4
    m = read_manifest(tmp_path / "o" / "fold3_eval.csv")
    assert sorted(ex.labels[0] for ex in m) == ["ang", "hap", "neu", "sad"]
    assert all("Session3" in str(ex.path) for ex in m)
    assert any("fru 5" in n and "xxx 5" in n for n in res.notes)


def test_prepare_urbansound8k(tmp_path, make_wav):
    src = tmp_path / "UrbanSound8K"
    rows = ["slice_file_name,fsID,start,end,salience,fold,classID,class"]
    for fold in range(1, 11):
        for cid, name in ((3, "dog_bark"), (0, "air_conditioner")):
            fn = f"{fold}{cid}-{cid}-0-0.wav"
            _wav(make_wav, src / "audio" / f"fold{fold}" / fn, sr=22050)
            rows.append(f"{fn},{fold}{cid},0.0,0.5,1,{fold},{cid},{name}")
    (src / "metadata").mkdir()
    (src / "metadata" / "UrbanSound8K.csv").write_text("\n".join(rows) + "\n")
    res = prepare("urbansound8k", src, tmp_path / "o", rate_sample=5)
    assert res.counts["fold10_eval"] == 2 and res.counts["fold10_train"] == 18
    assert res.sample_rates == {22050: 5}
    cls = list(csv.DictReader(open(tmp_path / "o" / "class_labels_indices.csv")))
    assert [r["mid"] for r in cls] == ["air_conditioner", "dog_bark"]  # classID order


@pytest.mark.parametrize(
    "task, needle",
    [
        ("esc50", "meta/esc50.csv"),
        ("speechcommands_v2", "validation_list.txt"),
        ("audioset20k", "balanced_train_segments.csv"),
        ("voxceleb1", "iden_split.txt"),
        ("iemocap", "Session1"),
        ("urbansound8k", "metadata/UrbanSound8K.csv"),
    ],
)
def test_wrong_layout_names_the_missing_file(tmp_path, task, needle):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match=f"{needle} not found"):
        prepare(task, tmp_path / "empty", tmp_path / "o")


def test_missing_pieces_and_cli_errors(tmp_path, make_wav, capsys):
    src = _esc50(tmp_path / "esc", make_wav, per_fold=1)
    (src / "meta" / "esc50.csv").write_text("filename,fold,category\nx.wav,1,dog\n")
    with pytest.raises(PrepareError, match="missing column\\(s\\) target"):
        prepare("esc50", src, tmp_path / "o")
    sc = _speechcommands(tmp_path / "sc", make_wav, ["yes", "learn"], per_word=2)
    (sc / "testing_list.txt").unlink()
    for argv, needle in [
        (["speechcommands_v2", str(sc)], "testing_list.txt not found"),
        (["nope", str(sc)], "unknown task"),
        (["librispeech", str(sc)], "does not look like LibriSpeech"),
        (["esc50", str(tmp_path / "nope")], "not a folder"),
    ]:
        assert main(["prepare", *argv, "-o", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and "Traceback" not in err
