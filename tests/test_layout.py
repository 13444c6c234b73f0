"""The layout's rules, checked on the source: layered imports without circles, a command line
that starts without torch, one option convention, and a repository that cites nothing outside it.

docs/architecture.md describes the layers these tests enforce.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "ssamba"

# Layers, lowest first: a module may import its own layer or a lower one (see
# docs/architecture.md). Keys are module-name prefixes; the longest matching prefix wins.
LAYERS = {
    "ssamba.errors": 0,
    "ssamba.constants": 0,
    "ssamba.fileio": 0,
    "ssamba.allocator": 0,
    "ssamba.metrics": 0,
    "ssamba.audio": 1,
    "ssamba.ops": 1,
    "ssamba.models": 2,
    "ssamba.checkpoints": 3,
    "ssamba.data": 3,
    "ssamba.training": 4,
    "ssamba.configs": 4,
    "ssamba": 5,  # the tasks: pretrain, finetune, probe, dasl, embeddings, hear, bench, ...
    "ssamba.cli": 6,
    "ssamba.__main__": 6,
}
# Imports from a lower layer to a higher one that are allowed (docs/architecture.md): none.
ALLOWED_UPWARD: set[tuple[str, str]] = set()
# Package initialisers that only re-export their own package lazily.
LAZY_INIT = {"ssamba", "ssamba.models"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The ssamba module an import of ``name`` loads (a package's name, or a module in it)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path, module: str, modules: dict[str, Path]) -> set[str]:
    """Every ssamba module that ``module`` imports anywhere (top or inside functions), except
    under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            if name.startswith("ssamba"):
                target = _resolve(name, modules)
                if target and target != module:
                    found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {m: _imports(p, m, modules) for m, p in modules.items()}
    for m in LAZY_INIT:  # a lazy __init__ names what it re-exports but imports it on use only
        graph[m] = {t for t in graph[m] if t == m}
    # importing a.b.c runs a/__init__ and a/b/__init__ too
    for m in list(graph):
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    return graph


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_import_graph_has_no_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_imports_point_down_the_layers():
    upward = sorted(
        (m, t) for m, targets in _graph().items() for t in targets if _layer(t) > _layer(m)
    )
    assert set(upward) <= ALLOWED_UPWARD, f"imports from a lower layer to a higher one: {upward}"


def test_library_never_imports_the_cli():
    offenders = sorted(
        m
        for m, targets in _graph().items()
        if _layer(m) < LAYERS["ssamba.cli"] and any(t.startswith("ssamba.cli") for t in targets)
    )
    assert offenders == [], offenders


def _loads_torch(*args: str) -> tuple[bool, str]:
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ssamba", *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    modules = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if "|" in line}
    return any(m == "torch" or m.startswith("torch.") for m in modules), res.stdout


def _commands() -> list[str]:
    sys.path.insert(0, str(SRC))
    from ssamba.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


def test_help_loads_no_torch():
    torch_loaded, out = _loads_torch("--help")
    assert "usage: ssamba" in out
    assert not torch_loaded, "`python -m ssamba --help` imported torch"


@pytest.mark.parametrize("command", _commands())
def test_command_help_loads_no_torch(command):
    torch_loaded, out = _loads_torch(command, "--help")
    assert f"ssamba {command}" in out
    assert not torch_loaded, f"`ssamba {command} --help` imported torch"


def test_every_option_states_its_default_and_every_command_has_a_description():
    import argparse

    from ssamba.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in sub.choices.items():
        assert p.description, f"`ssamba {name}` has no description"
        text = p.format_help()
        for action in p._actions:
            flag_like = isinstance(
                action,
                (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction,
                 argparse._CountAction, argparse._StoreConstAction, argparse._VersionAction),
            )  # fmt: skip
            if flag_like or not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if action.required:
                continue
            helped = p._get_formatter()._expand_help(action) if action.help else ""
            shown = p.formatter_class(name)._get_help_string(action).lower() + helped.lower()
            if "default" not in shown and "(required)" not in shown:
                missing.append(f"{name} {action.option_strings[-1]}")
        assert "usage:" in text
    assert missing == [], f"options whose help does not state a default: {missing}"


def test_repository_cites_nothing_outside_it():
    pattern_spec, pattern_path = "SPEC §", "/work/"
    offenders = []
    for path in [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md")]:
        text = path.read_text()
        if pattern_spec in text or pattern_path in text:
            offenders.append(str(path.relative_to(ROOT)))
    for folder in ("src", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md", ".json", ".sh", ".toml"} and path.is_file():
                # test_golden.py runs the 24-layer released model when its 57 MB fixture lies
                # beside the checkout (as in CI), and skips otherwise; nothing else may look there.
                if path.name in ("test_layout.py", "test_golden.py"):
                    continue
                text = path.read_text(errors="replace")
                if pattern_spec in text or pattern_path in text or "shared/" in text:
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], offenders


def test_no_long_functions_outside_the_kernels():
    """A function over 80 lines is a sequence of steps that deserve names (kernels excepted:
    ops/ keeps a kernel's loop nest whole, where splitting it would cost speed)."""
    long = []
    for path in PKG.rglob("*.py"):
        if "ops" in path.relative_to(PKG).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines})")
    assert long == [], long


def test_metrics_are_plain_numpy():
    """ssamba.metrics sits below every scoring task: numpy only, no torch, none of our layers."""
    tree = ast.parse((PKG / "metrics.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] == "torch"}, imported
    assert {m for m in imported if m.startswith("ssamba")} <= {"ssamba.errors"}, imported


def test_cli_modules_share_through_common_only():
    """A command module imports cli/common.py and no other command module: what two commands
    share lives in common, so a command can change without reaching into another. The package
    itself (the command table, build_parser) may be named, as vocabulary's generator does."""
    graph = _graph()
    shared = {"ssamba.cli", "ssamba.cli.common"}
    offenders = sorted(
        (m, t)
        for m, targets in graph.items()
        if m.startswith("ssamba.cli.")
        for t in targets
        if t.startswith("ssamba.cli.") and t not in shared
    )
    assert offenders == [], f"cli modules importing each other (share through common): {offenders}"


# What only the audio layer computes: the fbank's spectra (torch's FFT or STFT, a Kaldi or
# torchaudio front end) and the normalisation (fb - mean) / (2 * std), in any spelling of the 2;
# other modules call ssamba.audio for both. (numpy's FFT shapes the demo's synthetic noise.)
SPECTRAL_CALLS = ("torch.fft", "torch.stft")
FRONT_END_PACKAGES = {"torchaudio", "kaldi_native_fbank"}
NORMALISATION_FIELDS = {"norm_mean", "norm_std"}


def _is_two(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in (2, 2.0)


def _front_end_work(tree: ast.AST) -> list[str]:
    """Lines of ``tree`` that compute a spectrum the fbank way or the fbank normalisation."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node).startswith(SPECTRAL_CALLS):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in FRONT_END_PACKAGES for n in names):
                found.append(f"{node.lineno}: import {', '.join(names)}")
        if isinstance(node, ast.BinOp):
            right = node.right
            if isinstance(node.op, ast.Div) and isinstance(right, ast.BinOp):
                if isinstance(right.op, ast.Mult) and (_is_two(right.left) or _is_two(right.right)):
                    found.append(f"{node.lineno}: / (2 * ...)")
            for side in (node.left, node.right):
                if isinstance(side, ast.Attribute) and side.attr in NORMALISATION_FIELDS:
                    found.append(f"{node.lineno}: arithmetic on {side.attr}")
    return found


def test_only_the_audio_layer_computes_the_fbank_and_its_normalisation():
    offenders = {}
    for module, path in sorted(_modules().items()):
        if module == "ssamba.audio":
            continue
        found = _front_end_work(ast.parse(path.read_text()))
        if found:
            offenders[module] = found
    assert offenders == {}, (
        "fbank or normalisation computed outside ssamba.audio (use audio.fbank_frames, "
        f"audio.input_batch, audio.normalize_fbank): {offenders}"
    )


def test_the_front_end_check_finds_what_it_forbids():
    """The check above is not vacuous: it flags the spellings it exists for."""
    code = (
        "x = (fb - cfg.norm_mean) / (2.0 * cfg.norm_std)\n"
        "y = (v - m) / (2 * s)\n"
        "z = torch.fft.rfft(w)\n"
        "import torchaudio\n"
        "noise = np.fft.irfft(spec, n)\n"
    )
    found = _front_end_work(ast.parse(code))
    assert any("/ (2" in f for f in found) and any("norm_mean" in f for f in found)
    assert any("rfft" in f for f in found) and any("torchaudio" in f for f in found)
    assert not any("np.fft" in f for f in found)
    assert _front_end_work(ast.parse("loss = a / (3 * b) + 2.0 * l2 * w")) == []


def _documented_layers() -> dict[str, int]:
    """``{module: layer}`` from the layer table of docs/architecture.md (its modules column)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0][:1].isdigit():
            continue
        layer = int(cells[0].split(".")[0])
        for name in (part.strip("`") for part in cells[1].split(", ")):
            stem = name.rstrip("/").removesuffix(".py")
            layers["ssamba" if stem == "__init__" else f"ssamba.{stem.replace('/', '.')}"] = layer
    return layers


def test_the_documented_layer_table_is_the_one_enforced():
    documented = _documented_layers()
    enforced = {m: layer for m, layer in LAYERS.items() if m != "ssamba"}  # "ssamba": the rest
    missing = {m: layer for m, layer in enforced.items() if documented.get(m) != layer}
    assert missing == {}, f"LAYERS entries the table in docs/architecture.md lacks: {missing}"
    wrong = {m: (layer, _layer(m)) for m, layer in documented.items() if _layer(m) != layer}
    assert wrong == {}, f"modules the table puts in another layer than LAYERS: {wrong}"
    # and the table names every module and package at the top of ssamba
    top = {f"ssamba.{p.stem}" for p in PKG.glob("*.py") if p.stem != "__init__"}
    top |= {f"ssamba.{p.name}" for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    assert top - set(documented) == set(), (
        f"not in the layer table: {sorted(top - set(documented))}"
    )
