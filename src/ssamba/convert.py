"""Convert an official SSAMBA/SSAST checkpoint into a ``save_pretrained`` folder, and verify it.

    report = convert_checkpoint("SSAMBA_tiny_400.pth", "models/ssamba_tiny/", tstride=10)
    ssamba convert -c SSAMBA_tiny_400.pth -o models/ssamba_tiny/ [--tstride 10 --input-tdim 512 ...]
    ssamba convert -c hf://ORG/NAME/SSAMBA_tiny_400.pth -o models/ssamba_tiny/   # from the Hub

The folder is also a transformers model (``ssamba.transformers``: ``AutoModel``,
``AutoModelForAudioClassification``, ``pipeline``), since ``config.json`` carries its
``model_type``.

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

import random
from pathlib import Path
from typing import Any

import torch

from ssamba.checkpoints import (
    CONFIG_FILE,
    is_hub_file,
    load_model,
    resolve_checkpoint,
    save_pretrained,
)
from ssamba.errors import CheckpointError, UsageError

__all__ = ["OVERRIDES", "convert_checkpoint"]

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

    Raises :class:`~ssamba.errors.UsageError` when ``out_dir`` already holds a model (unless
    ``overwrite``) and :class:`~ssamba.errors.CheckpointError` when the source cannot be read or
    the reloaded model differs by more than ``atol``.
    """
    name = str(source)
    source, out_dir = Path(resolve_checkpoint(name) if is_hub_file(name) else source), Path(out_dir)
    if not source.exists():
        raise CheckpointError(f"{source}: no such checkpoint")
    if out_dir.exists() and (out_dir / CONFIG_FILE).exists() and not overwrite:
        raise UsageError(f"{out_dir} already holds a model (pass overwrite=True / --overwrite)")
    if out_dir.exists() and source.resolve() == out_dir.resolve():
        raise UsageError("the output folder must differ from the source")
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
        raise CheckpointError(f"{out_dir}: the reloaded config differs from the converted one")

    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    fbank = torch.randn(batch, cfg.input_tdim, cfg.num_mel_bins, generator=gen)
    a, b = _outputs(model, fbank, seed), _outputs(reloaded, fbank, seed)
    diffs = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a}
    ok = not differing and all(d <= atol for d in diffs.values())
    report = {
        "source": name,
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
        raise CheckpointError(
            f"{out_dir}: the reloaded model does not match the converted one: {what}"
        )
    return report
