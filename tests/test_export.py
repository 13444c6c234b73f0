"""Export: ONNX (checked with onnxruntime) and TorchScript, SSAMBA and SSAST, outputs within
1e-4 of PyTorch; the model keeps working after export; failures say why in one line."""

from __future__ import annotations

import os

import pytest
import torch

import ssamba
from ssamba.cli import main
from ssamba.errors import UsageError
from ssamba.export import export_model

FRAMES = 48  # a short input keeps the unrolled ONNX scan small


def tiny(arch: str, **kw):
    torch.manual_seed(0)
    return ssamba.create_model(f"{arch}_tiny", depth=2, input_tdim=FRAMES, **kw)


@pytest.mark.parametrize("arch", ["ssamba", "ssast"])
def test_onnx_matches_pytorch(tmp_path, arch):
    ort = pytest.importorskip("onnxruntime")
    model = tiny(arch, num_classes=5).eval()
    x = torch.randn(3, FRAMES, 128)
    with torch.no_grad():
        before = model(x)
    result = export_model(model, tmp_path / "m.onnx")
    assert result.checked_with == "onnxruntime" and result.max_abs_diff <= 1e-4
    assert result.scan == ("reference" if arch == "ssamba" else None)
    # independently: another batch size through onnxruntime vs PyTorch
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"fbank": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), before, rtol=0, atol=1e-4)
    with torch.no_grad():  # the model still works as before (same backend, same numbers)
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert "SSAMBA_SCAN" not in os.environ


def test_torchscript_tokens(tmp_path):
    model = tiny("ssamba")
    model.train()
    result = export_model(model, tmp_path / "m.pt", "torchscript", output="tokens")
    assert result.scan == "torch" and result.max_abs_diff <= 1e-4
    assert model.training  # the mode is restored
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(1, FRAMES, 128)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.forward_features(x), rtol=0, atol=1e-4)


def test_cannot_export_says_why(tmp_path, monkeypatch):
    model = tiny("ssast")

    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::foo'\n to ONNX is not supported")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(UsageError) as err:
        export_model(model, tmp_path / "m.onnx", check=False)
    assert str(err.value) == (
        "cannot export to onnx: RuntimeError: Exporting the operator 'aten::foo' to ONNX is "
        "not supported"
    )
    assert not (tmp_path / "m.onnx").exists()  # nothing half-written
    with pytest.raises(UsageError, match="format must be one of onnx, torchscript"):
        export_model(model, tmp_path / "m.x", "tflite")


def test_cli(tmp_path, capsys):
    folder = tiny("ssast").save_pretrained(tmp_path / "model")
    out = tmp_path / "model.pt"
    assert main(["export", "-c", str(folder), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exported ssast" in text and "(torchscript)" in text and "torch.jit.load" in text
    assert main(["export", "-c", str(folder), "-o", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
