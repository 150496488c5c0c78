"""The recipe: validated YAML that says what to do to a generator.

Every model is strict (``extra="forbid"``) and frozen; stages are tagged by their one
key (``- quantize: {...}``), so a typo fails with its location, e.g.
``stages.0.quantize.calibraton: Extra inputs are not permitted (line 4)``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError

STAGE_NAMES = ("prune", "distill", "quantize", "precision")
# Stages whose issue has not landed: the schema knows them, the pipeline refuses them.
NOT_IMPLEMENTED = {"prune": 3, "distill": 4, "precision": 5}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpecConfig(_Strict):
    """The input/output convention of a custom architecture (see `GeneratorSpec`)."""

    task: Literal["sr", "denoise", "translate", "generate"] = "translate"
    input_kind: Literal["image", "latent"] = "image"
    color: Literal["rgb", "y", "gray"] = "rgb"
    input_range: tuple[float, float] = (0.0, 1.0)
    output_range: tuple[float, float] = (0.0, 1.0)
    scale: Annotated[int, Field(ge=1, le=16)] = 1
    size_multiple: Annotated[int, Field(ge=1, le=256)] = 1
    latent_shape: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    default_size: Annotated[int, Field(ge=1, le=4096)] = 64


class ModelConfig(_Strict):
    """How to build the generator when the checkpoint does not say.

    ``arch``: a built-in name (``imgcompress inspect --archs`` lists them) or
    ``package.module:Class`` importable in your environment. ``kwargs`` go to the
    constructor (for built-ins they override what is inferred from tensor shapes).
    ``spec`` describes a custom class's inputs and outputs.
    """

    arch: Annotated[str, Field(min_length=1)]
    kwargs: dict[str, Any] = Field(default_factory=dict)
    spec: SpecConfig | None = None


class DataConfig(_Strict):
    """Where calibration and evaluation inputs come from, and how they are made.

    ``images``: a folder of images (PNG/JPEG/BMP/TIFF/WebP); none = the small set bundled
    with imgcompress. ``eval_images``: a separate folder for evaluation; none = a part of
    ``images`` kept apart from calibration. ``task`` overrides the model's (e.g. ``denoise``).
    """

    images: str | None = None
    eval_images: str | None = None
    task: Literal["auto", "sr", "denoise", "translate", "generate"] = "auto"
    noise_sigma: Annotated[float, Field(gt=0, le=1)] = 0.1
    crop: Annotated[int, Field(ge=8, le=4096)] = 96
    eval_crop: Annotated[int, Field(ge=8, le=4096)] | None = None
    max_eval_side: Annotated[int, Field(ge=8, le=8192)] = 512
    calibration_samples: Annotated[int, Field(ge=1, le=4096)] = 32
    eval_samples: Annotated[int, Field(ge=1, le=4096)] = 8
    seed: int = 0


class Quantize(_Strict):
    """Post-training static int8 quantization of the exported ONNX graph (QDQ)."""

    kind: Literal["quantize"] = "quantize"
    dtype: Literal["int8"] = "int8"
    backend: Literal["onnxruntime", "nncf"] = "onnxruntime"
    calibration: Literal["minmax", "percentile", "entropy"] = "percentile"
    percentile: Annotated[float, Field(gt=90, le=100)] = 99.999
    per_channel: bool = True
    symmetric_activations: bool = False
    op_types: list[str] | Literal["auto"] = "auto"
    exclude: list[str] = Field(default_factory=list)


class Prune(_Strict):
    """Structured channel pruning (torch-pruning). Reserved: lands with issue #3."""

    kind: Literal["prune"] = "prune"
    ratio: Annotated[float, Field(gt=0, lt=1)] | None = 0.5
    target_macs: Annotated[float, Field(gt=0, lt=1)] | None = None
    importance: Literal["l1", "l2", "taylor", "bn_scale", "lamp"] = "l2"
    iterative_steps: Annotated[int, Field(ge=1, le=100)] = 1
    round_to: Annotated[int, Field(ge=1, le=256)] | None = None
    ignore: list[str] = Field(default_factory=list)


class DistillLoss(_Strict):
    pixel: Literal["l1", "l2", "charbonnier"] = "l1"
    feature: Annotated[float, Field(ge=0)] = 0.0
    ssim: Annotated[float, Field(ge=0)] = 0.0


class Distill(_Strict):
    """Knowledge distillation into a student. Reserved: lands with issue #4."""

    kind: Literal["distill"] = "distill"
    student: Literal["pruned"] | ModelConfig = "pruned"
    steps: Annotated[int, Field(ge=1)] = 1000
    batch_size: Annotated[int, Field(ge=1)] = 16
    lr: Annotated[float, Field(gt=0)] = 2e-4
    loss: DistillLoss = Field(default_factory=DistillLoss)
    ema: Annotated[float, Field(ge=0, lt=1)] = 0.999
    checkpoint_every: Annotated[int, Field(ge=1)] = 250
    target_psnr: float | None = None


class Precision(_Strict):
    """fp16/bf16 graph with fp32 islands. Reserved: lands with issue #5."""

    kind: Literal["precision"] = "precision"
    dtype: Literal["fp16", "bf16"] = "fp16"
    keep_fp32: Literal["auto"] | list[str] = "auto"


Stage = Annotated[Union[Prune, Distill, Quantize, Precision], Field(discriminator="kind")]
TORCH_STAGES = ("prune", "distill")
ONNX_STAGES = ("quantize", "precision")


class ExportConfig(_Strict):
    """torch -> ONNX export (TorchScript exporter, dynamic batch and spatial axes)."""

    opset: Annotated[int, Field(ge=17, le=21)] = 17
    dynamic_batch: bool = True
    dynamic_spatial: bool = True
    tolerance: Annotated[float, Field(gt=0)] = 1e-3


class ValidateConfig(_Strict):
    """How speed is measured. ``size``: the image input side for speed (none = the
    model's default); ``batch``: the batch for speed; ``threads``: intra-op threads for
    torch and onnxruntime alike (none = all cores)."""

    warmup: Annotated[int, Field(ge=0, le=100)] = 3
    repeats: Annotated[int, Field(ge=3, le=1000)] = 20
    threads: Annotated[int, Field(ge=1, le=256)] | None = None
    batch: Annotated[int, Field(ge=1, le=256)] = 1
    size: Annotated[int, Field(ge=8, le=4096)] | None = None


class GateConfig(_Strict):
    """Thresholds on the final artifact; a missing threshold is not checked."""

    min_psnr: float | None = None
    min_ssim: Annotated[float, Field(ge=-1, le=1)] | None = None
    max_gt_psnr_drop: float | None = None
    min_speedup: Annotated[float, Field(gt=0)] | None = None


class Recipe(_Strict):
    """A whole recipe. Only ``stages`` is required."""

    version: Literal[1] = 1
    name: str | None = None
    model: ModelConfig | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    stages: Annotated[list[Stage], Field(min_length=1)]
    export: ExportConfig = Field(default_factory=ExportConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    gate: GateConfig = Field(default_factory=GateConfig)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("stages", mode="before")
    @classmethod
    def _tag_stages(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for i, item in enumerate(v):
            if isinstance(item, str) and item in STAGE_NAMES:
                item = {item: {}}
            if not isinstance(item, dict) or len(item) != 1:
                raise ValueError(
                    f"stage {i} must be a mapping with one key, the stage name "
                    f"({', '.join(STAGE_NAMES)}), e.g. '- quantize: {{calibration: percentile}}'"
                )
            (name, body), = item.items()
            if name not in STAGE_NAMES:
                raise ValueError(f"stage {i}: unknown stage {name!r}; expected one of {', '.join(STAGE_NAMES)}")
            if body is None:
                body = {}
            if not isinstance(body, dict):
                raise ValueError(f"stage {i} ({name}): its options must be a mapping, got {type(body).__name__}")
            if "kind" in body:
                raise ValueError(f"stage {i} ({name}): 'kind' is set by the stage key; remove it")
            out.append({**body, "kind": name})
        return out

    @model_validator(mode="after")
    def _order(self) -> "Recipe":
        seen_onnx = None
        for i, st in enumerate(self.stages):
            if st.kind in ONNX_STAGES:
                seen_onnx = seen_onnx or st.kind
            elif seen_onnx:
                raise ValueError(
                    f"stage {i} ({st.kind}) comes after {seen_onnx}: torch stages (prune, distill) "
                    "must come before graph stages (quantize, precision)"
                )
        return self

    @property
    def validate_config(self) -> ValidateConfig:
        return self.validate_


def _yaml_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or its deepest existing parent)."""
    node, line = root, None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(part):
                    nxt, line = v, k.start_mark.line + 1
                    break
            if nxt is None and part in STAGE_NAMES:
                # a stage tag in the pydantic location: `- quantize: {...}` -> its body
                for k, v in node.value:
                    if k.value == part:
                        nxt = v
            if nxt is None:
                return line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return line
    return (node.start_mark.line + 1) if node is not None else line


def _loc_str(loc: tuple[Any, ...]) -> str:
    parts = [("validate" if p == "validate_" else str(p)) for p in loc]
    return ".".join(parts) or "(top level)"


def parse_recipe(text: str, *, source: str = "<recipe>") -> Recipe:
    """Validate recipe YAML text; `RecipeError` names the location of the first problem."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"{source}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise RecipeError(f"{source}: the recipe is empty; it needs at least 'stages:'")
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the recipe must be a mapping with 'stages:', got a {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        # pydantic appends the union tag of a stage ("quantize") to the location; keep it,
        # it reads like the YAML (stages.0.quantize.calibration).
        line = _yaml_line(root, loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error" or err["type"] == "enum":
            msg = f"{msg}, got {err.get('input')!r}"
        more = f" (and {e.error_count() - 1} more problem{'s' if e.error_count() > 2 else ''})" if e.error_count() > 1 else ""
        where = f" (line {line})" if line else ""
        raise RecipeError(f"{source}: {_loc_str(loc)}: {msg}{where}{more}") from None


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe file. Raises `RecipeError`."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: no such recipe file; shipped recipes are in recipes/ (e.g. recipes/int8.yaml)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{p}: not a text file; a recipe is YAML") from None
    return parse_recipe(text, source=str(p))


def recipe_sha256(recipe: Recipe) -> str:
    """A stable hash of the recipe's validated content (not its formatting)."""
    return hashlib.sha256(recipe.model_dump_json(by_alias=True).encode()).hexdigest()


def check_implemented(recipe: Recipe, *, source: str = "<recipe>") -> None:
    """Refuse stages whose implementation has not landed yet, before any work starts."""
    for i, st in enumerate(recipe.stages):
        if st.kind in NOT_IMPLEMENTED:
            raise RecipeError(
                f"{source}: stages.{i}.{st.kind}: the '{st.kind}' stage is not implemented yet in this "
                f"version of imgcompress (tracked in issue #{NOT_IMPLEMENTED[st.kind]}); "
                "use a recipe with only 'quantize' stages, e.g. recipes/int8.yaml"
            )
