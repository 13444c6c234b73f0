"""The teacher objective (``ssamba pretrain --objective teacher``): masks, targets, the EMA
update, where gradients go, exact resume (one process and under torchrun) and the released
student model. Each piece is checked against a plain computation written out here."""

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ssamba
from ssamba.cli import main
from ssamba.configs import PretrainConfig
from ssamba.models.patches import inverse_block_mask
from ssamba.pretrain import TeacherTask, pretrain
from ssamba.teacher import (
    INSTANCE_NORM_EPS,
    STUDENT_ONLY,
    ema_decay_at,
    ema_update,
    make_teacher,
    teacher_targets,
    utterance_targets,
    view_masks,
)
from ssamba.training import read_metrics
from test_pretrain import chirps

GRID = (8, 4)  # 64 frames


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_audio")
    return chirps(root / "train", 16, 0), chirps(root / "valid", 4, 1)


def config(out, train, valid=None, **kw):
    base = dict(
        out=str(out),
        model="ssamba_tiny",
        train=str(train),
        valid=None if valid is None else str(valid),
        target_length=64,
        batch_size=4,
        warmup_steps=2,
        lr=1e-3,
        progress=False,
        log_every=1,
        workers=0,
        objective="teacher",
        masks_per_clip=2,
        ema_decay=0.9,
        ema_end_decay=0.99,
        ema_anneal_steps=4,
        model_overrides={"depth": 2, "drop_path": 0.0},
    )
    base.update(kw)
    return PretrainConfig(**base)


def tiny(arch="ssamba_tiny", depth=2):
    torch.manual_seed(0)
    return ssamba.create_model(
        arch, depth=depth, input_tdim=64, pretrain_heads=True, fstride=16, tstride=16
    ).train()


def task_for(model, **kw):
    cfg = config("x", "x", model=model.config.arch + "_tiny", **kw)
    return TeacherTask(cfg, model)


def train_records(out):
    return [r for r in read_metrics(Path(out) / "metrics.jsonl") if r["kind"] == "train"]


def trainer_state(out):
    latest = (Path(out) / "latest").read_text().strip()
    return torch.load(Path(out) / latest / "trainer_state.pt", weights_only=True)


# ---------------------------------------------------------------------------- masks
def squares(grid, block):
    """Every block x block square of the grid (centred on each patch, cut at the edges)."""
    f_dim, t_dim = grid
    half = block // 2
    out = []
    for cf in range(f_dim):
        for ct in range(t_dim):
            out.append(
                {
                    f * t_dim + t
                    for f in range(max(cf - half, 0), min(cf - half + block, f_dim))
                    for t in range(max(ct - half, 0), min(ct - half + block, t_dim))
                }
            )
    return out


def off_square(visible: set[int], grid, block) -> int:
    """Visible patches that lie in no wholly visible square."""
    covered = set().union(*(s for s in squares(grid, block) if s <= visible))
    return len(visible - covered)


@pytest.mark.parametrize("grid, ratio, block", [((8, 12), 0.8, 3), ((8, 64), 0.7, 5)])
def test_inverse_block_masks_hide_the_exact_count_and_keep_visible_squares(grid, ratio, block):
    n = grid[0] * grid[1]
    hidden = round(ratio * n)
    for seed in range(20):
        mask = inverse_block_mask(grid, hidden, block, random.Random(seed))
        assert len(mask) == hidden and mask == sorted(set(mask))
        assert all(0 <= i < n for i in mask)
        visible = set(range(n)) - set(mask)
        # visible = whole squares, but for the last one, cut short at the count
        assert off_square(visible, grid, block) <= block * block - 1
    # the check can fail: uniformly random patches at the same ratio are no union of squares
    rng = random.Random(0)
    scattered = set(rng.sample(range(n), n - hidden))
    assert off_square(scattered, grid, block) > block * block


def test_view_masks_depend_on_clip_view_and_key_only():
    masks = view_masks([3, 7], GRID, 25, 3, 3, "0:5:0")
    assert masks.shape == (2, 3, 25)
    again = view_masks([7], GRID, 25, 3, 3, "0:5:0")
    assert torch.equal(again[0], masks[1])  # not the clip's place in the batch
    assert not torch.equal(masks[0, 0], masks[0, 1])  # views differ
    assert not torch.equal(view_masks([3], GRID, 25, 3, 3, "0:6:0")[0], masks[0])  # steps too
    with pytest.raises(ValueError, match="one must be hidden and one visible"):
        inverse_block_mask(GRID, 32, 3, random.Random(0))


def test_a_mask_ratio_that_hides_every_patch_is_one_clear_line(audio, tmp_path, capsys):
    args = ["pretrain", "--objective", "teacher", "--depth", "2", "--train", str(audio[0])]
    args += ["-o", str(tmp_path / "r"), "--target-length", "64", "--mask-ratio", "0.99"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --mask-ratio 0.99 hides 32 of the 32 patches of a 64-frame clip; at least one "
        "must be hidden and one visible: change --mask-ratio or --target-length"
    ]


# ---------------------------------------------------------------------------- student tokens
@pytest.mark.parametrize("arch", ["ssamba_tiny", "ssast_tiny"])
def test_student_views_match_the_model_tokens(arch):
    model = tiny(arch)
    fbank = torch.randn(2, 64, 128)
    masks = view_masks([0, 1], GRID, 20, 2, 3, "k")
    n_cls = model.config.num_class_tokens
    full, _ = model.embed_tokens(fbank)
    tokens, visible = model.embed_views(fbank, masks, drop=False)
    assert visible is None and tokens.shape == (4, n_cls + 32, model.config.embed_dim)
    dropped, visible = model.embed_views(fbank, masks, drop=True)
    assert dropped.shape == (4, n_cls + 12, model.config.embed_dim)
    for b in range(2):
        for m in range(2):
            row = b * 2 + m
            in_place, _ = model.embed_tokens(fbank[b : b + 1], masks[b, m : m + 1])
            assert torch.equal(tokens[row], in_place[0])  # as the paper's masking
            kept = sorted(set(range(32)) - set(masks[b, m].tolist()))
            assert visible[row].tolist() == kept
            expected = full[b, list(range(n_cls)) + [n_cls + i for i in kept]]
            assert torch.equal(dropped[row], expected)  # each patch keeps its position


# ---------------------------------------------------------------------------- targets
def naive_instance_norm(y: np.ndarray) -> np.ndarray:
    """(N, E) -> every channel normalised over the N positions, written out."""
    out = np.empty_like(y)
    for c in range(y.shape[1]):
        col = y[:, c]
        mean = sum(col) / len(col)
        var = sum((v - mean) ** 2 for v in col) / len(col)
        out[:, c] = (col - mean) / math.sqrt(var + INSTANCE_NORM_EPS)
    return out


def test_targets_are_the_mean_of_the_top_k_instance_normalised_layers():
    torch.manual_seed(0)
    layers = [torch.randn(2, 1 + 6, 5) * (i + 1) + i for i in range(3)]  # one class token
    got = teacher_targets(layers, 1, 2).double().numpy()
    for b in range(2):
        top = [layers[i][b, 1:].double().numpy() for i in (1, 2)]
        want = (naive_instance_norm(top[0]) + naive_instance_norm(top[1])) / 2
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)
    # k beyond the depth: every layer
    every = teacher_targets(layers, 1, 8)
    torch.testing.assert_close(every, teacher_targets(layers, 1, 3))
    # why the clip's target is built otherwise: these have zero mean over the clip, always
    assert every.mean(dim=1).abs().max() < 1e-5
    clip = utterance_targets(layers, 1, 2).double().numpy()
    for b in range(2):
        want = 0
        for i in (1, 2):
            y = layers[i][b, 1:].double().numpy()
            want = want + (y - y.mean(1, keepdims=True)) / np.sqrt(
                y.var(1, keepdims=True) + INSTANCE_NORM_EPS
            )
        np.testing.assert_allclose(clip[b], (want / 2).mean(0), rtol=1e-5, atol=1e-5)
    assert np.abs(clip).max() > 0.1  # a target that is not zero


def test_the_objective_takes_its_targets_from_the_teachers_top_layers():
    model = tiny(depth=4)  # two bidirectional pairs: two layer streams
    task = task_for(model, target_layers=1)
    fbank = torch.randn(2, 64, 128)
    with torch.no_grad():
        model.encoder.layers[0].mixer.out_proj.weight.mul_(3)  # student != teacher now
    per_patch, _ = task.module.targets(fbank)
    teacher = make_teacher(tiny(depth=4))  # the teacher as built: the initial weights
    with torch.no_grad():
        layers = teacher.encode(fbank, return_layers=True).layers
    assert len(layers) == 2
    torch.testing.assert_close(per_patch, teacher_targets(layers[1:], 1, 1))
    student_layers = model.eval().encode(fbank, return_layers=True).layers
    assert not torch.allclose(per_patch, teacher_targets(student_layers, 1, 1))


# ---------------------------------------------------------------------------- EMA
def test_ema_decay_schedule_and_update_match_a_hand_computation():
    assert ema_decay_at(0, 0.9, 0.99, 10) == 0.9
    assert ema_decay_at(5, 0.9, 0.99, 10) == pytest.approx(0.945)
    assert ema_decay_at(10, 0.9, 0.99, 10) == 0.99 == ema_decay_at(99, 0.9, 0.99, 10)
    student = tiny()
    teacher = make_teacher(student)
    assert not any(hasattr(teacher, name) for name in STUDENT_ONLY if name != "mlp_head")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.75)
    s = student.state_dict()
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, 0.75 * before[name] + 0.25 * s[name])


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "arch, hide", [("ssamba_tiny", "drop"), ("ssamba_tiny", "token"), ("ssast_tiny", "drop"),
                   ("ssast_tiny", "token")]
)  # fmt: skip
def test_gradients_reach_the_student_and_decoder_never_the_teacher(arch, hide):
    model = tiny(arch)
    task = task_for(model, hide_masked=hide)
    fbank = torch.randn(2, 64, 128)
    batch = {"fbank": fbank, "index": torch.arange(2)}
    loss, parts = task.compute_loss(task.module, batch, (0, 0, 0))
    assert parts["loss"] == pytest.approx(parts["frame_loss"] + parts["utterance_loss"])
    loss.backward()
    module = task.module
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    trained = [p for g in task.param_groups() for p in g["params"]]
    assert all(p.grad is not None for p in trained)  # nothing idle: DDP needs no search
    ids = {id(p) for p in trained}
    assert all(id(p) not in ids for p in module.teacher.parameters())
    assert all(id(p) in ids for p in module.decoder.parameters())
    assert (id(model.mask_embed) in ids) == (hide == "token")
    # one optimiser step, then the EMA: the teacher follows the student by the decay alone
    initial = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    torch.optim.AdamW(trained, lr=1e-2).step()
    task.after_update(0)
    s = model.state_dict()
    for name, value in module.teacher.state_dict().items():
        torch.testing.assert_close(value, 0.9 * initial[name] + 0.1 * s[name])
    assert any(not torch.equal(initial[k], v) for k, v in module.teacher.state_dict().items())


# ---------------------------------------------------------------------------- whole runs
def test_a_teacher_run_releases_the_student_in_the_model_format(audio, tmp_path):
    train, valid = audio
    out = tmp_path / "run"
    summary = pretrain(config(out, train, valid, max_steps=4, eval_every=2))
    records = train_records(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["ema_decay"] for r in records] == pytest.approx([0.9, 0.9225, 0.945, 0.9675])
    valid_records = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "valid"]
    assert len(valid_records) == 2
    assert summary["best_metric"] == min(r["loss"] for r in valid_records)
    state = trainer_state(out)
    final = ssamba.load_model(out / "final")  # the student, as any pretrained model
    weights = ssamba.load_model(out / "checkpoints" / "step_00000004").state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in final.state_dict().items())
    teacher = state["task"]["teacher"]
    assert set(teacher) < set(weights) and not any(k.startswith("cpredlayer") for k in teacher)
    assert any(not torch.equal(teacher[k], weights[k]) for k in teacher)  # the EMA lags
    # every other command reads it: embed on the command line, a classifier from it
    emb = tmp_path / "emb"
    assert (
        main(["embed", "-c", str(out / "final"), "-o", str(emb), str(valid), "--no-progress"]) == 0
    )
    assert len(list(emb.glob("*.npy"))) == 4
    classifier = ssamba.load_model(out / "final", num_classes=3, fstride=10, tstride=10)
    assert classifier(torch.randn(1, 64, 128)).shape == (1, 3)
    try:  # `ssamba plot` draws the objective's own losses
        import matplotlib  # noqa: F401
    except ImportError:
        return
    from ssamba.plots import plot_metrics

    assert plot_metrics(out).stat().st_size > 0


def test_resume_equals_an_uninterrupted_run_teacher_included(audio, tmp_path):
    train, _ = audio
    pretrain(config(tmp_path / "full", train, max_steps=6, save_every=3))
    pretrain(config(tmp_path / "cut", train, max_steps=3, save_every=3))
    pretrain(config(tmp_path / "cut", train, max_steps=6, save_every=3, resume=True))
    assert_same_runs(tmp_path / "full", tmp_path / "cut", steps=6)


def assert_same_runs(a: Path, b: Path, steps: int) -> None:
    """Bit for bit: every step's losses, the student, the teacher, the decoder, the optimiser."""
    ra, rb = train_records(a), train_records(b)
    assert [r["step"] for r in rb] == list(range(1, steps + 1))
    for x, y in zip(ra, rb, strict=True):
        assert {k: v for k, v in x.items() if k != "clips_per_s"} == {
            k: v for k, v in y.items() if k != "clips_per_s"
        }
    wa = ssamba.load_model(a / "final").state_dict()
    wb = ssamba.load_model(b / "final").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = trainer_state(a), trainer_state(b)
    for part in ("teacher", "decoder"):
        assert sa["task"][part].keys() == sb["task"][part].keys()
        assert all(torch.equal(v, sb["task"][part][k]) for k, v in sa["task"][part].items())
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], sb["optimizer"]["state"][k]["exp_avg"])


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="no torchrun",
)
def test_torchrun_resume_equals_an_uninterrupted_torchrun_run(audio, tmp_path):
    """Two processes (gloo): the teacher is the same on both ranks, is saved by rank 0 and is
    restored on both, so a run stopped and resumed is the uninterrupted one, bit for bit."""
    train, _ = audio
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["pretrain", "--objective", "teacher", "--depth", "2", "--drop-path", "0"]
    common += ["--train", str(train), "--target-length", "64", "--batch-size", "4"]
    common += ["--lr", "1e-3", "--warmup-steps", "2", "--no-progress", "--log-every", "1"]
    common += ["--masks-per-clip", "2", "--ema-decay", "0.9", "--ema-anneal-steps", "4"]
    common += ["--save-every", "2", "--workers", "0"]

    def launch(out: str, steps: int, *extra: str) -> None:
        run = subprocess.run(
            [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "ssamba", *common]
            + ["--out", str(tmp_path / out), "--max-steps", str(steps), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]

    launch("full", 4)
    launch("cut", 2)
    launch("cut", 4, "--resume")
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["world_size"] == 2
    assert_same_runs(tmp_path / "full", tmp_path / "cut", steps=4)


# ---------------------------------------------------------------------------- options, recipes
def test_teacher_options_and_recipes():
    from ssamba.cli import build_parser
    from ssamba.cli.common import ArgumentError
    from ssamba.cli.train import pretrain_config
    from ssamba.recipes.pretraining import load_pretrain_recipe

    parse = build_parser().parse_args
    base = ["pretrain", "--train", "t", "-o", "o"]
    assert pretrain_config(parse(base)).objective == "joint"  # the paper's stays the default
    cfg = pretrain_config(parse([*base, "--recipe", "ssamba_small_teacher"]))
    recipe = load_pretrain_recipe("ssamba_small_teacher")
    assert cfg.objective == "teacher" and cfg.model == "ssamba_small"
    assert {k: getattr(cfg, k) for k in recipe["pretrain"]} == recipe["pretrain"]
    assert "ours" in " ".join(recipe["notes"]) and "not the paper" in recipe["description"]
    cfg = pretrain_config(parse([*base, "--recipe", "ssamba_tiny_teacher", "--hide-masked",
                                 "token", "--masks-per-clip", "3"]))  # fmt: skip
    assert (cfg.hide_masked, cfg.masks_per_clip) == ("token", 3)
    for bad in ("--ema-decay=1.5", "--hide-masked=zero", "--mask-ratio=2"):
        with pytest.raises(ArgumentError, match=bad.split("=")[0]):
            parse([*base, bad])
