"""The learning-rate schedule against torch's own schedulers, which the official loops use."""

from __future__ import annotations

import random

import pytest
import torch

from ssamba.training import LRSchedule


def _torch_optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def _plateau_sequences():
    rng = random.Random(0)
    walks = []
    for _ in range(20):  # slow noisy climbs: stalls, ties and gains below the 1e-4 threshold
        value, walk = rng.uniform(-0.5, 0.5), []
        for _ in range(40):
            value += rng.choice([0.0, 0.0, 1e-6, -0.01, 0.02, 5e-5 * abs(value)])
            walk.append(value)
        walks.append(walk)
    return walks


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_plateau_halving_matches_torch_reduce_on_plateau(patience):
    for metrics in _plateau_sequences():
        ours = LRSchedule(mode="plateau", factor=0.5, patience=patience)
        opt = _torch_optimizer()
        theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=0.5, patience=patience
        )
        for metric in metrics:
            if opt.param_groups[0]["lr"] < 1e-6:
                break  # torch stops halving below its eps (1e-8) of absolute lr; we never do
            ours.observe(metric)
            theirs.step(metric)
            assert ours.scale == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=0)


def test_plateau_halves_on_the_third_stalled_evaluation_with_patience_2():
    schedule = LRSchedule(mode="plateau", factor=0.5, patience=2)
    scales = []
    for metric in (0.5, 0.4, 0.4, 0.4, 0.4):
        schedule.observe(metric)
        scales.append(schedule.scale)
    assert scales == [1.0, 1.0, 1.0, 0.5, 0.5]
    # a gain under the relative threshold (1e-4 of the best) is no improvement
    schedule = LRSchedule(mode="plateau", factor=0.5, patience=0)
    schedule.observe(0.5)
    schedule.observe(0.5 * (1 + 5e-5))
    assert schedule.scale == 0.5


def test_milestones_match_torch_multistep_lr():
    milestones = [15, 25, 35, 45]  # the official AS-20K script
    ours = LRSchedule(mode="milestones", factor=0.75, milestones=milestones)
    opt = _torch_optimizer()
    theirs = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.75)
    for epoch in range(50):
        assert ours.lr_factor(10**6) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        ours.end_epoch(epoch)
        opt.step()
        theirs.step()
    assert ours.scale == pytest.approx(0.75**4)


def test_state_round_trip_keeps_the_plateau_count():
    a = LRSchedule(mode="plateau", patience=2)
    for metric in (0.3, 0.2, 0.1):
        a.observe(metric)
    b = LRSchedule(mode="plateau", patience=2)
    b.load_state_dict(a.state_dict())
    a.observe(0.1)
    b.observe(0.1)
    assert a.scale == b.scale == 0.5
