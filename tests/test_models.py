"""Model construction, forward modes, positional embeddings, masking and checkpoint errors."""

import json
import random
from pathlib import Path

import pytest
import torch

import ssamba
from ssamba.checkpoints import CheckpointError
from ssamba.models.objectives import info_nce, masked_mse
from ssamba.models.patches import cluster_mask, draw_mask_index, frame_mask, resize_pos_embed

# docs/model.md: parameter counts of the official pretraining models. Those also hold Vision Mamba's
# unused 1000-class head (E*1000 + 1000) and the two p_input_* scalars, which we do not keep.
GOLDEN = Path(__file__).parent / "data" / "golden" / "official_ssamba_tiny_depth4"
OFFICIAL_COUNTS = {"tiny": 7_288_298, "small": 26_224_106, "base": 99_042_794}


def small(name="ssamba_tiny", **kw):
    kw.setdefault("depth", 2)
    kw.setdefault("input_tdim", 64)
    return ssamba.create_model(name, **kw)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_parameter_counts_match_the_official_models(size):
    model = ssamba.create_model(f"ssamba_{size}")
    dim = model.config.embed_dim
    assert model.num_parameters() + dim * 1000 + 1000 + 2 == OFFICIAL_COUNTS[size]


def test_registry():
    names = ssamba.list_models()
    assert names[:3] == ["ssamba_tiny", "ssamba_small", "ssamba_base"]
    assert {"ssast_tiny", "ssast_small", "ssast_base"} <= set(names)
    with pytest.raises(ValueError, match="unknown model 'ssamba_huge'.*ssamba_tiny"):
        ssamba.create_model("ssamba_huge")
    with pytest.raises(ValueError, match="pairs"):
        ssamba.create_model("ssamba_tiny", depth=3)


@pytest.mark.parametrize("name", ["ssamba_tiny", "ssast_tiny"])
def test_forward_modes_and_backward(name):
    torch.manual_seed(0)
    model = small(name, num_classes=5)
    x = torch.randn(2, 64, 128)
    logits = model(x)
    assert logits.shape == (2, 5)
    feats = model.forward_features(x)
    assert feats.shape == (2, 8 * 4, model.config.embed_dim)
    enc = model.encode(x, return_layers=True)
    assert enc.grid == (8, 4) and enc.class_tokens.shape[1] == model.config.num_class_tokens
    assert len(enc.layers) == (1 if name.startswith("ssamba") else 2)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_no_head_returns_pooled_embedding():
    model = small(num_classes=0).eval()
    x = torch.randn(1, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x).mean(1))


@pytest.mark.parametrize("name", ["ssamba_tiny", "ssast_tiny"])
def test_bands_head_pools_each_frequency_row(name, tmp_path):
    model = ssamba.create_model(name, depth=2, num_classes=5, pool="bands", input_tdim=64).eval()
    x = torch.randn(2, 48, 128)  # another length than input_tdim: 8 x 3 patches
    with torch.no_grad():
        tokens = model.forward_features(x)  # (2, 8 * 3, E), token = f * t_dim + t
        rows = torch.stack([tokens[:, f * 3 : (f + 1) * 3].mean(1) for f in range(8)], 1)
        torch.testing.assert_close(model(x), model.mlp_head(rows.flatten(1)))
    assert model.mlp_head[1].in_features == 8 * model.config.embed_dim
    again = ssamba.AudioModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert again.config.pool == "bands"
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), model(x))
    with pytest.raises(ValueError, match="pool must be one of"):
        ssamba.create_model(name, pool="max")


def test_any_input_length_resizes_positional_embedding():
    model = small(input_tdim=64).eval()
    with torch.no_grad():
        for frames in (16, 64, 100, 1000):
            assert model.forward_features(torch.randn(1, frames, 128)).shape[1] == 8 * (
                (frames - 16) // 16 + 1
            )
    with pytest.raises(ValueError, match="at least 16"):
        model(torch.randn(1, 10, 128))
    with pytest.raises(ValueError, match="128"):
        model(torch.randn(1, 64, 64))


def test_resize_rule_crop_and_interpolate():
    pos = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 24, 1)  # grid (4, 6)
    crop = resize_pos_embed(pos, (4, 6), (2, 3)).reshape(2, 3)
    # centre crop: time start 6//2 - 3//2 = 2, freq start 4//2 - 2//2 = 1
    assert crop.tolist() == [[8, 9, 10], [14, 15, 16]]
    grown = resize_pos_embed(pos, (4, 6), (8, 12))
    ref = torch.nn.functional.interpolate(
        pos.reshape(1, 4, 6, 1).permute(0, 3, 1, 2), size=(8, 12), mode="bilinear"
    )
    torch.testing.assert_close(grown, ref.permute(0, 2, 3, 1).reshape(1, 96, 1))
    assert resize_pos_embed(pos, (4, 6), (4, 6)) is pos


def test_cluster_mask_rules():
    rng = random.Random(0)
    for _ in range(20):
        ids = cluster_mask(512, 64, 400, rng)
        assert len(ids) == 400 == len(set(ids)) and ids == sorted(ids) and 0 not in ids
    a = draw_mask_index(3, (8, 16), 50, rng=random.Random(1))
    b = draw_mask_index(3, (8, 16), 50, rng=random.Random(1))
    assert torch.equal(a, b) and a.shape == (3, 50)
    with pytest.raises(ValueError, match="at most 126"):
        cluster_mask(128, 16, 127, rng)
    fm = frame_mask(8, 16, 40, random.Random(0))
    assert len(fm) == 40 and 0 not in fm


def reference_losses(targets, preds_c, preds_g):
    """The official per-clip loops, transcribed."""
    b, m, _ = targets.shape
    nce, correct = 0.0, 0
    for i in range(b):
        total = targets[i] @ preds_c[i].T
        correct += (total.softmax(-1).argmax(0) == torch.arange(m)).sum().item()
        nce += torch.diag(total.log_softmax(-1)).sum()
    return correct / (b * m), nce / (-b * m), ((preds_g - targets) ** 2).mean()


def test_objectives_match_the_reference_loops():
    torch.manual_seed(0)
    t, c, g = torch.randn(3, 20, 256), torch.randn(3, 20, 256) * 0.1, torch.randn(3, 20, 256)
    acc_ref, nce_ref, mse_ref = reference_losses(t, c, g)
    acc, nce = info_nce(t, c)
    assert acc.item() == pytest.approx(acc_ref) and nce.item() == pytest.approx(
        nce_ref.item(), rel=1e-6
    )
    assert masked_mse(g, t).item() == pytest.approx(mse_ref.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["ssamba_tiny", "ssast_tiny"])
def test_forward_pretrain_draws_masks_and_checks_them(name):
    model = small(name)
    x = torch.randn(2, 64, 128)
    acc, nce = model.forward_pretrain(x, "mpc", mask_patch=10, rng=random.Random(0))
    assert 0 <= acc.item() <= 1 and torch.isfinite(nce)
    nce.backward()
    assert model.cpredlayer[0].weight.grad is not None
    with pytest.raises(ValueError, match="at most 30"):
        model.forward_pretrain(x, "mpg", mask_patch=31)
    with pytest.raises(ValueError, match="task"):
        model.forward_pretrain(x, "mlm")
    with pytest.raises(ValueError, match="stride 16"):
        small(name, fstride=10, tstride=10).forward_pretrain(x, "mpg", mask_patch=10)


@pytest.mark.parametrize(
    "overrides",
    [dict(bidirectional=False, depth=3), dict(norm="rmsnorm"), dict(residual_in_fp32=True)],
)
def test_ablation_switches_build_run_and_round_trip(overrides, tmp_path):
    model = small(**overrides).eval()
    x = torch.randn(1, 64, 128)
    with torch.no_grad():
        y = model(x)
    model.save_pretrained(tmp_path / "m")
    again = ssamba.load_model(tmp_path / "m")
    assert again.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(again(x), y, rtol=0, atol=0)
    if not overrides.get("bidirectional", True):
        assert model.encoder.layers[0].mixer.backward_branch is None


def test_ssast_attention_variants_agree():
    torch.manual_seed(0)
    a = small("ssast_tiny").eval()
    b = small("ssast_tiny", attention="explicit").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


def test_save_load_overrides_resize_and_new_head(tmp_path):
    model = small(input_tdim=64)
    model.save_pretrained(tmp_path / "m")
    ft = ssamba.load_model(tmp_path / "m", input_tdim=128, num_classes=3, pretrain_heads=False)
    assert ft.pos_embed.shape[1] == 1 + 8 * 8 and ft.mlp_head[1].out_features == 3
    assert not hasattr(ft, "cpredlayer")
    with pytest.raises(CheckpointError, match="embed_dim=384 conflicts"):
        ssamba.load_model(tmp_path / "m", embed_dim=384)


def test_checkpoint_errors_are_readable(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        ssamba.load_model(tmp_path / "missing.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pth: not a readable"):
        ssamba.load_model(bad)
    folder = tmp_path / "m"
    small().save_pretrained(folder)
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        (folder / "model.safetensors").rename(tmp_path / "x")
        ssamba.load_model(folder)
    # an official state_dict with a mis-shaped, a missing and an unexpected tensor: all named
    official = torch.load(GOLDEN / "pretrain_state_dict.pt", weights_only=True)
    official["v.patch_embed.proj.bias"] = official["v.patch_embed.proj.bias"][:10]
    del official["v.cls_token"]
    official["v.extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pth"
    torch.save(official, path)
    with pytest.raises(CheckpointError) as err:
        ssamba.load_model(path)
    text = str(err.value)
    assert "bad.pth" in text and "missing keys: cls_token" in text
    assert "unexpected keys: encoder.extra.weight" in text
    assert "patch_embed.proj.bias: checkpoint (10,) vs model (192,)" in text


def test_config_json_is_plain(tmp_path):
    small().save_pretrained(tmp_path / "m")
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    assert data["arch"] == "ssamba" and data["depth"] == 2
