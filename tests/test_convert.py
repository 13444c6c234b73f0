"""ssamba.convert: official checkpoint -> save_pretrained folder, verified round trip."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

import ssamba
from ssamba.cli import checkpoints as cli_checkpoints
from ssamba.convert import convert_checkpoint
from ssamba.errors import CheckpointError, UsageError

GOLDEN = Path(__file__).parent / "data" / "golden"
SSAMBA = GOLDEN / "official_ssamba_tiny_depth4" / "pretrain_state_dict.pt"
SSAST = GOLDEN / "official_ssast_tiny_depth2" / "pretrain_state_dict.pt"


def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="ssamba")
    cli_checkpoints.register(parser.add_subparsers())
    args = parser.parse_args(["convert", *map(str, argv)])
    return args.func(args)


@pytest.mark.parametrize("source", [SSAMBA, SSAST], ids=["ssamba", "ssast"])
def test_round_trip_of_official_fixture(source, tmp_path, capsys):
    out = tmp_path / "converted"
    assert run_cli("-c", source, "-o", out) == 0
    text = capsys.readouterr().out
    arch = "ssamba" if "ssamba" in source.parent.name else "ssast"
    assert f"model:     {arch}" in text and "128 mel bins x 256 frames" in text
    assert "state_dict bit-identical" in text and "forward_features 0," in text
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (out / name).is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == arch and config["pretrain_tdim"] == 256

    # independent check: the official file and the folder give identical outputs
    official, converted = ssamba.load_model(source), ssamba.load_model(out)
    fbank = torch.randn(2, 256, 128, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(official.forward_features(fbank), converted.forward_features(fbank))
        mask = torch.arange(1, 61).repeat(2, 1)
        a = official.forward_pretrain(fbank, "mpc", mask_index=mask)
        b = converted.forward_pretrain(fbank, "mpc", mask_index=mask)
        assert torch.equal(torch.as_tensor(a[1]), torch.as_tensor(b[1]))


def test_overrides(tmp_path, capsys):
    out = tmp_path / "ft"
    run_cli(SSAST, out, "--tstride", "10", "--input-tdim", "200", "--num-classes", "5")
    text = capsys.readouterr().out
    assert "stride 16x10" in text and "5 classification classes" in text
    model = ssamba.load_model(out)
    cfg = model.config
    assert (cfg.tstride, cfg.input_tdim, cfg.num_classes) == (10, 200, 5)
    assert model(torch.zeros(1, 200, 128)).shape == (1, 5)


def test_python_api_report(tmp_path):
    report = convert_checkpoint(SSAST, tmp_path / "out", seed=1)
    assert report["ok"] and report["state_dict_differs"] == []
    assert set(report["max_abs_diff"]) >= {"forward_features", "forward", "mpc.nce", "mpg.mse"}
    assert all(v == 0 for v in report["max_abs_diff"].values())
    assert report["num_parameters"] == ssamba.load_model(SSAST).num_parameters()


def test_errors(tmp_path):
    out = tmp_path / "out"
    run_cli(SSAST, out)  # the old positional spelling still works
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        run_cli("-c", SSAST, "-o", out)
    assert run_cli(SSAST, out, "--overwrite") == 0
    with pytest.raises(UsageError, match="already holds a model"):  # the Python API
        convert_checkpoint(SSAST, out)
    with pytest.raises(UsageError, match="no such checkpoint"):
        run_cli(tmp_path / "missing.pth", tmp_path / "x")
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch state_dict"):
        run_cli("-c", bogus, "-o", tmp_path / "y")
    with pytest.raises(UsageError, match="-o/--out is required"):
        run_cli("-c", SSAST)
