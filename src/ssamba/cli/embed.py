"""``ssamba embed``: clip (and frame) embeddings of audio files into a folder a re-run resumes."""

from __future__ import annotations

import argparse
import sys

from ssamba.cli.common import (
    add_bad_file_option,
    add_checkpoint,
    add_command,
    add_embedding_options,
    add_out,
    add_progress,
    bad_file_error,
    check_window,
    deprecated_alias,
    load_checkpoint,
)

# BAD_FILE_POLICIES: the --on-bad-file choices (cli/common.py adds the option), named here too
from ssamba.constants import BAD_FILE_POLICIES, EMBEDDING_FORMATS  # noqa: F401
from ssamba.errors import AudioError
from ssamba.fileio import check_folder_target

FORMATS = EMBEDDING_FORMATS


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "embed",
        help="write clip (and frame) embeddings of audio files",
        description=(
            "Embed audio files with a checkpoint: one .npy per input file (mirroring the "
            "relative names), or a single .npz/.safetensors, plus index.json (settings and the "
            "file -> output mapping). Re-running into the same --out with the same settings "
            "skips files already done (after checking their arrays are whole). One process at a "
            "time writes into a folder: a second one is refused."
        ),
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio files, folders (searched recursively), manifests (JSON, CSV, list; "
        "PATH:SPLIT: one split) or data set folders",
    )
    add_checkpoint(p, help="save_pretrained folder, official .pth, or preset name (random weights)")
    add_out(p)
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="npy",
        help="one .npy per file, or all in one .npz / .safetensors",
    )
    add_embedding_options(p)
    p.add_argument(
        "--frame-embeddings",
        dest="frames",
        action="store_true",
        help="also write frame embeddings (T, D) and their timestamps (seconds)",
    )
    deprecated_alias(p, "--frames", "--frame-embeddings", dest="frames", flag=True)
    add_bad_file_option(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over when --out holds other files or embeddings made with other settings "
        "(refused otherwise; the same settings resume)",
    )
    add_progress(p)
    p.set_defaults(func=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    from ssamba.embedding_store import (
        EmbeddingStore,
        collect_inputs,
        embedding_settings,
        output_keys,
    )
    from ssamba.embeddings import resolve_layers

    check_window(args)
    check_folder_target(args.out, "embeddings folder")  # before the model is loaded
    files = collect_inputs(args.inputs)
    model = load_checkpoint(args.checkpoint, args.device)
    resolve_layers(model, args.layers)
    settings = embedding_settings(model, args.checkpoint, args.layers, args.window, args.hop)
    # the folder stays locked against a second writer until the store is closed
    with EmbeddingStore(args.out, settings, args.format, args.frames, args.overwrite) as store:
        todo, keys = store.plan([file for file, _ in files], output_keys(files))
        n_done = len(files) - len(todo)
        if n_done:
            print(f"{n_done} of {len(files)} files already embedded in {args.out}: skipped")
        paths, todo_keys = [files[i][0] for i in todo], [keys[i] for i in todo]
        embedded = _embed_into(store, model, paths, todo_keys, args)
        store.finish()
    msg = f"embedded {embedded} files into {args.out}"
    if n_done:
        msg += f", {n_done} already done"
    if store.bad_files:
        msg += f", {len(store.bad_files)} bad files skipped (listed in index.json)"
    print(msg)
    return 0


def _embed_into(store, model, paths: list, keys: list[str], args: argparse.Namespace) -> int:
    """Embed ``paths`` into ``store`` with a progress bar; the number embedded. The index is
    written however this ends, so that a re-run resumes."""
    from tqdm import tqdm

    from ssamba.embeddings import embed_files

    embedded = 0
    quiet = args.no_progress or not paths
    bar = tqdm(total=len(paths), unit="file", disable=quiet, file=sys.stderr)
    try:
        batches = embed_files(
            model,
            paths,
            batch_size=args.batch_size,
            on_bad_file=args.on_bad_file,
            layers=args.layers,
            window_seconds=args.window,
            hop_seconds=args.hop,
        )
        for batch in batches:
            for k, err in batch.bad.items():
                store.add_bad(paths[k], err.problem)
                tqdm.write(f"skipped bad file {err}", file=sys.stderr)
            for j, k in enumerate(batch.indices):
                store.add(paths[k], keys[k], batch.embeddings, j)
                embedded += 1
            bar.update(batch.size)
    except AudioError as err:
        raise bad_file_error(err) from None
    finally:
        bar.close()
        store.save_index()
    return embedded
