"""The import graph: dependencies point one way (cli -> module -> models, data, metrics -> torch/timm).

Walks every module of the package with `ast` and checks each `mtcp` import against the layer rules
below: a module may import its own layer or lower ones, never a higher one; the network (`models`)
imports nothing about training, data or evaluation.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "mtcp"

#: lowest first; a module's layer is that of its longest matching prefix
LAYERS: list[tuple[str, ...]] = [
    ("mtcp.labels",),
    ("mtcp.models", "mtcp.losses", "mtcp.metrics", "mtcp.optim", "mtcp.visualize", "mtcp.writers"),
    ("mtcp.tasks",),
    ("mtcp.data", "mtcp.balancers"),
    ("mtcp.module", "mtcp.callbacks", "mtcp.checkpoint_io"),
    ("mtcp.bench", "mtcp.export"),
    ("mtcp.cli", "mtcp.__main__", "mtcp.study"),
]
#: what the network must never know about
NOT_FOR_MODELS = ("mtcp.tasks", "mtcp.losses", "mtcp.metrics", "mtcp.data", "mtcp.module", "mtcp.balancers",
                  "mtcp.callbacks", "mtcp.cli", "mtcp.bench", "mtcp.visualize")


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The `mtcp...` modules imported anywhere in ``path`` (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mtcp"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtcp") and node.level == 0:
            if node.module == "mtcp":  # from mtcp import tasks
                found.update(f"mtcp.{a.name}" for a in node.names)
            else:
                found.add(node.module)
    return found


def _layer(module: str) -> int:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), i
    if layer is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py::LAYERS: place it")
    return layer


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _name(p) != "mtcp")


@pytest.mark.parametrize("path", MODULES, ids=[_name(p) for p in MODULES])
def test_no_module_imports_a_layer_above_it(path):
    me = _name(path)
    above = sorted(m for m in _imports(path) if m != "mtcp" and _layer(m) > _layer(me))
    assert not above, f"{me} (layer {_layer(me)}) imports {above} from a higher layer"


@pytest.mark.parametrize("path", [p for p in MODULES if _name(p).startswith("mtcp.models")],
                         ids=lambda p: _name(p))
def test_the_network_knows_nothing_about_training_data_or_metrics(path):
    bad = sorted(m for m in _imports(path) if m.startswith(NOT_FOR_MODELS))
    assert not bad, f"{_name(path)} imports {bad}"


def test_plug_ins_do_not_import_their_host():
    for folder in ("balancers", "data/sources"):
        for path in (PACKAGE / folder).rglob("*.py"):
            assert not {m for m in _imports(path) if m.startswith(("mtcp.module", "mtcp.cli"))}, _name(path)


def test_the_rules_catch_a_wrong_arrow(tmp_path):
    bad = tmp_path / "heads.py"
    bad.write_text("from mtcp.tasks import get_task\n")
    assert _imports(bad) == {"mtcp.tasks"} and _layer("mtcp.tasks") > _layer("mtcp.models.heads")


def test_every_cited_document_is_in_the_repository():
    """Docstrings, configs, notebooks and docs cite only documents that ship with the project."""
    globs = ("src/**/*.py", "tests/**/*.py", "configs/**/*.yaml", "notebooks/*.ipynb", "docs/*.md")
    files = [*(p for g in globs for p in ROOT.glob(g)), ROOT / "README.md", ROOT / "Makefile"]
    # docs/<name>.md or an upper-case document name such as README.md; lower-case bare names are outputs
    cited = re.compile(r"(?<![\w/.-])(docs/[\w-]+\.md|[A-Z][A-Z_-]*\.md)\b")
    missing = set()
    for path in files:
        for name in cited.findall(path.read_text()):
            if not any((base / name).is_file() for base in (ROOT, ROOT / "docs", path.parent)):
                missing.add(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, sorted(missing)


def test_every_cited_test_file_exists():
    """README, docs and docstrings point at tests by path; those paths must survive test reorganisations."""
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("src/**/*.py"), *ROOT.glob("configs/**/*.yaml")]
    missing = {f"{p.relative_to(ROOT)}: {name}" for p in files
               for name in re.findall(r"\btests/[\w/]+\.py", p.read_text()) if not (ROOT / name).is_file()}
    assert not missing, sorted(missing)
