"""Loading by name: released checkpoints from $SSAMBA_HOME, Hugging Face Hub ids from an offline
cache (HF_HUB_OFFLINE=1), presets with a warning, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import ssamba
from ssamba.checkpoints import (
    RandomWeightsWarning,
    is_hub_id,
    load_model,
    released_checkpoint,
    resolve_checkpoint,
)
from ssamba.errors import CheckpointError
from ssamba.models.config import RELEASES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ssamba.create_model("ssamba_tiny", depth=2, input_tdim=128)


def test_list_models_pretrained_lists_the_official_releases():
    names = ssamba.list_models(pretrained=True)
    assert len(names) == 9 and names[0] == "ssamba_tiny_250" and names[-1] == "ssamba_base_400"
    base = ssamba.RELEASES["ssamba_base_400"]
    assert (base.size, base.masked_patches, base.filename) == ("base", 400, "ssamba_base_400.pth")
    assert "github.com/SiavashShams/ssamba" in base.source and base.preset == "ssamba_base"
    assert not set(names) & set(ssamba.list_models())  # presets and releases never collide


def test_released_name_found_in_ssamba_home_or_says_where(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("SSAMBA_HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        load_model("ssamba_tiny_400")
    message = str(err.value)
    assert str(tmp_path / "ssamba_tiny_400.pth") in message and "SSAMBA_HOME" in message
    tiny.save_pretrained(tmp_path / "ssamba_tiny_400")  # a converted copy is found too
    assert released_checkpoint("ssamba_tiny_400") == tmp_path / "ssamba_tiny_400"
    loaded = load_model("ssamba_tiny_400")
    torch.testing.assert_close(loaded.pos_embed, tiny.pos_embed)


def test_preset_warns_that_weights_are_random():
    with pytest.warns(RandomWeightsWarning, match="RANDOM weights"):
        load_model("ssamba_tiny", depth=2)
    with pytest.raises(CheckpointError, match="unknown model 'ssamba_huge'.*ssamba_base_400"):
        load_model("ssamba_huge")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_model("missing/model.pth")


def test_hub_ids_are_told_from_paths(tmp_path):
    assert is_hub_id("org/name") and is_hub_id("org/name@v1.0")
    assert not is_hub_id("org/name.pth") and not is_hub_id("/abs/path") and not is_hub_id("a/b/c")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert not is_hub_id("org/name")  # an existing folder wins
        assert resolve_checkpoint("org/name") == Path("org/name")
    finally:
        os.chdir(cwd)


def _fill_cache(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """The Hub cache layout huggingface_hub reads: models--org--name/{refs,snapshots}."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return snapshot


def test_hub_id_from_an_offline_cache(tmp_path, tiny):
    hub = pytest.importorskip("huggingface_hub")
    saved = tiny.save_pretrained(tmp_path / "model")
    cache = tmp_path / "hf"
    files = {p.name: p for p in saved.iterdir()}
    snapshot = _fill_cache(cache, "someone/ssamba-tiny", files)
    # the library itself recognises the layout
    found = hub.try_to_load_from_cache("someone/ssamba-tiny", "config.json", cache_dir=cache)
    assert Path(found) == snapshot / "config.json"
    reference = tmp_path / "reference.pt"
    torch.save(tiny.pos_embed.detach(), reference)
    script = textwrap.dedent(
        f"""
        import torch, ssamba
        from ssamba.errors import CheckpointError
        model = ssamba.load_model("someone/ssamba-tiny")
        assert torch.equal(model.pos_embed.detach(), torch.load({str(reference)!r}))
        fe = ssamba.FeatureExtractor.from_pretrained("someone/ssamba-tiny")
        assert fe.max_length == 128
        try:
            ssamba.load_model("someone/not-cached")
        except CheckpointError as err:
            print("offline:", err)
        print("loaded", model.config.depth)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "PYTHONPATH": str(ROOT / "src")}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "loaded 2" in done.stdout
    assert "offline: someone/not-cached: no such file or folder here, nor from the Hugging" in (
        done.stdout
    )


def test_hub_repo_with_an_official_pth(tmp_path, tiny, monkeypatch):
    """A Hub repository that holds one official .pth (as the released weights are shared)."""
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub, "snapshot_download", lambda repo, revision=None: str(tmp_path))
    (tmp_path / "README.md").write_text("weights")
    with pytest.raises(CheckpointError, match="one official .pth"):
        load_model("org/repo")
    official = {"v.pos_embed": torch.zeros(1, 3, 4)}
    torch.save(official, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="neither an SSAMBA nor an SSAST"):
        load_model("org/repo@main")  # found the .pth, then read it as an official file


def test_released_registry_is_plain_data():
    json.dumps({k: vars(v) for k, v in RELEASES.items()})  # torch-free, printable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ssamba.list_models(pretrained=False)[0] == "ssamba_tiny"
