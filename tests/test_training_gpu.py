"""The training path on a CUDA device (skipped without one; benchmarks/gpu_check.sh runs it):
fused AdamW, bf16 and fp16 autocast with loss scaling, pinned memory, and a loss that stays
finite and falls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssamba.configs import PretrainConfig
from ssamba.pretrain import pretrain
from ssamba.training import read_metrics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu_audio")
    rng = np.random.default_rng(0)
    t = np.arange(int(1.0 * 16000)) / 16000
    for i in range(32):
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) + 0.02 * rng.standard_normal(
            t.size
        )
        sf.write(folder / f"{i:02d}.wav", x.astype(np.float32), 16000)
    return folder


@pytest.mark.parametrize(
    ("model", "precision"),
    [
        ("ssamba_tiny", "bf16"),
        ("ssamba_tiny", "fp16"),
        ("ssamba_tiny", "fp32"),
        ("ssast_tiny", "bf16"),
    ],
)
def test_pretraining_on_cuda(clips, tmp_path, model, precision, monkeypatch):
    made = []
    original = torch.optim.AdamW.__init__

    def spy(self, params, **kw):
        made.append(kw.get("fused"))
        original(self, params, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", spy)
    cfg = PretrainConfig(
        out=str(tmp_path / "run"), model=model, train=str(clips), target_length=96,
        batch_size=8, warmup_steps=2, lr=1e-3, progress=False, log_every=1, max_steps=12,
        precision=precision, model_overrides={"depth": 2},
    )  # fmt: skip
    pretrain(cfg, device="cuda")
    assert made == [True]  # fused AdamW on CUDA
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    loss = [r["loss"] for r in records]
    assert len(loss) == 12 and all(np.isfinite(loss))
    assert np.mean(loss[-3:]) < np.mean(loss[:3])
