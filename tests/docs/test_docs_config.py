"""docs/configuration.md is generated from the config classes (docs/gen_config.py): the committed page must be what
the generator writes now, and it must list every key of the config tree with its default."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

from core.config import Config

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"


def generator():
    spec = importlib.util.spec_from_file_location("gen_config", ROOT / "docs" / "gen_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def leaf_keys(node, path=()) -> dict[str, object]:
    """Every key of the config tree whose value is not a section, with its default."""
    out = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = (*path, f.name)
        out.update(leaf_keys(value, key) if dataclasses.is_dataclass(value) else {".".join(key): value})
    return out


def test_the_committed_configuration_page_is_what_the_generator_writes_now():
    committed = PAGE.read_text(encoding="utf-8")
    assert committed == generator().render(), "docs/configuration.md is stale: run .venv/bin/python docs/gen_config.py"


def test_the_page_has_a_row_for_every_key_with_its_default():
    rows = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells[2]
    keys = leaf_keys(Config())
    assert len(keys) > 150 and set(keys) <= set(rows)
    for key, default in keys.items():
        assert rows[key] == f"`{json.dumps(default, ensure_ascii=False)}`", key
