"""Metric loggers: metrics.jsonl always, TensorBoard and wandb on request, a clear error at the
start of a run when a requested tracker is not installed.

wandb is not installed in this environment (its dependencies are heavy): it is exercised through
a fake ``wandb`` module that records what the logger asks of it; with wandb installed, the last
test also runs it for real in offline mode (WANDB_MODE=offline) and checks the run directory."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types

import pytest

from ssamba.cli import main
from ssamba.configs import FinetuneConfig, PretrainConfig
from ssamba.errors import UsageError
from ssamba.training import RunFolder, read_metrics
from ssamba.training.loggers import check_installed, parse_loggers

RECORDS = [
    {"kind": "train", "step": 10, "epoch": 0, "loss": 2.5, "lr": 1e-4},
    {"kind": "valid", "step": 10, "epoch": 0, "acc": 0.25},
]


def run_folder(tmp_path, logger):
    settings = {"command": "pretrain", "logger": logger, "lr": 1e-4}
    run = RunFolder(tmp_path / "run", settings, resume=False, overwrite=False, main=True)
    run.start()
    return run


def test_parse_and_validate():
    assert parse_loggers("tensorboard") == ("jsonl", "tensorboard")
    assert parse_loggers(" wandb , jsonl,tensorboard") == ("jsonl", "tensorboard", "wandb")
    assert parse_loggers(None) == ("jsonl",)
    with pytest.raises(UsageError, match="unknown logger mlflow"):
        parse_loggers("jsonl,mlflow")
    with pytest.raises(UsageError, match="logger must be one of jsonl, tensorboard, wandb"):
        PretrainConfig(out="x", train="t.csv", logger="jsonl,comet")
    assert FinetuneConfig(out="x", train="t.csv", logger="jsonl,tensorboard").logger


def test_missing_tracker_is_an_error_at_start(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    with pytest.raises(
        UsageError, match=r"--logger wandb needs the wandb package .*ssamba\[wandb\]"
    ):
        check_installed(["jsonl", "wandb"])
    with pytest.raises(UsageError, match="needs the wandb package"):
        run_folder(tmp_path, "jsonl,wandb")  # before anything is written
    assert not (tmp_path / "run").exists()


def test_jsonl_only_by_default(tmp_path):
    run = run_folder(tmp_path, "jsonl")
    for record in RECORDS:
        run.log_metrics(record)
    run.close()
    assert read_metrics(tmp_path / "run" / "metrics.jsonl") == RECORDS
    assert not (tmp_path / "run" / "tb").exists()  # TensorBoard only when asked for


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = run_folder(tmp_path, "jsonl,tensorboard")
    for record in RECORDS:
        run.log_metrics(record)
    run.close()
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/lr", "valid/acc"}
    (loss,) = events.Scalars("train/loss")
    assert (loss.step, loss.value) == (10, 2.5)


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = {"log": [], "finished": False}

    class Run:
        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_logger_against_a_fake_module(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    run = run_folder(tmp_path, "wandb")
    for record in RECORDS:
        run.log_metrics(record)
    run.close()
    init = fake_wandb["init"]
    assert init["project"] == "my-project" and init["dir"] == str(tmp_path / "run")
    assert init["config"]["lr"] == 1e-4 and init["config"]["logger"] == "wandb"
    assert fake_wandb["log"] == [(10, {"train/loss": 2.5, "train/lr": 1e-4}),
                                 (10, {"valid/acc": 0.25})]  # fmt: skip
    assert fake_wandb["finished"]
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2  # still the run's record


def test_cli_option_and_clear_error(tmp_path, capsys):
    assert main(["pretrain", "--train", "t.csv", "-o", str(tmp_path), "--logger", "comet"]) == 2
    assert "logger must be one of jsonl, tensorboard, wandb" in capsys.readouterr().err
    for command in ("pretrain", "finetune", "dasl"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--logger LIST" in capsys.readouterr().out


def test_wandb_offline_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = run_folder(tmp_path, "jsonl,wandb")
    for record in RECORDS:
        run.log_metrics(record)
    run.close()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["logger"] == "jsonl,wandb"
