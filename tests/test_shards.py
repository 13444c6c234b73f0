"""WebDataset shards: writing, patterns, the streaming order (ranks, workers, buffer, resume),
and pretraining over shards (torchrun, kill -9 then --resume)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from ssamba.cli import main
from ssamba.cli.common import OUTPUT_MARKER
from ssamba.configs import PretrainConfig
from ssamba.data import (
    AudioDataset,
    ShardStream,
    expand_braces,
    is_shard_spec,
    parse_size,
    read_manifest,
    shard_paths,
)
from ssamba.data.shards import buffer_order
from ssamba.errors import ManifestError, UsageError
from ssamba.pretrain import pretrain
from ssamba.training import read_metrics
from ssamba.training.run_folder import TRAINER_STATE


def _clips(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` labelled noisy chirps (WAV, some FLAC) and a manifest.csv listing them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for i in range(n):
        t = np.arange(int(rng.uniform(0.6, 1.0) * 16000)) / 16000
        f = rng.uniform(200, 3000)
        x = 0.3 * np.sin(2 * np.pi * f * t * (1 + 0.3 * t)) + 0.02 * rng.standard_normal(t.size)
        name = f"c{i:03d}.{'flac' if i % 3 == 0 else 'wav'}"
        sf.write(folder / name, x.astype(np.float32), 16000, subtype="PCM_16")
        rows.append(f"{name},{'bird' if i % 2 else 'car'}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    manifest = _clips(root / "clips", 32)
    assert main(["shard", str(manifest), "-o", str(root / "sh"), "--shard-size", "150KB",
                 "--no-progress"]) == 0  # fmt: skip
    return manifest, root / "sh"


# ---------------------------------------------------------------------------- writing, reading
def test_shard_round_trip_keeps_audio_labels_and_durations(sharded):
    manifest_path, folder = sharded
    source = read_manifest(manifest_path)
    index = json.loads((folder / "index.json").read_text())
    names = [s["name"] for s in index["shards"]]
    assert names == [f"shard-{k:06d}.tar" for k in range(len(names))] and len(names) > 3
    assert all(s["bytes"] <= 150_000 for s in index["shards"])
    made = sorted(names + ["index.json", OUTPUT_MARKER])  # no temps; the folder is ssamba's
    assert sorted(p.name for p in folder.iterdir()) == made
    shards = read_manifest(folder)
    assert shards.format == "shards" and shards.classes == source.classes == ["bird", "car"]
    assert [ex.labels for ex in shards] == [ex.labels for ex in source]
    keys = []
    for name in names:  # plain WebDataset tars: KEY.flac + KEY.json, keys unique
        with tarfile.open(folder / name) as tar:
            members = tar.getnames()
        assert [m.split(".", 1)[1] for m in members] == ["flac", "json"] * (len(members) // 2)
        keys += [m.split(".")[0] for m in members[::2]]
    assert len(set(keys)) == len(keys) == len(source)
    for ex, src in zip(shards, source, strict=True):
        with open(ex.path, "rb") as f:
            f.seek(ex.offset)
            data, rate = sf.read(__import__("io").BytesIO(f.read(ex.size)), dtype="int16")
        original, _ = sf.read(src.path, dtype="int16")
        assert rate == 16000 and np.array_equal(data, original)  # lossless
        assert ex.duration == pytest.approx(len(original) / 16000, abs=1e-5)
    a, b = AudioDataset(source, 64), AudioDataset(shards, 64)
    for i in (0, 1, 31):
        torch.testing.assert_close(a[i]["fbank"], b[i]["fbank"], rtol=0, atol=0)
        torch.testing.assert_close(a[i]["target"], b[i]["target"])


def test_a_second_shard_run_needs_overwrite(sharded, capsys):
    manifest, folder = sharded
    assert main(["shard", str(manifest), "-o", str(folder), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_shard_patterns_and_specs(sharded, tmp_path):
    _, folder = sharded
    assert expand_braces("a/s-{008..011}.tar") == [f"a/s-{k:03d}.tar" for k in (8, 9, 10, 11)]
    assert expand_braces("{x,y}-{0..1}") == ["x-0", "x-1", "y-0", "y-1"]
    with pytest.raises(ManifestError):
        expand_braces("s-{3..1}.tar")
    n = len(list(folder.glob("shard-*.tar")))
    pattern = f"{folder}/shard-{{000000..{n - 1:06d}}}.tar"
    assert is_shard_spec(pattern) and is_shard_spec(folder) and is_shard_spec(folder / "x.tar")
    assert not is_shard_spec(tmp_path)
    assert shard_paths(pattern) == shard_paths(folder) == sorted(folder.glob("shard-*.tar"))
    assert len(read_manifest(pattern)) == 32
    two = read_manifest(f"{folder}/shard-{{000000..000001}}.tar")
    assert len(two) == sum(1 for ex in read_manifest(folder) if ex.path.name in
                           ("shard-000000.tar", "shard-000001.tar"))  # fmt: skip
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(f"{folder}/shard-{{000000..{n:06d}}}.tar")
    # a shard without index.json (another tool's) is scanned: same clips and labels
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(folder / "shard-000001.tar", lone / "shard-000001.tar")
    scanned, indexed = read_manifest(lone), read_manifest(folder / "shard-000001.tar")
    assert [(e.offset, e.size, e.labels) for e in scanned] == [
        (e.offset, e.size, e.labels) for e in indexed
    ]
    assert parse_size("1GB") == 10**9 and parse_size("2MiB") == 2 * 2**20
    with pytest.raises(UsageError):
        parse_size("lots")


# ---------------------------------------------------------------------------- streaming order
def test_buffer_shuffle_is_a_bounded_permutation_seeded_per_call():
    def order(seed, n=200, size=16):
        return buffer_order(n, size, torch.Generator().manual_seed(seed))

    a = order(1)
    assert sorted(a) == list(range(200)) and a == order(1) and a != order(2)
    # a buffer of `size` emits, at output t, a position read at most size - 1 ahead
    assert all(pos <= t + 15 for t, pos in enumerate(a))
    assert buffer_order(50, 1, torch.Generator()) == list(range(50))


def _stream(folder, batch, rank=0, world=1, seed=0, buffer=8):
    ds = AudioDataset(read_manifest(folder), 32, seed=seed)
    return ShardStream(ds, batch, seed=seed, rank=rank, world_size=world, buffer=buffer)


def test_ranks_see_every_clip_once_per_epoch_in_a_seeded_order(sharded):
    _, folder = sharded
    for epoch in (0, 1):
        orders = [_stream(folder, 4, r, 2).epoch_order(epoch) for r in range(2)]
        assert all(len(o) == 16 for o in orders)
        assert sorted(orders[0] + orders[1]) == list(range(32))
    one = _stream(folder, 4)
    assert one.epoch_order(0) != one.epoch_order(1)  # shards and buffer reshuffled per epoch
    assert one.epoch_order(0) == _stream(folder, 4).epoch_order(0)
    assert one.epoch_order(0) != _stream(folder, 4, seed=5).epoch_order(0)
    assert sorted(one.epoch_order(0)) == list(range(32))


def test_the_remainder_is_dropped_equally_per_rank(sharded):
    _, folder = sharded
    # 32 clips over 3 ranks: 10 each; 2 clips sit out each epoch (other ones as shards reshuffle)
    seen = [sum((_stream(folder, 2, r, 3).epoch_order(e) for r in range(3)), []) for e in range(4)]
    assert all(len(s) == 30 and len(set(s)) == 30 for s in seen)
    left_out = [frozenset(range(32)) - set(s) for s in seen]
    assert len(set(left_out)) > 1


def _loader_indices(stream, workers, epoch, start=0):
    stream.set_position(epoch, start)
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=workers,
                        drop_last=True, persistent_workers=workers > 0)  # fmt: skip
    return [int(i) for batch in loader for i in batch["index"]]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores
@pytest.mark.parametrize("workers", [0, 1, 3])
def test_workers_split_the_epoch_and_resume_mid_epoch_in_the_same_order(sharded, workers):
    _, folder = sharded
    stream = _stream(folder, 4, rank=1, world=2)
    expected = stream.epoch_order(1)  # whatever the worker count
    assert _loader_indices(stream, workers, 1) == expected
    for start in (1, 3):  # micro-batches already consumed: the rest, in the same order
        assert _loader_indices(stream, workers, 1, start) == expected[start * 4 :]


def test_resuming_reads_only_clips_still_needed(sharded, monkeypatch):
    _, folder = sharded
    stream = _stream(folder, 4)
    got = []
    monkeypatch.setattr(AudioDataset, "get", lambda self, i, data=None: got.append(i) or {})
    stream.set_position(0, 6)
    list(stream)
    assert got == stream.epoch_order(0)[24:]


# ---------------------------------------------------------------------------- training on shards
def _pretrain_cmd(train, out, *extra):
    cmd = ["pretrain", "--model", "ssamba_tiny", "--depth", "2", "--drop-path", "0"]
    cmd += ["--train", str(train), "--out", str(out), "--target-length", "64"]
    cmd += ["--batch-size", "8", "--warmup-steps", "2", "--lr", "1e-3", "--no-progress"]
    return cmd + ["--log-every", "1", *extra]


def train_losses(out):
    records = read_metrics(Path(out) / "metrics.jsonl")
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


SEEN_SCRIPT = """
import os, sys
from ssamba.data import AudioDataset
get = AudioDataset.get
def logged(self, i, data=None):
    with open(os.path.join(sys.argv[1], f"seen-{os.getpid()}.txt"), "a") as f:
        f.write(f"{os.environ.get('RANK', '0')} {self.epoch} {i} {data is not None}\\n")
    return get(self, i, data)
AudioDataset.get = logged
from ssamba.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="no torchrun")
def test_torchrun_over_shards_sees_every_clip_once_per_epoch(sharded, tmp_path):
    _, folder = sharded
    script = tmp_path / "seen.py"
    script.write_text(SEEN_SCRIPT)
    logs = tmp_path / "logs"
    logs.mkdir()
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", str(script), str(logs)]
    cmd += _pretrain_cmd(folder, tmp_path / "ddp", "--epochs", "2", "--workers", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [ln.split() for f in logs.iterdir() for ln in f.read_text().splitlines()]
    assert all(streamed == "True" for *_, streamed in lines)  # read from the stream
    for epoch in ("0", "1"):
        per_rank = Counter(r for r, e, _, _ in lines if e == epoch)
        clips = sorted(int(i) for _, e, i, _ in lines if e == epoch)
        assert clips == list(range(32)) and per_rank == {"0": 16, "1": 16}
    assert sorted(train_losses(tmp_path / "ddp")) == list(range(1, 9))  # 4 steps an epoch


def test_kill_then_resume_mid_shard_gives_the_same_losses(sharded, tmp_path):
    _, folder = sharded
    cfg = dict(out=str(tmp_path / "full"), model="ssamba_tiny", train=str(folder),
               target_length=64, batch_size=8, warmup_steps=2, lr=1e-3, progress=False,
               log_every=1, model_overrides={"depth": 2, "drop_path": 0.0}, max_steps=8,
               save_every=3, workers=2)  # fmt: skip
    pretrain(PretrainConfig(**cfg))
    expected = train_losses(tmp_path / "full")

    out = tmp_path / "killed"
    cmd = _pretrain_cmd(folder, out, "--max-steps", "8", "--save-every", "3", "--workers", "2")
    proc = subprocess.Popen([sys.executable, "-m", "ssamba", *cmd],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_00000003").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # 4 steps per epoch: step 3 is inside the first epoch, inside a shard (5 clips per shard)
    state = torch.load(out / "checkpoints" / "step_00000003" / TRAINER_STATE, weights_only=False)
    assert state["progress"]["batch_in_epoch"] == 3
    assert main(cmd + ["--resume"]) == 0
    resumed = train_losses(out)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
