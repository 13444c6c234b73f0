"""Small commands: checkpoint weight averaging and training-curve plots."""

import json

import pytest
import torch

import ssamba
from ssamba.averaging import average_checkpoints, run_folder_checkpoints
from ssamba.cli import main
from ssamba.errors import CheckpointError
from ssamba.plots import plot_metrics


def test_average_is_the_elementwise_mean(tmp_path):
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=64, num_classes=4)
        model.save_pretrained(tmp_path / f"m{seed}")
        models.append(model.state_dict())
    averaged = average_checkpoints([tmp_path / f"m{i}" for i in range(3)]).state_dict()
    for key, value in averaged.items():
        expected = sum(m[key].double() for m in models) / 3
        torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    other = ssamba.create_model("ssamba_tiny", depth=4, input_tdim=64, num_classes=4)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="config differs"):
        average_checkpoints([tmp_path / "m0", tmp_path / "other"])


def test_average_command_over_a_run(tmp_path):
    run = tmp_path / "run" / "checkpoints"
    for step in (10, 20, 30):
        torch.manual_seed(step)
        ssamba.create_model("ssast_tiny", depth=1, input_tdim=32).save_pretrained(
            run / f"step_{step:08d}"
        )
        (run / f"step_{step:08d}" / "classes.json").write_text('["a"]')
    assert [p.name for p in run_folder_checkpoints(tmp_path / "run", 20)] == [
        "step_00000020",
        "step_00000030",
    ]
    out = tmp_path / "avg"
    assert (
        main(["average", "--run", str(tmp_path / "run"), "--from-step", "20", "--out", str(out)])
        == 0
    )
    assert json.loads((out / "classes.json").read_text()) == ["a"]
    ssamba.load_model(out)
    # existing output is replaced only with --overwrite; -c names folders too
    folders = [str(run / "step_00000010"), str(run / "step_00000030")]
    argv = ["average", "-c", folders[0], "-c", folders[1], "--out", str(out)]
    assert main(argv) == 2
    assert main([*argv, "--overwrite"]) == 0
    expected = average_checkpoints(folders).state_dict()
    for key, value in ssamba.load_model(out).state_dict().items():
        torch.testing.assert_close(value, expected[key])


def test_plot_metrics_writes_a_png(tmp_path):
    lines = [
        {"kind": "train", "step": s, "loss": 1.0 / s, "acc": 0.1 * s, "nce": 2.0, "mse": 0.5}
        for s in range(1, 6)
    ] + [{"kind": "valid", "step": 5, "acc": 0.4, "nce": 1.9, "mse": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    png = plot_metrics(tmp_path)
    assert png == tmp_path / "curves.png" and png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        plot_metrics(tmp_path / "nowhere")


def test_plot_command(tmp_path, capsys):
    line = {"kind": "train", "step": 1, "loss": 0.5}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    assert main(["plot", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "curves.png")
    assert main(["plot", str(tmp_path)]) == 2  # curves.png exists
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["plot", str(tmp_path), "--overwrite", "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
