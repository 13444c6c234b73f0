"""Convert an official SSAMBA/SSAST checkpoint into a ``save_pretrained`` folder, and verify it.

    ssamba convert SSAMBA_tiny_400.pth models/ssamba_tiny/ [--tstride 10 --input-tdim 512 ...]

Steps: load the ``.pth`` with :func:`ssamba.load_model` (kind, size, depth and pretraining input
size read from the weights; ``--fstride/--tstride/--input-tdim/--num-classes`` as overrides, the
positional embedding adapted by the official rule), write ``config.json``,
``model.safetensors`` and ``preprocessor_config.json`` with ``save_pretrained``, load the folder
back and check that (1) every tensor of the state_dict is bit-identical and (2) the outputs on a
seeded random input match: ``forward_features`` and ``forward`` always, and both pretraining
objectives (on a seeded mask) when the model has its pretraining heads at stride 16. The largest
absolute difference is reported; it must not exceed ``atol`` (default 0: the same weights and the
same code give the same numbers on one machine).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import torch

from ssamba.embeddings import _command_error

__all__ = ["add_convert_parser", "config_summary", "convert_checkpoint", "run_convert"]

OVERRIDES = ("fstride", "tstride", "input_tdim", "num_classes")


def _outputs(model, fbank: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    cfg = model.config
    out = {}
    with torch.inference_mode():
        out["forward_features"] = model.forward_features(fbank)
        out["forward"] = model(fbank)
        if cfg.pretrain_heads and cfg.fstride == 16 and cfg.tstride == 16:
            f_dim, t_dim = cfg.grid
            n = f_dim * t_dim
            m = max(1, min(n - 2, n // 2))
            mask = model.draw_mask(fbank, m, rng=random.Random(seed))
            acc, nce = model.forward_pretrain(fbank, task="mpc", mask_index=mask)
            out["mpc.acc"] = torch.as_tensor(acc)
            out["mpc.nce"] = torch.as_tensor(nce)
            out["mpg.mse"] = torch.as_tensor(model.forward_pretrain(fbank, "mpg", mask_index=mask))
    return out


def convert_checkpoint(
    source: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    batch: int = 2,
    atol: float = 0.0,
    overwrite: bool = False,
    **overrides,
) -> dict[str, Any]:
    """Convert ``source`` into ``out_dir`` and verify the round trip; returns a report dict
    (``config``, ``num_parameters``, ``max_abs_diff`` per output, ``ok``).

    Raises ``ValueError`` when ``out_dir`` already holds a model (unless ``overwrite``) or when
    the reloaded model differs by more than ``atol``.
    """
    from ssamba.checkpoints import CONFIG_FILE, load_model, save_pretrained

    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise ValueError(f"{source}: no such checkpoint")
    if out_dir.exists() and (out_dir / CONFIG_FILE).exists() and not overwrite:
        raise ValueError(f"{out_dir} already holds a model (pass overwrite=True / --overwrite)")
    if out_dir.exists() and source.resolve() == out_dir.resolve():
        raise ValueError("the output folder must differ from the source")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    model = load_model(source, **overrides).eval()
    save_pretrained(model, out_dir)
    reloaded = load_model(out_dir).eval()

    original_state, new_state = model.state_dict(), reloaded.state_dict()
    differing = sorted(
        k
        for k in original_state
        if k not in new_state
        or original_state[k].shape != new_state[k].shape
        or not torch.equal(original_state[k], new_state[k])
    )
    differing += sorted(set(new_state) - set(original_state))
    if model.config != reloaded.config:
        raise ValueError(f"{out_dir}: the reloaded config differs from the converted one")

    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    fbank = torch.randn(batch, cfg.input_tdim, cfg.num_mel_bins, generator=gen)
    a, b = _outputs(model, fbank, seed), _outputs(reloaded, fbank, seed)
    diffs = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a}
    ok = not differing and all(d <= atol for d in diffs.values())
    report = {
        "source": str(source),
        "out_dir": str(out_dir),
        "config": dict(cfg.__dict__),
        "num_parameters": model.num_parameters(),
        "state_dict_differs": differing,
        "max_abs_diff": diffs,
        "atol": atol,
        "ok": ok,
    }
    if not ok:
        what = f"tensors {', '.join(differing[:5])}" if differing else f"outputs {diffs}"
        raise ValueError(f"{out_dir}: the reloaded model does not match the converted one: {what}")
    return report


def config_summary(report: dict[str, Any]) -> str:
    cfg = report["config"]
    f_dim = (cfg["num_mel_bins"] - 16) // cfg["fstride"] + 1
    t_dim = (cfg["input_tdim"] - 16) // cfg["tstride"] + 1
    kind = "bidirectional Mamba" if cfg["arch"] == "ssamba" else "ViT"
    heads = [] if cfg["arch"] == "ssamba" else [f"{cfg['num_heads']} heads"]
    lines = [
        f"converted {report['source']} -> {report['out_dir']}",
        f"  model:     {cfg['arch']} ({kind}), width {cfg['embed_dim']}, depth {cfg['depth']}"
        + "".join(f", {h}" for h in heads)
        + f", {report['num_parameters']:,} parameters",
        f"  input:     {cfg['num_mel_bins']} mel bins x {cfg['input_tdim']} frames, stride "
        f"{cfg['fstride']}x{cfg['tstride']} -> {f_dim}x{t_dim} patches "
        f"(pretrained on {cfg['pretrain_fdim']}x{cfg['pretrain_tdim']})",
        f"  heads:     {'pretraining (mpc, mpg)' if cfg['pretrain_heads'] else 'no pretraining'}"
        f"; {cfg['num_classes'] or 'no'} classification classes (pool: {cfg['pool']})",
        f"  front end: fbank normalised with mean {cfg['norm_mean']}, std {cfg['norm_std']}",
        "  check:     state_dict bit-identical; max abs diff "
        + ", ".join(f"{k} {v:.3g}" for k, v in report["max_abs_diff"].items()),
    ]
    return "\n".join(lines)


def add_convert_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert an official .pth into a save_pretrained folder (and verify it)",
        description=(
            "Load an official SSAMBA/SSAST checkpoint, save it as config.json + "
            "model.safetensors, reload it and check that the weights and the outputs on a seeded "
            "random input are identical. Prints the model's configuration."
        ),
    )
    p.add_argument("checkpoint", metavar="OFFICIAL.pth", help="official state_dict file")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write")
    p.add_argument("--fstride", type=int, help="frequency patch stride (default: from weights)")
    p.add_argument("--tstride", type=int, help="time patch stride (default: from weights)")
    p.add_argument("--input-tdim", type=int, metavar="T", help="input frames (pos. embedding)")
    p.add_argument("--num-classes", type=int, metavar="C", help="classification head size")
    p.add_argument("--seed", type=int, default=0, help="seed of the check input (0)")
    p.add_argument("--atol", type=float, default=0.0, help="allowed max abs difference (0)")
    p.add_argument("--overwrite", action="store_true", help="replace a model in OUT_DIR")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from ssamba.checkpoints import CheckpointError

    overrides = {k: getattr(args, k, None) for k in OVERRIDES}
    if not Path(args.checkpoint).is_file():
        raise _command_error(f"{args.checkpoint}: no such checkpoint file")
    try:
        report = convert_checkpoint(
            args.checkpoint,
            args.out_dir,
            seed=args.seed,
            atol=args.atol,
            overwrite=args.overwrite,
            **overrides,
        )
    except (CheckpointError, ValueError) as err:
        raise _command_error(str(err)) from None
    print(config_summary(report))
    return 0
