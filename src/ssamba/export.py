"""Export a model to ONNX or TorchScript, checked against PyTorch.

Python::

    result = ssamba.export_model("runs/ft/best", "model.onnx")     # or a loaded AudioModel
    result.max_abs_diff                  # onnxruntime (or the TorchScript module) vs PyTorch

Command line: ``ssamba export -c CKPT -o model.onnx [--format onnx|torchscript]``.

The exported graph takes a normalised fbank ``(batch, frames, 128)`` (see
:class:`ssamba.FeatureExtractor`) with any batch size and the frames fixed at export (default:
the model's ``input_tdim``), and returns the model's output: logits with a classification head,
else the pooled embedding (``output="tokens"``: the patch tokens, (batch, patches, dim)).

SSAMBA's selective scan is traced through a plain-torch backend, chosen for the export only (the
model's own backend choice is left as it was):

- TorchScript: the chunked parallel scan (``ops/scan_torch.py``);
- ONNX: the reference loop over time (``ops/scan.py``), since the parallel scan's traced graph
  fails onnxruntime's shape inference. The loop is unrolled into the graph: export takes about a
  minute per layer pair at 1024 frames on one CPU core, so shorter ``frames`` export much faster.

SSAST exports as it is (its attention is standard ONNX).
"""

from __future__ import annotations

import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ssamba.checkpoints import load_model
from ssamba.errors import UsageError
from ssamba.fileio import atomic_write
from ssamba.models.model import AudioModel

__all__ = ["FORMATS", "OUTPUTS", "ExportResult", "export_model"]

FORMATS = ("onnx", "torchscript")
OUTPUTS = ("default", "tokens")
TOLERANCE = 1e-4  # largest absolute difference to PyTorch accepted by the check
ONNX_OPSET = 17
# The scan backend traced for each format (see the module docstring).
_SCAN_FOR = {"onnx": "reference", "torchscript": "torch"}


@dataclass
class ExportResult:
    path: Path
    format: str
    arch: str
    scan: str | None  # the scan backend traced (SSAMBA), None for SSAST
    seconds: float
    checked_with: str | None  # "onnxruntime" / "torch.jit.load", None when not checked
    max_abs_diff: float | None
    note: str = ""  # why the output was not checked, when it was not


class _Exported(nn.Module):
    """The exported function: fbank -> the model's output (or its patch tokens)."""

    def __init__(self, model: AudioModel, output: str):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        if self.output == "tokens":
            return self.model.forward_features(fbank)
        return self.model(fbank)


@contextmanager
def _traced_scan(backend: str | None):
    """SSAMBA_SCAN set to ``backend`` while tracing; the previous value restored after."""
    if backend is None:
        yield
        return
    before = os.environ.get("SSAMBA_SCAN")
    os.environ["SSAMBA_SCAN"] = backend
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SSAMBA_SCAN", None)
        else:
            os.environ["SSAMBA_SCAN"] = before


def export_model(
    model: AudioModel | str | Path,
    path: str | Path,
    format: str = "onnx",
    *,
    frames: int | None = None,
    batch: int = 2,
    output: str = "default",
    check: bool = True,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Write ``model`` (an AudioModel, or anything :func:`ssamba.load_model` accepts) to
    ``path`` as ONNX or TorchScript; with ``check``, run the file on a random batch of another
    size and compare it with PyTorch (a UsageError beyond ``tolerance``).

    A model that cannot be exported raises a UsageError that says why, in one line."""
    if format not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if output not in OUTPUTS:
        raise UsageError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if isinstance(model, (str, Path)):
        model = load_model(model)
    cfg = model.config
    frames = frames or cfg.input_tdim
    if frames < 16 or batch < 1:
        raise UsageError(f"frames must be >= 16 and batch >= 1, got {frames} and {batch}")
    scan = _SCAN_FOR[format] if cfg.arch == "ssamba" else None
    device = next(model.parameters()).device
    was_training = model.training
    wrapper = _Exported(model, output).eval()  # eval throughout: the exporter restores modes
    example = torch.randn(batch, frames, cfg.num_mel_bins, device=device)
    start = time.perf_counter()
    try:
        with _traced_scan(scan), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python-level branches
            _write(wrapper, example, Path(path), format)
        seconds = time.perf_counter() - start
        result = ExportResult(Path(path), format, cfg.arch, scan, seconds, None, None)
        if check:
            _check(wrapper, result, frames, batch + 1, device, tolerance)
    finally:
        model.train(was_training)
    return result


def _write(wrapper: nn.Module, example: torch.Tensor, path: Path, format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if format == "torchscript":
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
            atomic_write(path, lambda tmp: torch.jit.save(traced, str(tmp)))
        else:
            atomic_write(path, lambda tmp: _onnx(wrapper, example, tmp))
    except UsageError:
        raise
    except Exception as err:  # the exporters raise many types; the reason is what matters
        reason = " ".join(str(err).split())[:300]
        raise UsageError(f"cannot export to {format}: {type(err).__name__}: {reason}") from None


def _onnx(wrapper: nn.Module, example: torch.Tensor, tmp: Path) -> None:
    torch.onnx.export(
        wrapper,
        (example,),
        str(tmp),
        input_names=["fbank"],
        output_names=["output"],
        dynamic_axes={"fbank": {0: "batch"}, "output": {0: "batch"}},
        opset_version=ONNX_OPSET,
        dynamo=False,  # the TorchScript-based exporter: no onnxscript needed
    )


def _check(wrapper, result: ExportResult, frames, batch, device, tolerance) -> None:
    """Run the exported file on a batch of another size; compare with PyTorch."""
    x = torch.randn(batch, frames, wrapper.model.config.num_mel_bins, device=device)
    with torch.no_grad():
        expected = wrapper(x).float().cpu()
    if result.format == "torchscript":
        loaded = torch.jit.load(str(result.path), map_location=device)
        with torch.no_grad():
            got = loaded(x).float().cpu()
        result.checked_with = "torch.jit.load"
    else:
        try:
            import onnxruntime  # optional dependency: ssamba[export]
        except ImportError:
            result.note = "not checked: onnxruntime is not installed (pip install 'ssamba[export]')"
            return
        session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"fbank": x.cpu().numpy().astype(np.float32)})[0])
        result.checked_with = "onnxruntime"
    result.max_abs_diff = float((got - expected).abs().max())
    if not result.max_abs_diff <= tolerance:
        raise UsageError(
            f"{result.path}: the exported model differs from PyTorch by {result.max_abs_diff:.3g}"
            f" (> {tolerance:g}) under {result.checked_with}"
        )
