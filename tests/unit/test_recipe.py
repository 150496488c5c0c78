"""The recipe schema: shipped recipes validate, errors name their location and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from imgcompress.errors import RecipeError
from imgcompress.recipe import (
    Quantize,
    Recipe,
    load_recipe,
    parse_recipe,
    recipe_sha256,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*ROOT.glob("recipes/*.yaml"), *ROOT.glob("recipes/*.yml")])


def _error(text: str) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, source="r.yaml")
    return str(info.value)


def _line(msg: str) -> int | None:
    m = re.search(r"\(line (\d+)\)", msg)
    return int(m.group(1)) if m else None


# --- shipped recipes ---------------------------------------------------------------


def test_recipes_are_shipped() -> None:
    assert ROOT / "recipes" / "int8.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.stages


# --- error locations -----------------------------------------------------------------

LOCATED = [
    # (yaml, location regex, line)
    ("name: a\nstages:\n  - quantize:\n      backend: onnxruntime\n      calibraton: minmax\n",
     r"stages\.0\.quantize\.calibraton: Extra inputs are not permitted", 5),
    ("stages:\n  - quantize: {}\n  - quantize:\n      percentile: 50\n",
     r"stages\.1\.quantize\.percentile: Input should be greater than 90", 4),
    ("stages:\n  - quantize:\n      per_channel: maybe\n",
     r"stages\.0\.quantize\.per_channel: Input should be a valid boolean", 3),
    ("stages:\n  - quantize:\n      calibration: median\n",
     r"stages\.0\.quantize\.calibration: Input should be 'minmax', 'percentile' or 'entropy', got 'median'", 3),
    ("stages:\n  - quantize:\n      exclude: conv1\n",
     r"stages\.0\.quantize\.exclude: Input should be a valid list", 3),
    ("stages: [{quantize: {calibraton: minmax}}]\n",
     r"stages\.0\.quantize\.calibraton: Extra inputs are not permitted", 1),
    ("stages:\n  - quantize: {}\nexprot: {opset: 17}\n", r"exprot: Extra inputs are not permitted", 3),
    ("stages:\n  - quantize: {}\nvalidate:\n  warmup: 1\n  repeats: 1\n",
     r": validate\.repeats: Input should be greater than or equal to 3", 5),
    ("stages:\n  - quantize: {}\ngate:\n  min_ssim: 1.5\n", r"gate\.min_ssim: Input should be less than or equal to 1", 4),
    ("stages:\n  - quantize: {}\ngate:\n  min_psnr: high\n", r"gate\.min_psnr: Input should be a valid number", 4),
    ("stages:\n  - quantize: {}\nmodel:\n  arch: espcn\n  kwarg: {scale: 2}\n",
     r"model\.kwarg: Extra inputs are not permitted", 5),
    ("stages:\n  - quantize: {}\nmodel:\n  arch: a.b:C\n  spec:\n    scale: 0\n",
     r"model\.spec\.scale: Input should be greater than or equal to 1", 6),
    ("stages:\n  - quantize: {}\ndata:\n  images: imgs\n  noise_sigma: 0\n",
     r"data\.noise_sigma: Input should be greater than 0", 5),
    ("version: 2\nstages:\n  - quantize: {}\n", r"version: Input should be 1, got 2", 1),
    ("name: a\n", r"stages: Field required", 1),
    ("stages: []\n", r"stages: List should have at least 1 item", 1),
    ("stages:\n  - quantise: {}\n", r"stages\.0: unknown stage 'quantise'; expected one of prune, distill, quantize, precision", 2),
    ("stages:\n  - foo\n", r"stages\.0: a stage must be a mapping with one key, the stage name", 2),
    ("stages:\n  - quantize: 3\n", r"stages\.0: the options of 'quantize' must be a mapping, got int", 2),
    ("stages:\n  - quantize: {kind: precision}\n", r"stages\.0: 'kind' is set by the stage key 'quantize'", 2),
    ("stages:\n  - {quantize: {}, precision: {}}\n", r"stages\.0: a stage must be a mapping with one key", 2),
]


@pytest.mark.parametrize(("text", "where", "line"), LOCATED, ids=[w.split(":")[0].strip(r"\: ") for _, w, _ in LOCATED])
def test_error_names_location_and_line(text: str, where: str, line: int | None) -> None:
    msg = _error(text)
    assert msg.startswith("r.yaml: "), msg
    assert re.search(where, msg), msg
    assert _line(msg) == line, msg


def test_unknown_key_with_block_value_points_at_the_key() -> None:
    msg = _error("stages:\n  - quantize: {}\nexprot:\n  opset: 17\n")
    assert "exprot: Extra inputs are not permitted" in msg
    assert _line(msg) == 3, msg


def test_one_problem_is_named_and_the_rest_counted() -> None:
    msg = _error("stages:\n  - quantize:\n      calibraton: minmax\n      per_chanel: true\n")
    assert "stages.0.quantize.calibraton" in msg and "(and 1 more problem)" in msg


@pytest.mark.parametrize("bad", ["quantise: {}", "foo"])
def test_bad_later_stage_points_at_its_own_line(bad: str) -> None:
    msg = _error(f"stages:\n  - quantize: {{}}\n  - {bad}\n")
    assert "stages.1: " in msg
    assert _line(msg) == 3, msg


def test_yaml_syntax_error_names_line() -> None:
    msg = _error("stages:\n  - quantize: {calibration: minmax\n")
    assert re.search(r"r\.yaml: not valid YAML at line \d+, column \d+", msg), msg


@pytest.mark.parametrize(("text", "what"), [("", "empty"), ("# only a comment\n", "empty"),
                                            ("- quantize\n", "must be a mapping"), ("quantize\n", "must be a mapping")])
def test_not_a_recipe(text: str, what: str) -> None:
    assert what in _error(text)


def test_load_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81stages")
    with pytest.raises(RecipeError, match=r"bin\.yaml: not a text file"):
        load_recipe(binary)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - quantize:\n      calibraton: minmax\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(bad))}: stages\.0\.quantize\.calibraton: .*\(line 3\)"):
        load_recipe(bad)


# --- bare-string stages and stage order ----------------------------------------------


@pytest.mark.parametrize("form", ["- quantize", "- quantize:", "- quantize: {}", "- {quantize: null}"])
def test_stage_without_options_gets_defaults(form: str) -> None:
    recipe = parse_recipe(f"stages:\n  {form}\n")
    assert recipe.stages == [Quantize()]


def test_stage_options_are_applied() -> None:
    recipe = parse_recipe("stages:\n  - quantize:\n      calibration: minmax\n      per_channel: false\n      exclude: [/tail/Conv]\n")
    (st,) = recipe.stages
    assert (st.kind, st.calibration, st.per_channel, st.exclude) == ("quantize", "minmax", False, ["/tail/Conv"])


def test_torch_stages_before_graph_stages_is_valid() -> None:
    recipe = parse_recipe("stages:\n  - prune: {ratio: 0.3}\n  - distill: {steps: 10}\n  - quantize\n  - precision\n")
    assert [st.kind for st in recipe.stages] == ["prune", "distill", "quantize", "precision"]


@pytest.mark.parametrize(("stages", "index", "kind", "after"), [
    (["quantize", "prune"], 1, "prune", "quantize"),
    (["prune", "quantize", "distill"], 2, "distill", "quantize"),
])
def test_torch_stage_after_graph_stage_is_refused(stages: list[str], index: int, kind: str, after: str) -> None:
    text = "stages:\n" + "".join(f"  - {s}\n" for s in stages)
    msg = _error(text)
    assert f"stages.{index}: '{kind}' comes after '{after}'" in msg
    assert "torch stages (prune, distill) must come before graph stages (quantize, precision)" in msg


@pytest.mark.parametrize("after", ["quantize", "precision"])
def test_a_graph_stage_after_precision_is_refused(after: str) -> None:
    msg = _error(f"stages:\n  - precision\n  - {after}\n")
    assert f"stages.1: '{after}' comes after 'precision': the fp16/bf16 graph is final; put 'precision' last" in msg


def test_stage_order_error_points_at_the_stage() -> None:
    msg = _error("name: a\nstages:\n  - quantize\n  - prune\n")
    assert re.search(r"r\.yaml: stages\.1\b", msg), msg
    assert _line(msg) == 4, msg


# --- frozen, aliases, hashing -----------------------------------------------------------


def test_models_are_frozen() -> None:
    recipe = parse_recipe("stages:\n  - quantize\ngate: {min_psnr: 30}\n")
    with pytest.raises(ValidationError, match="frozen"):
        recipe.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        recipe.stages[0].percentile = 99.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        recipe.gate.min_psnr = 10.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        recipe.data.seed = 3  # type: ignore[misc]
    assert recipe.gate.min_psnr == 30


def test_validate_section_reads_through_its_alias() -> None:
    recipe = parse_recipe("stages: [quantize]\nvalidate:\n  repeats: 7\n  threads: 2\n")
    assert (recipe.validate_config.repeats, recipe.validate_config.threads) == (7, 2)
    assert isinstance(recipe, Recipe)


SAME = [
    "name: n\nstages:\n  - quantize:\n      calibration: minmax\ngate:\n  min_psnr: 30\n",
    "# a comment\ngate: {min_psnr: 30.0}\nstages: [{quantize: {calibration: minmax}}]\nname: n\n",
    "name: n\nversion: 1\nstages:\n  - quantize:\n      calibration: minmax   # inline\n      percentile: 99.999\n"
    "      per_channel: true\n      backend: onnxruntime\ngate:\n  min_psnr: 30\n  min_ssim: null\n",
]
DIFFERENT = [
    "name: n\nstages:\n  - quantize:\n      calibration: entropy\ngate:\n  min_psnr: 30\n",
    "name: m\nstages:\n  - quantize:\n      calibration: minmax\ngate:\n  min_psnr: 30\n",
    "name: n\nstages:\n  - quantize:\n      calibration: minmax\ngate:\n  min_psnr: 31\n",
    "name: n\nstages:\n  - quantize:\n      calibration: minmax\n  - precision\ngate:\n  min_psnr: 30\n",
    "name: n\nstages:\n  - quantize:\n      calibration: minmax\ngate:\n  min_psnr: 30\nvalidate: {repeats: 21}\n",
    "name: n\nstages:\n  - quantize:\n      calibration: minmax\ngate:\n  min_psnr: 30\ndata: {seed: 1}\n",
]


def test_recipe_sha256_ignores_formatting() -> None:
    hashes = {recipe_sha256(parse_recipe(t)) for t in SAME}
    assert len(hashes) == 1
    (h,) = hashes
    assert re.fullmatch(r"[0-9a-f]{64}", h)


def test_recipe_sha256_changes_with_content() -> None:
    base = recipe_sha256(parse_recipe(SAME[0]))
    hashes = [recipe_sha256(parse_recipe(t)) for t in DIFFERENT]
    assert base not in hashes
    assert len(set(hashes)) == len(DIFFERENT)


def test_recipe_sha256_of_a_file_is_stable(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(SAME[0])
    assert recipe_sha256(load_recipe(p)) == recipe_sha256(load_recipe(p)) == recipe_sha256(parse_recipe(SAME[1]))
