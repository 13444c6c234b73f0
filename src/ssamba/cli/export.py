"""``ssamba export``: a model as an ONNX or TorchScript file, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

from ssamba.cli.common import (
    add_checkpoint,
    add_command,
    add_overwrite,
    deprecated_alias,
    target_frames,
)
from ssamba.errors import UsageError

FORMATS = ("onnx", "torchscript")  # as ssamba.export.FORMATS (that module imports torch)
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "export",
        help="export a model to ONNX or TorchScript (checked against PyTorch)",
        description=(
            "Write a model as an ONNX or TorchScript file taking a normalised fbank (batch, "
            "frames, 128), any batch size, the frames fixed at export. The file is run on a "
            "random batch and compared with PyTorch (onnxruntime for ONNX, when installed). "
            "SSAMBA's scan is traced through plain torch (the reference loop for ONNX: about a "
            "minute per layer pair at 1024 frames; the parallel scan for TorchScript)."
        ),
    )
    add_checkpoint(p)
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="file format (default: from the --out suffix: .onnx -> onnx, .pt/.ts -> "
        "torchscript; else onnx)",
    )
    p.add_argument(
        "--target-length",
        dest="frames",
        type=target_frames,
        metavar="FRAMES",
        help="frames per clip (10 ms each) the file takes (default: the model's input_tdim)",
    )
    deprecated_alias(p, "--frames", "--target-length", dest="frames", type=target_frames)
    p.add_argument(
        "--returns",
        dest="output",
        choices=("default", "tokens"),
        default="default",
        help="what the file returns: default: logits with a classification head, else the "
        "pooled embedding; tokens: the patch tokens",
    )
    deprecated_alias(p, "--output", "--returns", dest="output", choices=("default", "tokens"))
    p.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    p.add_argument(
        "--device", help="cpu, cuda or cuda:N (default: cpu: the export is traced there)"
    )
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ssamba.cli.common import load_checkpoint
    from ssamba.export import export_model

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out}: output exists; pass --overwrite to replace it")
    if out.is_dir():
        raise UsageError(f"{out}: a folder; --out names the file to write")
    fmt = args.format or SUFFIXES.get(out.suffix.lower(), "onnx")
    model = load_checkpoint(args.checkpoint, device=args.device or "cpu")
    result = export_model(
        model, out, fmt, frames=args.frames, output=args.output, check=not args.no_check
    )
    scan = f", scan traced through the {result.scan} backend" if result.scan else ""
    print(f"exported {result.arch} to {result.path} ({fmt}{scan}) in {result.seconds:.1f} s")
    if result.checked_with:
        print(f"checked with {result.checked_with}: max |difference| to PyTorch "
              f"{result.max_abs_diff:.2e}")  # fmt: skip
    elif result.note:
        print(result.note)
    return 0
