"""The package's shape: core's groups stack (each imports only those below it), and cli and space stay thin."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pneumocam
from pneumocam.paths import REPO_ROOT

CORE = Path(pneumocam.__file__).parent
#: core's groups, lowest first; a module may import its own group and those before it ("" is core's own root).
GROUPS = pneumocam.GROUPS


def core_imports(path: Path) -> set[str]:
    """The core groups a module imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pneumocam":
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("pneumocam.")]
        found |= {n if n in GROUPS else "" for n in names}
    return found


def test_core_groups_import_only_themselves_and_the_groups_below() -> None:
    rank = {g: i for i, g in enumerate(GROUPS)}
    upward = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE)
        if rel == Path("__init__.py"):
            continue  # the package's front door, pneumocam.load(): lazy imports only (the next test)
        group = rel.parts[0] if len(rel.parts) > 1 else ""
        for used in core_imports(path):
            if rank[used] > rank[group]:
                upward.append(f"{rel} imports pneumocam.{used}")
    assert not upward, upward
    on_disk = {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert on_disk == set(GROUPS) - {""}


def test_the_package_imports_no_group_until_a_model_is_loaded() -> None:
    """``import pneumocam`` is instant: its only imports of the groups sit inside ``load``."""
    tree = ast.parse((CORE / "__init__.py").read_text())
    top = [n for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("pneumocam.")]
    assert not top, "pneumocam/__init__.py imports a group at import time"
    code = "import sys, pneumocam; print(sorted(m for m in sys.modules if m.startswith(('pneumocam.', 'tensorflow'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_and_space_hold_no_model_or_image_logic() -> None:
    """Thin front ends: neither imports TensorFlow, Keras, OpenCV or NumPy itself."""
    heavy = {"tensorflow", "keras", "cv2", "numpy"}
    for path in [*sorted((REPO_ROOT / "cli").glob("*.py")), REPO_ROOT / "space" / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & heavy, path
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in heavy, path
