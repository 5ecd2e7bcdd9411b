"""kdtool's packages are layers (kdtool/__init__.py): a module imports from its own layer and those
below it, never from above, and nothing outside kdtool/bin imports an entry point. Read from every
module's source (ast), imports inside functions included."""
import ast

import pytest

from conftest import REPO

# the layer of each top-level part of kdtool, lowest first; parts of one layer may import each other
LAYERS = [
    {"errors", "utils"},
    {"data", "features", "tokens"},
    {"models"},
    {"kd", "train", "decode", "export", "scoring"},
    {"bin"},
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}
MODULES = sorted((REPO / "kdtool").rglob("*.py"))


def part_of(path):
    """The top-level part a file belongs to: kdtool/kd/terms/frame.py -> kd, kdtool/errors.py -> errors;
    None for kdtool/__init__.py."""
    rel = path.relative_to(REPO / "kdtool").with_suffix("").parts
    return None if rel == ("__init__",) else rel[0]


def kdtool_imports(path, source):
    """[(line, imported module)] of every kdtool import in a file's source; relative imports resolved."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(x for x in (base, node.module) if x)
            # ``from kdtool import bin`` imports the package kdtool.bin
            out += [(node.lineno, f"{module}.{a.name}" if module == "kdtool" else module) for a in node.names]
    return [(line, m) for line, m in out if m == "kdtool" or m.startswith("kdtool.")]


def violations(path, source=None):
    """The upward imports of one file (or of ``source`` as if it were that file) and its imports of
    kdtool.bin from outside bin, as messages."""
    source = path.read_text(encoding="utf-8") if source is None else source
    part, bad = part_of(path), []
    for line, module in kdtool_imports(path, source):
        target = module.split(".")[1] if "." in module else None
        where = f"{path.relative_to(REPO)}:{line}: imports {module}"
        if target is None:
            bad.append(f"{where} (import the module it needs, not the kdtool package)")
        elif target not in LAYER:
            bad.append(f"{where}: kdtool.{target} has no layer in tests/test_layering.py's LAYERS; add it")
        elif part is None:
            continue  # kdtool/__init__.py may name anything (it imports nothing today)
        elif target == "bin" and part != "bin":
            bad.append(f"{where}: nothing outside kdtool/bin imports an entry point; move what it needs down")
        elif LAYER[target] > LAYER[part]:
            bad.append(f"{where}: {part} (layer {LAYER[part]}) imports from {target} (layer {LAYER[target]}) above it")
    return bad


def test_every_part_has_a_layer():
    parts = {part_of(p) for p in MODULES} - {None}
    assert parts <= set(LAYER), sorted(parts - set(LAYER))
    assert len(MODULES) > 50  # the walk found the package


def test_no_upward_imports():
    bad = [msg for path in MODULES for msg in violations(path)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("from kdtool.bin.score import audio_seconds\n", "nothing outside kdtool/bin imports an entry point"),
    ("def f():\n    import kdtool.bin.train\n", "nothing outside kdtool/bin imports an entry point"),
    ("from kdtool import bin\n", "nothing outside kdtool/bin imports an entry point"),
    ("from ..bin import score\n", "nothing outside kdtool/bin imports an entry point"),
    ("from kdtool.kd.distill import distill\n", "models (layer 2) imports from kd (layer 3) above it"),
    ("from ..scoring import wer\n", "models (layer 2) imports from scoring (layer 3) above it"),
])
def test_the_check_finds_an_upward_import(source, expected):
    """The check itself can fail: a module of models/ (not written: its source is given) with each kind
    of bad import."""
    (msg,) = violations(REPO / "kdtool" / "models" / "_probe.py", source)
    assert expected in msg and "kdtool/models/_probe.py:" in msg


def test_lower_and_sideways_imports_pass():
    source = ("from kdtool.errors import ConfigError\nfrom kdtool.utils.jobs import job_slice\n"
              "from kdtool.models.build import build_model\nfrom kdtool.train.dataset import collate\n"
              "from . import ctc\n")
    assert violations(REPO / "kdtool" / "decode" / "_probe.py", source) == []
