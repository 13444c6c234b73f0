"""The Hugging Face door (ssamba.transformers, issue 29): Auto classes without remote code, one
folder for both worlds with equal outputs, the audio-classification pipeline, a Trainer run
that ssamba loads back, and files inside Hub repositories (hf://...) read offline from a
pre-filled cache. Tiny models throughout; nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ssamba
from ssamba.errors import CheckpointError, UsageError
from ssamba.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
OFFICIAL = {
    "ssamba": GOLDEN / "official_ssamba_tiny_depth4" / "pretrain_state_dict.pt",
    "ssast": GOLDEN / "official_ssast_tiny_depth2" / "pretrain_state_dict.pt",
}
# tiny versions of both architectures: 2 layers (one SSAMBA pair), width 32, 64 frames
TINY = {
    "ssamba": dict(depth=2, embed_dim=32, input_tdim=64),
    "ssast": dict(depth=2, embed_dim=32, num_heads=2, input_tdim=64),
}
CLASSES = ["dog", "rain", "siren"]
ATOL = 1e-6


@pytest.fixture(scope="module")
def hf():
    """ssamba.transformers, imported (it registers the Auto classes) when transformers is."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import ssamba.transformers as module

    return module


def tiny_model(arch: str, seed: int = 0, **overrides) -> ssamba.AudioModel:
    torch.manual_seed(seed)
    return ssamba.create_model(f"{arch}_tiny", **{**TINY[arch], **overrides}).eval()


def finetuned_folder(folder: Path, arch: str, seed: int = 0, head_loss: str = "ce") -> Path:
    """What ssamba's fine-tuning leaves: a classifier folder (its head trained with
    ``head_loss``) and its classes.json."""
    model = tiny_model(arch, seed, num_classes=len(CLASSES), pretrain_heads=False,
                       head_loss=head_loss)  # fmt: skip
    model.save_pretrained(folder)
    (folder / "classes.json").write_text(json.dumps(CLASSES))
    return folder


def fbanks(batch: int = 2, frames: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------- ssamba's side
def test_config_json_names_the_model_type_and_transformers_keys_are_checked(tmp_path):
    """No transformers needed: ssamba writes model_type and reads what transformers adds."""
    tiny_model("ssast").save_pretrained(tmp_path / "m")
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    assert data["model_type"] == data["arch"] == "ssast"
    extra = {"architectures": ["SsastModel"], "transformers_version": "5", "dtype": "float32"}
    assert ModelConfig.from_saved({**data, **extra}) == ModelConfig.from_dict(
        {k: v for k, v in data.items() if k != "model_type"}
    )
    with pytest.raises(UsageError, match="model_type 'ssamba' contradicts arch 'ssast'"):
        ModelConfig.from_saved({**data, "model_type": "ssamba"})
    with pytest.raises(UsageError, match="id2label names 2 classes, but num_classes is 0"):
        ModelConfig.from_saved({**data, "id2label": {"0": "a", "1": "b"}})
    with pytest.raises(UsageError, match="unknown model config field.*hidden_act"):
        ModelConfig.from_saved({**data, "hidden_act": "gelu"})


def test_importing_ssamba_does_not_import_transformers():
    script = "import sys, ssamba; ssamba.create_model('ssamba_tiny', depth=2); " + (
        "print('transformers' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# ---------------------------------------------------------------------------- Auto classes
@pytest.mark.parametrize("arch", ["ssamba", "ssast"])
def test_auto_classes_resolve_without_remote_code(hf, arch, tmp_path):
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoModel,
        AutoModelForAudioClassification,
    )

    folder = finetuned_folder(tmp_path / "ft", arch)
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    names = {"ssamba": "Ssamba", "ssast": "Ssast"}[arch]
    config = AutoConfig.from_pretrained(folder)
    assert type(config).__name__ == f"{names}Config" and config.model_type == arch
    assert config.id2label == dict(enumerate(CLASSES))  # from classes.json
    assert (config.hidden_size, config.num_hidden_layers, config.num_classes) == (32, 2, 3)
    assert type(AutoModel.from_pretrained(folder)).__name__ == f"{names}Model"
    classifier = AutoModelForAudioClassification.from_pretrained(folder)
    assert type(classifier).__name__ == f"{names}ForAudioClassification"
    assert type(AutoFeatureExtractor.from_pretrained(folder)) is hf.SsambaFeatureExtractor


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("arch", ["ssamba", "ssast"])
def test_ssamba_folder_to_transformers_and_back_with_equal_outputs(hf, arch, tmp_path):
    from transformers import AutoModel, AutoModelForAudioClassification

    folder = finetuned_folder(tmp_path / "ssamba", arch)
    ours = ssamba.load_model(folder)
    x = fbanks()
    with torch.no_grad():
        logits, tokens = ours(x), ours.forward_features(x)
        classifier = AutoModelForAudioClassification.from_pretrained(folder).eval()
        close(classifier(input_values=x).logits, logits)
        base = AutoModel.from_pretrained(folder).eval()
        out = base(x, output_hidden_states=True)
        n_cls = base.config.num_class_tokens
        close(out.last_hidden_state[:, n_cls:], tokens)
        close(out.pooler_output, ours.pool(ours.encode(x)))
        embedded, _ = ours.embed_tokens(x)
        _, layers = ours.encoder(embedded, return_layers=True)
        assert len(out.hidden_states) == 1 + len(layers)
        close(out.hidden_states[0], embedded)
        close(out.hidden_states[-1], layers[-1])

    classifier.save_pretrained(tmp_path / "hf")  # ... and back: the same weights file
    saved, original = (
        load_file(tmp_path / "hf" / "model.safetensors"),
        load_file(folder / "model.safetensors"),
    )
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in saved)
    assert json.loads((tmp_path / "hf" / "classes.json").read_text()) == CLASSES
    assert (tmp_path / "hf" / "preprocessor_config.json").read_text() == (
        folder / "preprocessor_config.json"
    ).read_text()
    again = ssamba.load_model(tmp_path / "hf")
    assert again.config == ours.config
    with torch.no_grad():
        close(again(x), logits)


@pytest.mark.parametrize("arch", ["ssamba", "ssast"])
def test_official_pth_converted_by_ssamba_convert_loads_in_transformers(hf, arch, tmp_path):
    from transformers import AutoModel

    from ssamba.cli import main

    out = tmp_path / "converted"
    assert main(["convert", "-c", str(OFFICIAL[arch]), "-o", str(out)]) == 0
    official = ssamba.load_model(OFFICIAL[arch])
    model = AutoModel.from_pretrained(out).eval()
    x = fbanks(frames=official.config.input_tdim)
    with torch.no_grad():
        close(model(x).pooler_output, official(x))
        close(model(x).last_hidden_state[:, official.config.num_class_tokens :],
              official.forward_features(x))  # fmt: skip


def test_a_model_built_in_transformers_keeps_ssambas_initialisation_and_saves_an_ssamba_folder(
    hf, tmp_path
):
    config = hf.SsambaConfig(**TINY["ssamba"], id2label=dict(enumerate(CLASSES)))
    assert config.num_classes == 3 and config.label2id == {"dog": 0, "rain": 1, "siren": 2}
    torch.manual_seed(5)
    model = hf.SsambaForAudioClassification(config).eval()
    torch.manual_seed(5)
    reference = ssamba.AudioModel(config.model_config())
    state = model.audio.state_dict()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in state.items())
    model.save_pretrained(tmp_path / "m")
    loaded = ssamba.load_model(tmp_path / "m")
    x = fbanks()
    with torch.no_grad():
        close(loaded(x), model(x).logits)
    with pytest.raises(UsageError, match="a ssamba config cannot hold arch='ssast'"):
        hf.SsambaConfig(arch="ssast")
    with pytest.raises(UsageError, match="needs labels: pass num_labels"):
        hf.SsastForAudioClassification(hf.SsastConfig(**TINY["ssast"]))
    with pytest.raises(UsageError, match="depth"):
        hf.SsambaConfig(depth=3)  # ssamba's own checks: layers come in pairs


def test_a_new_head_on_a_pretrained_folder_gets_ssambas_initialisation(hf, tmp_path):
    from transformers import AutoModelForAudioClassification

    pretrained = tiny_model("ssamba")
    pretrained.save_pretrained(tmp_path / "pt")
    torch.manual_seed(7)
    model = AutoModelForAudioClassification.from_pretrained(tmp_path / "pt", num_labels=4)
    torch.manual_seed(7)
    fresh = ssamba.AudioModel(model.config.model_config())
    for key, value in model.audio.state_dict().items():
        expected = fresh.state_dict()[key] if key.startswith("mlp_head.") else (
            pretrained.state_dict()[key]
        )  # fmt: skip
        assert torch.equal(value, expected), key


def test_loss_follows_problem_type(hf):
    torch.manual_seed(0)
    config = hf.SsastConfig(**TINY["ssast"], num_labels=3)
    model = hf.SsastForAudioClassification(config).eval()
    x = fbanks(batch=3)
    single = torch.tensor([0, 2, 1])
    with torch.no_grad():
        out = model(x, labels=single)
        assert config.problem_type == "single_label_classification"
        close(out.loss, torch.nn.functional.cross_entropy(out.logits, single))
        model.config.problem_type = "multi_label_classification"
        multi = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        out = model(x, labels=multi)
        expected = -(multi * out.logits.sigmoid().log()
                     + (1 - multi) * (1 - out.logits.sigmoid()).log()).mean()  # fmt: skip
        close(out.loss, expected)
        loss, logits = model(x, labels=multi, return_dict=False)
        close(loss, expected)
    with pytest.raises(UsageError, match="problem_type must be one of"):
        hf.SsastConfig(problem_type="ranking")


# ---------------------------------------------------------------------------- features, pipeline
def test_feature_extractor_is_ssambas(hf, tmp_path):
    from transformers import AutoFeatureExtractor

    folder = finetuned_folder(tmp_path / "ft", "ssamba")
    fe = AutoFeatureExtractor.from_pretrained(folder)
    ours = ssamba.FeatureExtractor.from_pretrained(folder)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (44100, 30000)]
    batch = fe(waves, sampling_rate=44100, return_tensors="pt")
    assert list(batch) == ["input_values"]
    close(batch["input_values"], ours(waves, sampling_rate=44100)["input_values"])
    assert isinstance(fe(waves[0], sampling_rate=44100, return_tensors="np")["input_values"],
                      np.ndarray)  # fmt: skip
    fe.save_pretrained(tmp_path / "fe")
    assert json.loads((tmp_path / "fe" / "preprocessor_config.json").read_text()) == (
        ours.to_dict()
    )
    with pytest.raises(UsageError, match="sampling_rate"):
        fe(waves[0])
    with pytest.raises(UsageError, match="unknown argument.*truncation"):
        fe(waves[0], sampling_rate=16000, truncation=True)


@pytest.mark.parametrize("head_loss", ["ce", "bce"])
def test_pipeline_returns_the_labels_of_a_finetuned_model(hf, tmp_path, head_loss):
    """The pipeline's scores are ssamba's own (``ssamba evaluate``'s): softmax for a head
    trained with cross-entropy, a sigmoid per class for binary cross-entropy."""
    from transformers import pipeline
    from transformers.pipelines.audio_utils import ffmpeg_read

    from ssamba.evaluation import head_scores

    folder = finetuned_folder(tmp_path / "ft", "ssamba", seed=3, head_loss=head_loss)
    model = ssamba.load_model(folder)
    fe = ssamba.FeatureExtractor.from_pretrained(folder)
    classify = pipeline("audio-classification", model=str(folder), device="cpu")

    def expected(wave: np.ndarray) -> list[tuple[str, float]]:
        with torch.no_grad():
            logits = model(fe(wave, sampling_rate=16000)["input_values"])
            probs = head_scores(logits, head_loss)[0]
        return sorted(zip(CLASSES, probs.tolist(), strict=True), key=lambda p: -p[1])

    def check(result, want) -> None:
        assert [r["label"] for r in result] == [name for name, _ in want]
        np.testing.assert_allclose([r["score"] for r in result], [s for _, s in want], atol=ATOL)

    rng = np.random.default_rng(1)
    wave = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    check(classify(wave), expected(wave))
    check(classify({"raw": wave, "sampling_rate": 16000}), expected(wave))
    import soundfile as sf

    for rate in (44100, 8000):  # files at any rate: decoded and resampled by the pipeline
        path = tmp_path / f"clip_{rate}.wav"
        sf.write(path, (0.1 * rng.standard_normal(rate)).astype(np.float32), rate)
        decoded = ffmpeg_read(path.read_bytes(), 16000)
        check(classify(str(path)), expected(decoded))


# ---------------------------------------------------------------------------- Trainer
def test_trainer_fine_tunes_and_ssamba_loads_its_checkpoint(hf, tmp_path):
    from transformers import AutoModelForAudioClassification, Trainer, TrainingArguments

    tiny_model("ssamba").save_pretrained(tmp_path / "pretrained")
    model = AutoModelForAudioClassification.from_pretrained(
        tmp_path / "pretrained", id2label=dict(enumerate(CLASSES))
    )
    before = {k: v.clone() for k, v in model.audio.state_dict().items()}
    x = fbanks(batch=8, seed=4)
    data = [{"input_values": x[i], "labels": i % 3} for i in range(8)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
        learning_rate=1e-3, save_strategy="steps", save_steps=3, logging_steps=1,
        report_to="none", use_cpu=True, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert result.global_step == 3 and np.isfinite(result.training_loss)
    checkpoint = tmp_path / "run" / "checkpoint-3"
    loaded = ssamba.load_model(checkpoint)
    assert json.loads((checkpoint / "classes.json").read_text()) == CLASSES
    trained = model.eval()
    assert not torch.equal(trained.audio.mlp_head[1].weight, before["mlp_head.1.weight"])
    with torch.no_grad():
        close(loaded(x), trained(x.to(trained.device)).logits.cpu())
    # a checkpoint's weights, with ssamba's names, load back into the transformers model too
    resumed = AutoModelForAudioClassification.from_pretrained(tmp_path / "pretrained",
                                                              num_labels=3)  # fmt: skip
    resumed.load_state_dict(load_file(checkpoint / "model.safetensors"))
    with torch.no_grad():
        close(resumed.eval()(x).logits, loaded(x))


# ---------------------------------------------------------------------------- Hub files
def _fill_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """The Hub cache layout huggingface_hub reads: models--org--name/{refs,snapshots}."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = folder / "snapshots" / revision
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(source.read_bytes())
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)


def test_hub_files_load_offline_from_the_cache(tmp_path):
    pytest.importorskip("huggingface_hub")
    finetuned = finetuned_folder(tmp_path / "ft", "ssast")
    cache = tmp_path / "hf"
    files = {"SSAMBA_tiny_depth4.pth": OFFICIAL["ssamba"]}
    files.update({f"finetuned/{p.name}": p for p in finetuned.iterdir()})
    _fill_cache(cache, "someone/weights", files)
    _fill_cache(cache, "someone/ssast-ft", {p.name: p for p in finetuned.iterdir()})
    expected = tmp_path / "expected.pt"
    x = fbanks(frames=256)
    with torch.no_grad():
        torch.save({"official": ssamba.load_model(OFFICIAL["ssamba"])(x),
                    "finetuned": ssamba.load_model(finetuned)(x[:, :64]), "x": x},
                   expected)  # fmt: skip
    script = textwrap.dedent(
        f"""
        import torch, ssamba
        from ssamba.cli import main
        from ssamba.errors import CheckpointError
        want = torch.load({str(expected)!r})
        x = want["x"]
        with torch.no_grad():
            official = ssamba.load_model("hf://someone/weights/SSAMBA_tiny_depth4.pth")
            assert torch.allclose(official(x), want["official"], rtol=0, atol=1e-6)
            folder = ssamba.load_model("hf://someone/weights@main/finetuned")
            assert torch.allclose(folder(x[:, :64]), want["finetuned"], rtol=0, atol=1e-6)
        assert main(["convert", "-c", "hf://someone/weights/SSAMBA_tiny_depth4.pth",
                     "-o", {str(tmp_path / "converted")!r}]) == 0
        for missing in ("hf://someone/weights/nothing.pth", "hf://nobody/here/x.pth"):
            try:
                ssamba.load_model(missing)
            except CheckpointError as err:
                print("error:", err)
        try:
            import ssamba.transformers
            from transformers import AutoModelForAudioClassification
        except ImportError:
            print("no transformers")
        else:
            hub = AutoModelForAudioClassification.from_pretrained("someone/ssast-ft").eval()
            print("labels", list(hub.config.id2label.values()))
            with torch.no_grad():
                assert torch.allclose(hub(x[:, :64]).logits, want["finetuned"], atol=1e-6)
        print("ok")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "HF_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT / "src")}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("ok")
    assert "converted hf://someone/weights/SSAMBA_tiny_depth4.pth" in done.stdout
    assert "error: hf://someone/weights/nothing.pth: no such file or folder here, nor from the" in (
        done.stdout
    )
    assert "error: hf://nobody/here/x.pth: no such file" in done.stdout
    if "no transformers" not in done.stdout:
        assert f"labels {CLASSES}" in done.stdout
    assert ssamba.load_model(tmp_path / "converted").config.arch == "ssamba"


def test_hub_file_names_are_checked():
    from ssamba.checkpoints import hub_file, is_hub_file

    assert is_hub_file("hf://org/name/file.pth") and not is_hub_file("org/name")
    with pytest.raises(CheckpointError, match="expected hf://ORG/NAME"):
        hub_file("hf://just-a-name")


# ---------------------------------------------------------------------------- the examples
def _code_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block in a markdown file, in order."""
    blocks, lang, lines = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(lines)))
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def _examples() -> list[tuple[str, str]]:
    """docs/transformers.md's examples, then the README's about this door."""
    readme = [
        (lang, code)
        for lang, code in _code_blocks(ROOT / "README.md")
        if lang == "python" and ("ssamba.transformers" in code or "hf://" in code)
    ]
    return _code_blocks(ROOT / "docs" / "transformers.md") + readme


def test_the_documented_examples_run(hf, tmp_path):
    """Every example of docs/transformers.md and the README's transformers section, run in a
    folder holding what they name, offline, with the Hub file in a pre-filled cache."""
    import soundfile as sf

    examples = _examples()
    assert len(examples) >= 7 and any("hf://" in code for _, code in examples[-1:])
    work = tmp_path / "work"
    finetuned_folder(work / "runs" / "ft" / "best", "ssamba")
    tiny_model("ssamba").save_pretrained(work / "runs" / "pretrain" / "final")
    rng = np.random.default_rng(0)
    for name, rate in (("clip.flac", 44100), ("dog.wav", 16000), ("rain.wav", 16000)):
        sf.write(work / name, (0.1 * rng.standard_normal(rate)).astype(np.float32), rate)
    cache = tmp_path / "hf"
    _fill_cache(
        cache, "attentionisallyouneed369/ssamba", {"ssamba_tiny_400.pth": OFFICIAL["ssamba"]}
    )
    (tmp_path / "examples.json").write_text(json.dumps(examples))
    script = textwrap.dedent(
        f"""
        import json, shlex
        from ssamba.cli import main
        namespace = {{}}
        for lang, code in json.load(open({str(tmp_path / "examples.json")!r})):
            if lang == "python":
                exec(compile(code, "example", "exec"), namespace)
            elif lang == "sh":
                for line in code.splitlines():
                    if line.startswith("ssamba "):
                        assert main(shlex.split(line)[1:]) == 0, line
        print("done")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "HF_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT / "src")}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=work, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("done")
    assert any(f"'label': '{name}'" in done.stdout for name in CLASSES)
    trained = ssamba.load_model(work / "runs" / "hf" / "final")
    assert trained.config.num_classes == 2
    assert json.loads((work / "runs" / "hf" / "final" / "classes.json").read_text()) == [
        "dog",
        "rain",
    ]
    assert ssamba.load_model(work / "models" / "ssamba_tiny_400").config.depth == 4
