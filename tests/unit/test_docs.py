"""docs/recipes.md documents every recipe field once and is what docs/gen_recipes.py generates."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from imgcompress.recipe import Recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "recipes.md"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("imgcompress_docs_gen_recipes", ROOT / "docs" / "gen_recipes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _all_models(model: type[BaseModel], seen: list[type[BaseModel]] | None = None) -> list[type[BaseModel]]:
    """Every pydantic model reachable from ``model``'s fields (independently of the generator)."""
    seen = seen if seen is not None else []
    if model in seen:
        return seen
    seen.append(model)

    def walk(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            _all_models(tp, seen)
        for arg in getattr(tp, "__args__", ()) or ():
            walk(arg)
        for meta in getattr(tp, "__metadata__", ()) or ():
            walk(meta)

    for f in model.model_fields.values():
        walk(f.annotation)
    return seen


def _section(text: str, path: str) -> str:
    """The text under the heading for ``path`` up to the next heading of any level."""
    m = re.search(rf"^#+ `{re.escape(path)}`\n(.*?)(?=^#+ |\Z)", text, flags=re.S | re.M)
    assert m, f"no section for {path}"
    return m.group(1)


def test_recipes_md_is_up_to_date(gen: ModuleType) -> None:
    current = DOC.read_text(encoding="utf-8")
    assert gen.update(current) == current, "docs/recipes.md is stale: run python docs/gen_recipes.py"
    assert gen.main(["--check"]) == 0


def test_a_stale_doc_is_detected(gen: ModuleType) -> None:
    current = DOC.read_text(encoding="utf-8")
    stale = current.replace("| `percentile` |", "| `percentile_old` |", 1)
    assert stale != current and gen.update(stale) == current
    with pytest.raises(ValueError, match="markers"):
        gen.update(current.replace(gen.END, ""))


def test_every_field_has_a_description() -> None:
    missing = [f"{m.__name__}.{name}" for m in _all_models(Recipe) for name, f in m.model_fields.items()
               if name != "kind" and not (f.description or "").strip()]
    assert not missing, f"add Field(description=...) in imgcompress/recipe.py for: {', '.join(missing)}"


def test_every_field_is_documented_exactly_once(gen: ModuleType) -> None:
    models = _all_models(Recipe)
    sections = [s for s in gen.SECTIONS if s.model is not None]
    assert sorted(m.__name__ for m in models) == sorted(s.model.__name__ for s in sections)  # each model once
    text = DOC.read_text(encoding="utf-8")
    generated = text.split(gen.BEGIN, 1)[1].split(gen.END, 1)[0]
    for s in sections:
        body = generated.split("\n## top level\n", 1)[1].split("\n## ", 1)[0] if s.path == "top level" \
            else _section(generated, s.path)
        rows = re.findall(r"^\| `([^`]+)` \|", body, flags=re.M)
        expected = [f.alias or name for name, f in s.model.model_fields.items() if name != "kind"]
        assert rows == expected, s.path
        for name, f in s.model.model_fields.items():
            if name != "kind":
                assert (f.description or "").strip() in body, (s.path, name)


def test_no_stage_is_marked_reserved(gen: ModuleType) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "Reserved" not in text and "not implemented" not in text


def test_defaults_and_bounds_come_from_the_schema() -> None:
    text = DOC.read_text(encoding="utf-8")
    quantize, validate = _section(text, "quantize"), _section(text, "validate")
    assert "| `percentile` | float in (90, 100] | `99.999` |" in quantize
    assert "| `per_channel` | bool | `true` |" in quantize
    assert "| `repeats` | int in [3, 1000] | `20` |" in validate
    assert "| `threads` | int in [1, 256] | unset |" in validate


def test_examples_validate() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    recipes = [parse_recipe(b, source="docs/recipes.md") for b in blocks]
    full = yaml.safe_load(blocks[0])
    top = [f.alias or name for name, f in Recipe.model_fields.items()]
    assert sorted(full) == sorted(top), "the full example should show every top-level section"
    assert {st.kind for r in recipes for st in r.stages} == {"prune", "distill", "quantize", "precision"}
