"""Time SSAMBA against SSAST on the CPU: one SSAMBA layer pair and the whole tiny models.

    python benchmarks/bench_block.py                    # batch 4; 512, 2048, 8192 tokens
    python benchmarks/bench_block.py --plain            # also the plain SSAMBA path
    python benchmarks/bench_block.py --long 22016       # also one batch-1 run at ~22k tokens

Inference is eval mode under ``torch.no_grad``; a training step is forward + backward of the
encoder (loss = mean of squared patch tokens) in train mode. All variants of one size run
interleaved (A, B, C, A, B, C, ...) and the median of ``--repeats`` is reported, because this
shared VM's clock drifts and other jobs come and go. ``--plain`` adds SSAMBA through the plain
formulation (``SSAMBA_SCAN`` left alone, but every mixer's ``reference_forward`` and flipped
copies for the pairs, as the official code does), i.e. what the fast path replaced (its scan
kernel is the current one). Prints Markdown and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ssamba.bench.spec import FREQ_PATCHES
from ssamba.constants import NUM_MEL_BINS, PATCH
from ssamba.models import create_model


def frames_for(tokens: int) -> int:
    """Frames giving ``tokens`` patches: FREQ_PATCHES (8) per time column (+ class tokens)."""
    return max(PATCH, tokens // FREQ_PATCHES * PATCH)


def plain_encoder(enc, tokens):
    """SSAMBA's encoder loop with flipped copies and the plain mixer (the pre-fast-path code)."""
    return enc.reference_forward(tokens)


def make_variants(depth_pair: bool, plain: bool):
    """name -> (model, encode(model, tokens)) ; tokens are built by the model's own embedding."""
    kw = dict(pretrain_heads=False)
    variants = {}
    if depth_pair:
        m = create_model("ssamba_tiny", depth=2, **kw)
        variants["ssamba pair"] = (m, lambda m, t: m.encoder(t))
        if plain:
            variants["ssamba pair (plain)"] = (m, lambda m, t: plain_encoder(m.encoder, t))
        return variants
    variants["ssast_tiny"] = (create_model("ssast_tiny", **kw), lambda m, t: m.encoder(t))
    m = create_model("ssamba_tiny", **kw)
    variants["ssamba_tiny"] = (m, lambda m, t: m.encoder(t))
    if plain:
        variants["ssamba_tiny (plain)"] = (m, lambda m, t: plain_encoder(m.encoder, t))
    return variants


def time_interleaved(fns: dict, repeats: int) -> dict:
    for fn in fns.values():  # warm-up (numba cache load / compile, allocator)
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def inference_fn(model, encode, fbank):
    model.eval()

    def run():
        with torch.no_grad():
            tokens, _ = model.embed_tokens(fbank)
            encode(model, tokens)

    return run


def train_fn(model, encode, fbank):
    def run():
        model.train()
        model.zero_grad(set_to_none=True)
        tokens, _ = model.embed_tokens(fbank)
        out = encode(model, tokens)
        out.pow(2).mean().backward()
        model.eval()

    return run


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--train-tokens", type=int, nargs="*", default=[512])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    p.add_argument("--plain", action="store_true", help="also time the plain SSAMBA path")
    p.add_argument("--long", type=int, default=0, help="also a batch-1 run at this many tokens")
    p.add_argument("--skip-pair", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load before: {load()}\n")
    rows = []

    def bench(kind, scope, variants, batch, tokens, repeats):
        frames = frames_for(tokens)
        fbank = torch.randn(batch, frames, NUM_MEL_BINS)
        make = inference_fn if kind == "inference" else train_fn
        fns = {name: make(m, enc, fbank) for name, (m, enc) in variants.items()}
        res = time_interleaved(fns, repeats)
        base = res.get("ssast_tiny")
        for name, t in res.items():
            ratio = f"{t / base:.2f}x" if base and name != "ssast_tiny" else ""
            rows.append((kind, scope, batch, tokens, name, t * 1e3, ratio))
        print(f"  done {kind} {scope} {tokens} tokens: "
              + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in res.items()), flush=True)  # fmt: skip

    if not a.skip_pair:
        pair = make_variants(True, a.plain)
        for tokens in a.tokens:
            bench("inference", "layer pair", pair, a.batch, tokens, a.repeats)
        for tokens in a.train_tokens:
            bench("training step", "layer pair", pair, a.batch, tokens, a.repeats)
    whole = make_variants(False, a.plain)
    for tokens in a.tokens:
        bench("inference", "encoder", whole, a.batch, tokens, a.repeats)
    for tokens in a.train_tokens:
        bench("training step", "encoder", whole, a.batch, tokens, a.repeats)
    if a.long:
        bench("inference", "encoder", whole, 1, a.long, 1)

    print(f"\nmedian of {a.repeats}, interleaved; tokens = patches (+1 class token for SSAMBA, "
          f"+2 for SSAST); load after: {load()}\n")  # fmt: skip
    print("| pass | scope | batch | tokens | model | ms | vs ssast_tiny |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.0f} | {r[6]} |")


if __name__ == "__main__":
    main()
