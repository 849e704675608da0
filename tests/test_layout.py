"""The repository's layout as promised: stages import one way, nothing generic is installed at the top level, no
private API of a dependency is used."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The stages in the order they feed each other; a module may import its own stage and those before it. `files`,
#: `workers` and `device` are helpers every stage may use; `h36m_tools` (the format) and `model` (the network) sit below
#: every stage.
ORDER = ("files", "workers", "device", "synth", "extract", "interchange", "shards", "loader", "train", "predict",
         "evaluate", "demo", "cli")


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level and inside functions), as absolute dotted names."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:      # relative: resolve against the file's package
                pkg = ("h36m." + ".".join(path.relative_to(ROOT).with_suffix("").parts)).split(".")
                base = pkg[: len(pkg) - node.level]
                out.add(".".join(base + ([node.module] if node.module else [])))
            else:
                out.add(node.module)
    return out


def _rank(module: str) -> int | None:
    """The stage of an `h36m.*` module (None: not a stage)."""
    parts = module.split(".")
    if parts[:2] == ["h36m", "cli"]:
        return ORDER.index("cli")
    if parts[:2] == ["h36m", "pipelines"] and len(parts) > 2 and parts[2] != "__init__":
        assert parts[2] in ORDER, f"{module}: a stage this test does not know: add it to ORDER"
        return ORDER.index(parts[2])
    return None


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_stages_import_one_way():
    files = _sources("pipelines") + [ROOT / "cli.py"]
    assert len(files) > 20
    upward = []
    for f in files:
        rel = f.relative_to(ROOT)
        own = _rank("h36m." + ".".join(rel.with_suffix("").parts))
        for m in _imports(f):
            r = _rank(m)
            if own is not None and r is not None and r > own:
                upward.append(f"{rel} imports {m}")
    assert not upward, "imports against the stage order:\n" + "\n".join(upward)


def test_format_and_model_import_no_stage():
    for folder, allowed in (("h36m_tools", ("h36m.h36m_tools",)), ("model", ("h36m.model", "h36m.h36m_tools"))):
        for f in _sources(folder):
            bad = [m for m in _imports(f) if m.split(".")[0] in ("h36m", "pipelines", "cli", "model", "h36m_tools")
                   and not m.startswith(allowed)]
            assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_every_import_is_under_the_h36m_namespace():
    generic = ("pipelines", "model", "cli", "h36m_tools")
    for f in _sources("pipelines") + _sources("model") + _sources("h36m_tools") + _sources("tests") + \
            _sources("bench") + [ROOT / "cli.py"]:
        bad = [m for m in _imports(f) if m.split(".")[0] in generic]
        assert not bad, f"{f.relative_to(ROOT)} imports {bad} outside the h36m namespace"


def test_shard_format_and_dataset_format_import_without_their_writers():
    for module, writer in (("h36m.pipelines.shards.sample", "h36m.pipelines.shards.writer"),
                           ("h36m.pipelines.extract.dataset", "h36m.pipelines.extract.extract")):
        code = f"import sys, {module}; print({writer!r} in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "False", f"importing {module} imports {writer}"


@pytest.mark.parametrize("private", ["webdataset.filters._", "._typed_storage(", "._new_shared(",
                                     "from webdataset.filters import _"])
def test_no_private_api_of_a_dependency(private):
    hits = [str(f.relative_to(ROOT)) for f in _sources("pipelines") + _sources("model") + _sources("h36m_tools")
            if private in f.read_text()]
    assert not hits, f"{private!r} in {hits}"


def test_nothing_generic_is_installed_at_the_top_level(tmp_path):
    """From a folder holding a `model.py` of the user's own, the installed package still imports its own model."""
    (tmp_path / "model.py").write_text("raise SystemExit('the user model.py was imported')\n")
    (tmp_path / "cli.py").write_text("raise SystemExit('the user cli.py was imported')\n")
    code = ("import h36m, h36m.model, h36m.cli, importlib.util as u; "
            "print(h36m.__version__, [n for n in ('model', 'cli', 'pipelines', 'h36m_tools') "
            "if u.find_spec(n) and 'site-packages' in (u.find_spec(n).origin or '')])")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert res.returncode == 0, res.stderr
    version, installed = res.stdout.split(" ", 1)
    assert version[0].isdigit() and installed.strip() == "[]"
    res = subprocess.run([sys.executable, "-m", "h36m", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0 and "Usage:" in res.stdout, res.stderr
