"""Our models loaded with official weights reproduce the official code's numbers (docs/model.md)."""

from pathlib import Path

import pytest
import torch

import ssamba
from ssamba.checkpoints import convert_official, load_official

GOLDEN = Path(__file__).parent / "data" / "golden"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
REL_TOL = 1e-4
CASES = ["official_ssamba_tiny_depth4", "official_ssast_tiny_depth2"]


def rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def finetune_state(folder):
    """The official fine-tuned state_dict: pretraining weights + the keys that differ."""
    state = torch.load(folder / "pretrain_state_dict.pt", weights_only=True)
    state = {k: v for k, v in state.items() if k.startswith("v.")}
    state.update(torch.load(folder / "finetune_delta.pt", weights_only=True))
    return state


@pytest.fixture(scope="module", params=CASES)
def case(request):
    folder = GOLDEN / request.param
    io = torch.load(folder / "io.pt", weights_only=True)
    return request.param, folder, io


def save_prefixed(state, path):
    torch.save({f"module.{k}": v for k, v in state.items()}, path)


@pytest.mark.parametrize("prefix", [False, True])
def test_pretraining_losses(case, prefix, tmp_path):
    name, folder, io = case
    path = folder / "pretrain_state_dict.pt"
    if prefix:  # released checkpoints are DataParallel state_dicts
        save_prefixed(torch.load(path, weights_only=True), tmp_path / "released.pth")
        path = tmp_path / "released.pth"
    model = ssamba.load_model(path)
    assert model.config.arch == name.split("_")[1]
    with torch.no_grad():
        acc, nce = model.forward_pretrain(
            io["input_pretrain"], "mpc", mask_index=io["mpc.mask_index"]
        )
        mse = model.forward_pretrain(io["input_pretrain"], "mpg", mask_index=io["mpg.mask_index"])
    assert rel_err(nce, io["mpc.nce"]) < REL_TOL
    assert rel_err(mse, io["mpg.mse"]) < REL_TOL
    assert acc.item() == pytest.approx(io["mpc.acc"].item(), abs=1e-6)


def test_masked_encoder_outputs(case):
    name, folder, io = case
    model = ssamba.load_model(folder / "pretrain_state_dict.pt")
    for task in ("mpc", "mpg"):
        with torch.no_grad():
            tokens, _ = model.embed_tokens(io["input_pretrain"], io[f"{task}.mask_index"])
            out = model.encoder(tokens)
        ref = io[f"{task}.encoder_out"] if "ssast" in name else io[f"{task}.norm_f_calls"][1]
        assert rel_err(out, ref) < REL_TOL


@pytest.mark.parametrize("prefix", [False, True])
def test_finetuning_logits(case, prefix, tmp_path):
    name, folder, io = case
    path = tmp_path / "finetuned.pth"
    state = finetune_state(folder)
    if prefix:
        save_prefixed(state, path)
    else:
        torch.save(state, path)
    model = ssamba.load_model(path, input_tdim=200)
    assert (model.config.fstride, model.config.num_classes, model.grid) == (10, 10, (12, 19))
    with torch.no_grad():
        enc = model.encode(io["input_finetune"])
        logits_mean = model.mlp_head(model.pool(enc))
        model.config.pool = "cls"
        logits_cls = model.mlp_head(model.pool(enc))
    assert rel_err(logits_mean, io["ft_avgtok"]) < REL_TOL
    assert rel_err(logits_cls, io["ft_cls"]) < REL_TOL
    ref = io["ft.encoder_out"] if "ssast" in name else io["ft_avgtok.norm_f_calls"][1]
    ours = torch.cat([enc.class_tokens, enc.patch_tokens], dim=1)
    assert rel_err(ours, ref) < REL_TOL


def test_pretraining_checkpoint_to_finetuning_model(case):
    """A stride-10 classifier from pretraining weights: pos_embed resized as officially."""
    name, folder, io = case
    model = ssamba.load_model(
        folder / "pretrain_state_dict.pt", fstride=10, tstride=10, input_tdim=200, num_classes=10
    )
    official = torch.load(folder / "finetune_delta.pt", weights_only=True)["v.pos_embed"]
    torch.testing.assert_close(model.pos_embed.detach(), official, rtol=0, atol=1e-6)
    assert not model.config.pretrain_heads or hasattr(model, "cpredlayer")


def test_our_format_round_trip(case, tmp_path):
    name, folder, io = case
    model = ssamba.load_model(folder / "pretrain_state_dict.pt")
    model.save_pretrained(tmp_path / "m")
    again = ssamba.load_model(tmp_path / "m")
    with torch.no_grad():
        a = model.forward_pretrain(io["input_pretrain"], "mpg", mask_index=io["mpg.mask_index"])
        b = again.forward_pretrain(io["input_pretrain"], "mpg", mask_index=io["mpg.mask_index"])
    assert a.item() == b.item()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]


def test_conversion_drops_only_unused_keys(case):
    name, folder, io = case
    state = torch.load(folder / "pretrain_state_dict.pt", weights_only=True)
    ours = convert_official(state)
    unused = {"p_input_fdim", "p_input_tdim", "v.head.weight", "v.head.bias"}
    if "ssast" in name:
        unused |= {"v.head_dist.weight", "v.head_dist.bias"}
    assert len(ours) == len(state) - len(unused)
    assert not any(k.startswith("v.") for k in ours)


@pytest.mark.skipif(not (SHARED / "official_ssamba_tiny").is_dir(), reason="shared fixtures absent")
def test_released_depth_ssamba_tiny():
    """The 24-layer model as released (57 MB fixture beside the repository, not in it)."""
    folder = SHARED / "official_ssamba_tiny"
    io = torch.load(folder / "io.pt", weights_only=True)
    model = load_official(folder / "pretrain_state_dict.pt")
    assert model.config.depth == 24
    with torch.no_grad():
        acc, nce = model.forward_pretrain(
            io["input_pretrain"], "mpc", mask_index=io["mpc.mask_index"]
        )
        mse = model.forward_pretrain(io["input_pretrain"], "mpg", mask_index=io["mpg.mask_index"])
    assert rel_err(nce, io["mpc.nce"]) < REL_TOL and rel_err(mse, io["mpg.mse"]) < REL_TOL
    ft = load_official(folder / "finetune_state_dict.pt", input_tdim=200)
    with torch.no_grad():
        assert rel_err(ft(io["input_finetune"]), io["ft_avgtok"]) < REL_TOL
