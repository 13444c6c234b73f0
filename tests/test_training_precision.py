"""The GPU training path, as far as a CPU can run it: fp16 with loss scaling (and its exact
resume), DDP's unused-parameter search only when a task needs it, the process group ended by the
job that started it, and run.json naming the scan kernel."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.distributed as torch_dist

import ssamba
from ssamba.configs import PretrainConfig
from ssamba.pretrain import MaskedPatchObjective, PretrainTask, clip_masks, pretrain
from ssamba.training import Distributed, ends_process_group, read_metrics
from ssamba.training.loop import distribute


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("precision_audio")
    rng = np.random.default_rng(0)
    t = np.arange(int(0.7 * 16000)) / 16000
    for i in range(16):
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) + 0.02 * rng.standard_normal(
            t.size
        )
        sf.write(folder / f"{i:02d}.wav", x.astype(np.float32), 16000)
    return folder


def config(out, train, **kw) -> PretrainConfig:
    base = dict(
        out=str(out),
        model="ssamba_tiny",
        train=str(train),
        target_length=48,
        batch_size=4,
        warmup_steps=1,
        lr=1e-3,
        progress=False,
        log_every=1,
        model_overrides={"depth": 2},
    )
    base.update(kw)
    return PretrainConfig(**base)


def losses(out: Path) -> dict[int, float]:
    return {
        r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"
    }


def test_fp16_trains_with_a_loss_scale_and_resumes_exactly(clips, tmp_path):
    pretrain(config(tmp_path / "full", clips, precision="fp16", max_steps=4, save_every=2))
    full = losses(tmp_path / "full")
    assert sorted(full) == [1, 2, 3, 4] and all(np.isfinite(list(full.values())))
    state = torch.load(
        tmp_path / "full" / "checkpoints" / "step_00000004" / "trainer_state.pt", weights_only=True
    )
    assert state["scaler"]["scale"] > 0  # the loss scale is part of the exact-resume state

    pretrain(config(tmp_path / "cut", clips, precision="fp16", max_steps=2, save_every=2))
    pretrain(config(tmp_path / "cut", clips, precision="fp16", max_steps=4, save_every=2,
                    resume=True))  # fmt: skip
    resumed = losses(tmp_path / "cut")
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), step


def test_fp16_and_fp32_start_from_the_same_loss(clips, tmp_path):
    """Autocast changes the arithmetic, not the task: the first losses agree closely."""
    pretrain(config(tmp_path / "a", clips, max_steps=1))
    pretrain(config(tmp_path / "b", clips, precision="fp16", max_steps=1))
    assert losses(tmp_path / "b")[1] == pytest.approx(losses(tmp_path / "a")[1], rel=2e-2)


def test_run_json_names_the_scan_kernel(clips, tmp_path):
    pretrain(config(tmp_path / "run", clips, max_steps=1))
    settings = json.loads((tmp_path / "run" / "run.json").read_text())
    assert settings["scan_backend"] == ssamba.ops.resolve_backend(torch.device("cpu"))


@pytest.mark.parametrize(("objective", "unused"), [("joint", False), ("mpc", True), ("mpg", True)])
def test_only_a_single_objective_leaves_parameters_unused(objective, unused):
    model = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=48)
    task = PretrainTask(config("unused", "x", objective=objective), model)
    assert task.unused_parameters is unused


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_rank_group():
    """A real (gloo, one rank) process group, so DDP wraps and reduces as under torchrun."""
    torch_dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    yield Distributed(rank=0, world_size=1)
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def _two_steps(module) -> None:
    fbank = torch.randn(2, 48, 128)
    masks = clip_masks([0, 1], (8, 3), 8, "cluster", "k")
    for _ in range(2):
        loss, _ = module(fbank, masks, masks)
        loss.backward()


def test_ddp_searches_for_unused_parameters_only_when_asked(one_rank_group):
    dist = Distributed(rank=0, world_size=2)  # "enabled": distribute() wraps in DDP
    torch.manual_seed(0)
    model = ssamba.create_model("ssamba_tiny", depth=2, input_tdim=48)
    _two_steps(distribute(MaskedPatchObjective(model, "mpc", 10.0), dist, unused=True))
    _two_steps(distribute(MaskedPatchObjective(model, "joint", 10.0), dist, unused=False))
    with pytest.raises(RuntimeError):  # the check that proves the flag matters
        _two_steps(distribute(MaskedPatchObjective(model, "mpc", 10.0), dist, unused=False))


def test_a_job_ends_the_process_group_it_started_and_only_that():
    @ends_process_group
    def job(start: bool):
        if start:
            torch_dist.init_process_group(
                "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
            )
        return torch_dist.is_initialized()

    assert job(True) and not torch_dist.is_initialized()
    torch_dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        assert job(False) and torch_dist.is_initialized()  # the caller's group stays
    finally:
        torch_dist.destroy_process_group()
