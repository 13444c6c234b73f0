"""Throughput of the Kaldi filterbank front end: ssamba.audio.fbank vs kaldi-native-fbank.

Each round times every variant once on the same clips (interleaved, so a busy shared CPU hurts
all of them alike); the report gives the median over rounds in clips per second.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_fbank.py --clips 20 --rounds 7

Variants: ``ours`` (one clip per call, float32), ``ours_batch`` (all clips in one (B, N) call),
``ours_f64`` (float64 input), ``knf`` (kaldi-native-fbank, one OnlineFbank per clip, frames read
with get_frame as its Python API offers; no mean removal cost counted for it beyond numpy's).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from ssamba.audio import fbank
from ssamba.constants import SAMPLE_RATE


def make_clips(n: int, seconds: float, seed: int) -> np.ndarray:
    """Noise plus a few tones per clip: realistic spectra, float32 in [-1, 1)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    clips = 0.05 * rng.standard_normal((n, t.size))
    for i in range(n):
        for f in rng.uniform(100, 7000, size=3):
            clips[i] += 0.1 * np.sin(2 * np.pi * f * t)
    return clips.astype(np.float32)


def mel_grid_point(k: int, num_bins: int = 128) -> float:
    """Frequency (Hz) of point k of the reference mel grid (20 Hz .. Nyquist, num_bins + 2)."""
    mel_low = 1127.0 * math.log(1.0 + 20.0 / 700.0)
    mel_high = 1127.0 * math.log(1.0 + SAMPLE_RATE / 2 / 700.0)
    mel = mel_low + k * (mel_high - mel_low) / (num_bins + 1)
    return 700.0 * (math.exp(mel / 1127.0) - 1.0)


def knf_options(num_bins: int = 128):
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = num_bins
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    return opts


def run_knf(clips: np.ndarray, opts) -> None:
    import kaldi_native_fbank as knf

    for clip in clips:
        online = knf.OnlineFbank(opts)
        online.accept_waveform(SAMPLE_RATE, clip - clip.mean())
        online.input_finished()
        np.array([online.get_frame(i) for i in range(online.num_frames_ready)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20, help="clips per round")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-knf", action="store_true", help="skip kaldi-native-fbank")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    clips = make_clips(args.clips, args.seconds, seed=0)
    clips_t = torch.from_numpy(clips)
    clips_64 = clips_t.double()

    variants = {
        "ours": lambda: [fbank(c) for c in clips_t],
        "ours_batch": lambda: fbank(clips_t),
        "ours_f64": lambda: [fbank(c) for c in clips_64],
    }
    if not args.no_knf:
        try:
            # Kaldi refuses 128 bins at a 512-point FFT (mel bin 3 gets no FFT bin; torchaudio
            # keeps it as log(eps)); 124 bins above it give the same per-frame work.
            opts = knf_options(124)
            opts.mel_opts.low_freq = mel_grid_point(4)
            variants["knf"] = lambda: run_knf(clips, opts)
        except ImportError:
            print("kaldi-native-fbank not installed: skipping it")

    for fn in variants.values():  # warm-up: caches, allocator, lazy imports
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    print(
        f"{args.clips} clips x {args.seconds:g} s, {args.rounds} rounds, "
        f"torch {torch.__version__}, {args.threads} thread(s)"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{name:12s} {args.clips / med:8.1f} clips/s   ({1000 * med / args.clips:.2f} ms/clip, "
            f"best {args.clips / min(ts):.1f} clips/s)"
        )


if __name__ == "__main__":
    main()
