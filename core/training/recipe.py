"""Training recipes: named files of settings that ``train --recipe`` starts from, recorded in ``model.json``.

A recipe names only what differs from the dataclass defaults of :mod:`pneumocam.config`
(which are the seed project's recipe), so each default is stated once. The
recipes we ship live in ``core/training/recipes/``; any JSON file of the same shape is a
recipe too. Flags given on the command line override the recipe, and
``model.json`` records both (``training.recipe``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from pneumocam.config import ArchConfig, InputSpec, TrainConfig
from pneumocam.errors import InputError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
#: The recipe of the published model in weights/.
PUBLISHED_RECIPE = "pneumocam"
#: The seed project's recipe: the dataclass defaults, and what ``train`` runs without ``--recipe``.
SEED_RECIPE = "seed"
_SECTIONS = {"train": TrainConfig, "arch": ArchConfig, "input": InputSpec}


@dataclass(frozen=True)
class Recipe:
    """The three settings objects a training starts from, and where they came from."""

    name: str
    description: str
    train: TrainConfig
    arch: ArchConfig
    input: InputSpec
    sha256: str

    def with_overrides(self, overrides: dict[str, dict[str, Any]]) -> Recipe:
        """The recipe with some settings replaced (``{"train": {...}, "arch": {...}, "input": {...}}``)."""
        try:
            return replace(
                self,
                train=replace(self.train, **overrides.get("train", {})),
                arch=replace(self.arch, **overrides.get("arch", {})),
                input=replace(self.input, **overrides.get("input", {})),
            )
        except TypeError as exc:
            raise InputError(f"recipe override: {exc}") from exc

    def record(self, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What ``model.json`` says about the recipe: its name, file hash and what the command line changed."""
        return {"name": self.name, "sha256": self.sha256, "overrides": {k: v for k, v in overrides.items() if v}}


def available_recipes() -> list[str]:
    """The names of the recipes shipped in ``core/training/recipes/``."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def recipe_path(name_or_file: str | Path) -> Path:
    """A shipped recipe's file, or the file given; a one-line error for neither."""
    shipped = RECIPES_DIR / f"{name_or_file}.json"
    if shipped.is_file():
        return shipped
    path = Path(name_or_file)
    if path.is_file():
        return path
    raise InputError(f"no recipe {str(name_or_file)!r}: use a file or one of {', '.join(available_recipes())}")


def load_recipe(name_or_file: str | Path = SEED_RECIPE) -> Recipe:
    """Read a recipe by name or path; unknown sections or settings are refused with their name."""
    path = recipe_path(name_or_file)
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"recipe {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InputError(f"recipe {path} must be a JSON object")
    unknown = set(doc) - {*_SECTIONS, "description"}
    if unknown:
        raise InputError(f"recipe {path}: unknown section(s) {', '.join(sorted(unknown))}")
    parts = {}
    for section, cls in _SECTIONS.items():
        values = cls.current_names(doc.get(section, {}))
        names = {f.name for f in fields(cls)}
        if bad := sorted(set(values) - names):
            raise InputError(f"recipe {path}: unknown {section} setting(s) {', '.join(bad)}")
        parts[section] = cls.from_dict(values)
    return Recipe(
        name=path.stem if path.parent == RECIPES_DIR else str(path),
        description=str(doc.get("description", "")),
        sha256=hashlib.sha256(raw).hexdigest(),
        **parts,
    )
