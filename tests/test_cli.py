"""The ``ssamba`` command line: ``stats``, ``check-data``, help, version and error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssamba import audio
from ssamba.cli import COMMAND_MODULES, main
from ssamba.data import compute_stats, read_manifest

SRC = Path(__file__).resolve().parents[1] / "src"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "stats" in out and "check-data" in out
    assert len(COMMAND_MODULES) >= 2


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("ssamba ")


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: ssamba" in capsys.readouterr().out


def test_help_does_not_load_the_data_code():
    """`ssamba --help` stays fast: sub-commands import their modules only when run."""
    code = (
        "import sys\nfrom ssamba.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('ssamba.data' in sys.modules)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC)},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("False")


DATA_COMMANDS = ("stats", "check-data", "prepare", "data", "demo")


def test_data_commands_help_loads_no_torch():
    """`ssamba COMMAND --help` of the data commands shows defaults and never imports torch."""
    # only these commands' modules: the other families' are checked by their own tests
    code = (
        "import argparse, sys\nfrom ssamba.cli import data, demo\n"
        "p = argparse.ArgumentParser(prog='ssamba')\nsub = p.add_subparsers()\n"
        "data.register(sub)\ndemo.register(sub)\n"
        f"for cmd in {DATA_COMMANDS!r}:\n"
        "    try:\n        p.parse_args([cmd, '--help'])\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "COLUMNS": "200"},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("False")
    for cmd in DATA_COMMANDS:
        assert f"usage: ssamba {cmd}" in res.stdout
    assert "(default: 16000)" in res.stdout and "(default: demo_out)" in res.stdout


def test_check_data_bad_files_exit_1(
    tone_folder, write_corrupt, write_empty_wav, write_nonfinite_wav, capsys, tmp_path
):
    bad = [
        write_corrupt(tone_folder / "low" / "corrupt.wav"),
        write_empty_wav(tone_folder / "mid" / "empty.wav"),
        write_nonfinite_wav(tone_folder / "high" / "nan.wav"),
    ]
    report_path = tmp_path / "out" / "report.json"
    code = main(["check-data", str(tone_folder), "--no-progress", "-o", str(report_path)])
    assert code == 1
    out = capsys.readouterr().out
    problem_lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(problem_lines) == 3
    for p in bad:
        assert sum(str(p) in line for line in problem_lines) == 1
    assert "files: 12" in out and "ok: 9" in out
    report = json.loads(report_path.read_text())
    assert report["num_problems"] == 3 and report["num_files"] == 12
    assert {d["path"] for d in report["problems"]} == {str(p) for p in bad}
    # an existing report is replaced only with --overwrite (--json: the old spelling of -o)
    capsys.readouterr()
    again = ["check-data", str(tone_folder), "--no-progress", "--json", str(report_path)]
    assert main(again) == 2
    assert "report.json: report exists; pass --overwrite" in capsys.readouterr().err
    assert main([*again, "--overwrite"]) == 1
    assert json.loads(report_path.read_text())["num_problems"] == 3


def test_check_data_clean_exit_0(tone_folder, capsys):
    assert main(["check-data", str(tone_folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "files: 9" in out


@pytest.mark.parametrize(
    "setup, needle",
    [
        (lambda d: d / "missing.csv", "missing.csv: manifest not found"),
        (lambda d: _write(d / "bad.json", '{"data": [}'), "bad.json: line 1"),
        (lambda d: _write(d / "bad.csv", "name,label\na.wav,x\n"), "bad.csv: line 1"),
    ],
)
def test_bad_input_exit_2_without_traceback(tmp_path, capsys, setup, needle):
    path = setup(tmp_path)
    for cmd in ("check-data", "stats"):
        assert main([cmd, str(path), "--no-progress"]) == 2
        captured = capsys.readouterr()
        err_lines = captured.err.strip().splitlines()
        assert len(err_lines) == 1 and err_lines[0].startswith("error: ")
        assert needle in err_lines[0]
        assert "Traceback" not in captured.err + captured.out


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_stats_writes_normalisation_json(tone_folder, tmp_path, capsys):
    out_path = tmp_path / "stats" / "stats.json"
    code = main(
        [
            "stats",
            str(tone_folder),
            "--out",
            str(out_path),
            "--target-length",
            "30",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    saved = json.loads(out_path.read_text())
    assert set(saved) >= {"mean", "std", "files", "frames", "manifest"}
    assert saved["files"] == 9 and saved["frames"] == 9 * 30
    assert saved["manifest"] == str(tone_folder.resolve())
    expected = compute_stats(read_manifest(tone_folder), target_length=30, progress=False)
    assert saved["mean"] == pytest.approx(expected["mean"], rel=1e-12)
    assert saved["std"] == pytest.approx(expected["std"], rel=1e-12)
    assert f"{saved['mean']:.7f}" in printed and f"{saved['std']:.7f}" in printed
    # audio.normalize_stats accepts the file, and the numbers are the numpy ones
    mean, std = audio.normalize_stats(out_path)
    fbs = [
        audio.fbank(audio.load_audio(ex.path), target_length=30).double().numpy()
        for ex in read_manifest(tone_folder)
    ]
    values = np.concatenate(fbs)
    assert mean == pytest.approx(values.mean(), rel=1e-9)
    assert std == pytest.approx(values.std(), rel=1e-9)


def test_stats_bad_file_policy(tone_folder, write_corrupt, capsys, tmp_path):
    write_corrupt(tone_folder / "low" / "bad.wav")
    assert main(["stats", str(tone_folder), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.wav" in err
    out_path = tmp_path / "s.json"
    args = [
        "stats",
        str(tone_folder),
        "--no-progress",
        "--on-bad-file",
        "skip",
        "-o",
        str(out_path),
    ]
    assert main(args) == 0
    assert "1 skipped" in capsys.readouterr().out
    assert json.loads(out_path.read_text())["files"] == 9
    # refused before any decoding when the file exists, replaced with --overwrite
    assert main(args) == 2
    assert "s.json: stats file exists; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--workers", "1"]) == 0


def test_every_command_module_registers_its_commands():
    """Each module of COMMAND_MODULES adds at least one command to the parser."""
    import argparse
    import importlib

    for name in COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(f"ssamba.cli.{name}").register(sub)
        assert sub.choices, name
