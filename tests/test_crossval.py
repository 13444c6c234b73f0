"""Cross-validation: folds of a prepared ESC-50 look-alike, averaging, resuming, options."""

import argparse
import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from ssamba.cli import main
from ssamba.cli.train import add_crossval_parser, add_finetune_parser, fold_list, run_crossval
from ssamba.crossval import find_folds, fold_result
from ssamba.errors import TrainingError
from ssamba.recipes.prepare import prepare
from ssamba.training import read_metrics

CATS = {0: ("dog", 300.0), 1: ("rooster", 2000.0)}


def _cli(argv):
    parser = argparse.ArgumentParser(prog="ssamba")
    add_crossval_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    assert args.func is run_crossval
    return args.func(args)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """ESC-50 layout with 3 folds of 4 one-second tones (2 classes), prepared by `prepare`."""
    root = tmp_path_factory.mktemp("esc")
    src = root / "ESC-50-master"
    (src / "audio").mkdir(parents=True)
    (src / "meta").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    for fold in (1, 2, 3):
        for k in range(4):
            target = k % 2
            name, freq = CATS[target]
            x = 0.3 * np.sin(2 * np.pi * freq * rng.uniform(0.95, 1.05) * t)
            x += 0.02 * rng.standard_normal(t.size)
            fname = f"{fold}-{100 + k}-A-{target}.wav"
            sf.write(src / "audio" / fname, x.astype(np.float32), 16000)
            rows.append(f"{fname},{fold},{target},{name},False,{100 + k},A")
    (src / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "3 folds found (the official ESC-50 has 5)"
        prepare("esc50", src, root / "prepared", rate_sample=0)
    return root / "prepared"


BASE = ["--init", "none", "--depth", "2", "--epochs", "1", "--batch-size", "4",
        "--target-length", "96", "--fstride", "16", "--tstride", "16", "--freqm", "0",
        "--timem", "0", "--lr", "1e-3", "--no-progress"]  # fmt: skip


def test_folds_run_average_and_resume(prepared, tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "cv"
    argv = ["crossval", "--prepared", str(prepared), "--out", str(out), *BASE]
    assert _cli([*argv, "--folds", "1,2"]) == 0  # the recipe comes from prepare.json
    result = json.loads((out / "crossval.json").read_text())
    assert result["recipe"] == "esc50" and "last epoch" in result["protocol"]
    assert sorted(result["folds"]) == ["1", "2"] and not result["complete"]
    assert (result["available_folds"], result["protocol_folds"], result["metric"]) == (3, 5, "acc")
    lasts = []
    for k in ("1", "2"):
        valid = [
            r for r in read_metrics(out / f"fold{k}" / "metrics.jsonl") if r["kind"] == "valid"
        ]
        assert result["folds"][k]["last"] == valid[-1]["acc"]
        assert result["folds"][k]["epochs"] == 1
        lasts.append(valid[-1]["acc"])
        run = json.loads((out / f"fold{k}" / "run.json").read_text())
        assert run["train"].endswith(f"fold{k}_train.csv") and run["valid"].endswith(
            f"fold{k}_eval.csv"
        )
        assert run["normalize"] == "esc50" and run["noise"] is True  # the recipe's settings
        assert run["lr"] == 1e-3 and run["target_length"] == 96  # explicit options win
    assert result["mean"] == pytest.approx(np.mean(lasts))
    assert result["std"] == pytest.approx(np.std(lasts))
    text = capsys.readouterr().out
    assert "fold1" in text and "mean" in text and "partial: 2 of 3" in text
    assert f"{100 * np.mean(lasts):.2f}" in text

    done = (out / "fold1" / "summary.json").stat().st_mtime_ns
    assert _cli([*argv, "--folds", "1-3"]) == 0  # folds 1 and 2 are skipped
    assert (out / "fold1" / "summary.json").stat().st_mtime_ns == done
    result = json.loads((out / "crossval.json").read_text())
    assert sorted(result["folds"]) == ["1", "2", "3"] and result["complete"]
    assert result["mean"] == pytest.approx(np.mean([r["last"] for r in result["folds"].values()]))
    assert fold_result(out / "fold3", "acc")["last"] == result["folds"]["3"]["last"]

    (out / "fold3" / "summary.json").unlink()  # as if fold 3 had been interrupted at its end
    assert _cli([*argv, "--folds", "3"]) == 0  # resumed from its last checkpoint
    again = json.loads((out / "crossval.json").read_text())
    assert again["folds"]["3"]["last"] == result["folds"]["3"]["last"]
    assert "resumed from" in caplog.text
    print(capsys.readouterr().out)

    # the recorded settings replay the cross-validation: the same settings, so every fold is done
    replay = ["crossval", "--config", str(out / "crossval_config.json"), "-o", str(out)]
    assert main(replay) == 0
    assert "fold3" in capsys.readouterr().out
    assert (out / "fold1" / "summary.json").stat().st_mtime_ns == done

    with pytest.raises(TrainingError, match="lr"):
        _cli([*argv, "--lr", "5e-4", "--folds", "1"])


def test_find_and_parse_folds(prepared, tmp_path):
    folds = find_folds(prepared)
    assert sorted(folds) == [1, 2, 3]
    assert folds[2][0].name == "fold2_train.csv" and folds[2][1].name == "fold2_eval.csv"
    assert fold_list("1,3") == [1, 3] and fold_list("1-3,5") == [1, 2, 3, 5]
    with pytest.raises(argparse.ArgumentTypeError, match="not a list"):
        fold_list("one")
    with pytest.raises(FileNotFoundError, match="no fold"):
        find_folds(tmp_path)
    with pytest.raises(FileNotFoundError, match="fold7"):
        _cli(["crossval", "--prepared", str(prepared), "--out", str(tmp_path / "o"),
              "--folds", "7", *BASE])  # fmt: skip


def test_crossval_accepts_every_finetune_option():
    def dests(add, exclude):
        parser = argparse.ArgumentParser()
        add(parser.add_subparsers())
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        (p,) = sub.choices.values()
        return {a.dest for a in p._actions} - exclude

    finetune = dests(add_finetune_parser, {"train", "valid", "test"})
    assert finetune <= dests(add_crossval_parser, set())
