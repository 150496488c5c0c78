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
from pydantic_core import PydanticCustomError

from .errors import RecipeError

STAGE_NAMES = ("prune", "distill", "quantize", "precision")
# Stages whose issue has not landed: the schema knows them, the pipeline refuses them.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpecConfig(_Strict):
    """The input/output convention of a custom architecture (see `GeneratorSpec`)."""

    task: Literal["sr", "denoise", "translate", "generate"] = Field(
        "translate",
        description=(
            "How evaluation inputs are made: `sr` (bicubic-downscaled images; the image is ground truth), "
            "`denoise` (images plus Gaussian noise; the clean image is ground truth), `translate` (images as "
            "they are; no ground truth), `generate` (latents from N(0, 1); no ground truth)."
        ),
    )
    input_kind: Literal["image", "latent"] = Field(
        "image",
        description="`image`: the model takes (N, C, H, W) images; `latent`: it takes (N, *latent_shape) latents.",
    )
    color: Literal["rgb", "y", "gray"] = Field(
        "rgb",
        description="Channels in and out: `rgb` (3), `y` (BT.601 luma of RGB, 1) or `gray` (1).",
    )
    input_range: tuple[float, float] = Field(
        (0.0, 1.0),
        description="Value range of the input pixels, e.g. [-1, 1].",
    )
    output_range: tuple[float, float] = Field(
        (0.0, 1.0),
        description="Value range of the output pixels; PSNR/SSIM map it to [0, 1].",
    )
    scale: Annotated[int, Field(ge=1, le=16)] = Field(
        1,
        description="Output side / input side (e.g. 4 for a x4 super-resolution model).",
    )
    size_multiple: Annotated[int, Field(ge=1, le=256)] = Field(
        1,
        description="Input sides must be a multiple of this.",
    )
    latent_shape: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(
        None,
        description=(
            "Per-sample shape of a latent input, e.g. [100, 1, 1]; required when input_kind is latent, and "
            "only then."
        ),
    )
    default_size: Annotated[int, Field(ge=1, le=4096)] = Field(
        64,
        description="Image input side used for export, MACs and speed when none is given.",
    )


class ModelConfig(_Strict):
    """How to build the generator when the checkpoint does not say.

    ``arch``: a built-in name (``imgcompress inspect --archs`` lists them) or
    ``package.module:Class`` importable in your environment. ``kwargs`` go to the
    constructor (for built-ins they override what is inferred from tensor shapes).
    ``spec`` describes a custom class's inputs and outputs.
    """

    arch: Annotated[
        str,
        Field(
            min_length=1,
            description=(
                "A built-in architecture (`imgcompress inspect --archs` lists them), `spandrel`, or "
                "`package.module:Class` importable in your environment."
            ),
        ),
    ]
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Constructor arguments; for built-ins they override what is inferred from the tensor shapes.",
    )
    spec: SpecConfig | None = Field(
        None,
        description="The input/output convention of a custom class; for a built-in, replaces its own.",
    )


class Diffusion(_Strict):
    """Inputs of a diffusion UNet (task ``diffusion``): the noise schedule that makes noisy
    latents, how calibration and evaluation spread over it, and the end-to-end sampling check.

    The schedule is diffusers' DDIMScheduler built from ``scheduler`` (a scheduler_config.json,
    or a folder holding one) or, unset, from the fields below; a UNet folder inside a pipeline
    folder uses its sibling ``scheduler/`` unless ``scheduler`` is set."""

    scheduler: str | None = Field(
        None,
        description=(
            "A diffusers scheduler_config.json (or the folder holding it) whose schedule and prediction "
            "type are used. Unset: the UNet folder's sibling scheduler/ when it is in a pipeline folder, "
            "else train_timesteps, beta_schedule, beta_start, beta_end and prediction_type below."
        ),
    )
    train_timesteps: Annotated[int, Field(ge=2, le=100000)] = Field(
        1000, description="Timesteps of the training schedule."
    )
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field(
        "linear", description="How the noise variance grows over the schedule (Stable Diffusion: scaled_linear)."
    )
    beta_start: Annotated[float, Field(gt=0, lt=1)] = Field(0.0001, description="First beta of the schedule.")
    beta_end: Annotated[float, Field(gt=0, lt=1)] = Field(0.02, description="Last beta of the schedule.")
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = Field(
        "epsilon", description="What the UNet predicts: the noise, v, or the clean latent."
    )
    buckets: Annotated[int, Field(ge=1, le=100)] = Field(
        4,
        description=(
            "Timestep buckets: the schedule is split into this many equal ranges; calibration and evaluation "
            "inputs are spread evenly over them and drift is reported per bucket."
        ),
    )
    sampling_steps: Annotated[int, Field(ge=0, le=1000)] = Field(
        10,
        description=(
            "DDIM steps of the end-to-end check: the original and each compressed UNet sample from the same "
            "noise (eta 0, fixed seed) and the final latents (decoded by the VAE when data.encoder is a "
            "diffusers autoencoder folder) are compared. 0: no end-to-end check."
        ),
    )
    sampling_samples: Annotated[int, Field(ge=1, le=64)] = Field(
        2, description="Samples drawn in the end-to-end check (each from its own seeded noise)."
    )


class DataConfig(_Strict):
    """Where calibration and evaluation inputs come from, and how they are made.

    ``images``: a folder of images (PNG/JPEG/BMP/TIFF/WebP); none = the small set bundled
    with imgcompress. ``eval_images``: a separate folder for evaluation; none = a part of
    ``images`` kept apart from calibration. ``task`` overrides the model's (e.g. ``denoise``).
    ``encoder``: for a latent decoder, the encoder that turns those images into realistic
    latents; none = synthetic latents from N(0, ``latent_sigma``).
    """

    images: str | None = Field(
        None,
        description=(
            "Folder of images (PNG/JPEG/BMP/TIFF/WebP) for calibration, and for evaluation unless eval_images "
            "is set; a relative path is taken from the current directory. Unset: the small set bundled with "
            "imgcompress."
        ),
    )
    eval_images: str | None = Field(
        None,
        description=(
            "A separate folder for evaluation. Unset: every other image of `images` (at most half, at most "
            "eval_samples) is kept apart from calibration."
        ),
    )
    task: Literal["auto", "sr", "denoise", "translate", "generate", "diffusion"] = Field(
        "auto",
        description="`auto`: the model's task. Otherwise overrides it, e.g. `denoise` for an image-to-image model.",
    )
    noise_sigma: Annotated[float, Field(gt=0, le=1)] = Field(
        0.1,
        description="Standard deviation of the Gaussian noise added to [0, 1] pixels for `denoise`.",
    )
    crop: Annotated[int, Field(ge=8, le=4096)] = Field(
        96,
        description=(
            "Side of the random calibration crops, in image pixels (for `sr`, of the high-resolution image); "
            "rounded down to the size multiple."
        ),
    )
    eval_crop: Annotated[int, Field(ge=8, le=4096)] | None = Field(
        None,
        description=(
            "Side of the evaluation centre crop. Unset: max_eval_side for `sr`, the model's default size "
            "otherwise."
        ),
    )
    max_eval_side: Annotated[int, Field(ge=8, le=8192)] = Field(
        512,
        description="Largest evaluation crop side.",
    )
    calibration_samples: Annotated[int, Field(ge=1, le=4096)] = Field(
        32,
        description="Number of calibration inputs (random crops cycling over the calibration images, or latents).",
    )
    eval_samples: Annotated[int, Field(ge=1, le=4096)] = Field(
        8,
        description="Number of evaluation images (or latents).",
    )
    seed: int = Field(
        0,
        description=(
            "Seeds crops, flips, noise and latents; evaluation latents use a stream disjoint from "
            "calibration's."
        ),
    )
    encoder: str | None = Field(
        None,
        description=(
            "For a model that takes image-like latents (a VAE decoder such as `taesd_decoder`): the "
            "checkpoint of its encoder (a TAESD-family encoder, e.g. taef2_encoder.pth), or the diffusers "
            "autoencoder folder whose decoder is compressed (its own encoder is used). Calibration, "
            "evaluation and distillation latents are then the encoder's latents of crops of `images` and "
            "`eval_images` (crop sides in image pixels, rounded down to the encoder's downscale factor). "
            "A relative path is taken like `images`. Unset: synthetic latents from N(0, latent_sigma). "
            "For a diffusion UNet: the autoencoder folder (or encoder) whose latents the UNet denoises "
            "(scaled by its scaling_factor); a diffusers autoencoder folder also decodes the end-to-end "
            "samples."
        ),
    )
    latent_sigma: Annotated[float, Field(gt=0, le=100)] = Field(
        1.0,
        description=(
            "Standard deviation of the synthetic latents (N(0, latent_sigma)) used when no `encoder` is set; "
            "for a spatial latent the calibration latents' side is crop / scale, the evaluation latents' "
            "eval_crop / scale (unset: the model's default latent side)."
        ),
    )
    diffusion: Diffusion = Field(
        default_factory=Diffusion,
        description="For a diffusion UNet: the noise schedule, timestep buckets and end-to-end sampling check.",
    )


class Budget(_Strict):
    """Drift budget, on the search inputs: vs the original model's output, or vs the output of
    the graph the stage quantizes (``against: input``, for a stage after prune/distill)."""

    min_psnr_db: float | None = Field(None, description="Lowest PSNR (dB) of the output vs the reference's.")
    min_ssim: Annotated[float, Field(ge=-1, le=1)] | None = Field(
        None, description="Lowest SSIM of the output vs the reference's."
    )
    against: Literal["original", "input"] = Field(
        "original",
        description=(
            "The reference: `original` (the checkpoint as loaded) or `input` (the graph this stage quantizes, "
            "so the budget bounds only the drift quantization adds after pruning or distillation)."
        ),
    )

    @model_validator(mode="after")
    def _some(self) -> "Budget":
        if self.min_psnr_db is None and self.min_ssim is None:
            raise ValueError("a budget needs min_psnr_db and/or min_ssim")
        return self


class Quantize(_Strict):
    """Post-training static int8 quantization of the exported ONNX graph (QDQ)."""

    kind: Literal["quantize"] = "quantize"
    dtype: Literal["int8"] = Field("int8", description="Integer type of weights and activations.")
    backend: Literal["onnxruntime", "nncf"] = Field(
        "onnxruntime",
        description="`onnxruntime` (its static QDQ quantizer) or `nncf`.",
    )
    calibration: Literal["minmax", "percentile", "entropy"] = Field(
        "percentile",
        description="How activation ranges are estimated (onnxruntime backend; nncf uses its own estimators).",
    )
    percentile: Annotated[float, Field(gt=90, le=100)] = Field(
        99.999,
        description="Percentile of activation values kept when calibration is `percentile`.",
    )
    per_channel: bool = Field(True, description="One weight scale per output channel (else one per tensor).")
    symmetric_activations: bool = Field(
        False,
        description="Signed int8 activations with a zero point of 0 (else unsigned, asymmetric).",
    )
    op_types: list[str] | Literal["auto"] = Field(
        "auto",
        description="ONNX op types to quantize; `auto` = Conv, Gemm, MatMul (those faster in int8 on CPU).",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description=(
            "Node-name patterns (shell-style, e.g. `/tail/*`) kept in fp32; a pattern that matches no node is "
            "an error."
        ),
    )
    keep_ends_fp32: bool = Field(
        True,
        description="Keep the first and last compute layers (Conv/Gemm/MatMul) in fp32: they see raw pixels "
        "and write the output.",
    )
    min_mac_share: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.002,
        description="Keep in fp32 the layers with less than this share of the MACs (e.g. channel attention on "
        "pooled maps): int8 gains nothing there.",
    )
    budget: Budget | None = Field(
        None,
        description="Drift budget vs the original's output; when set, the most damaging layers fall back to fp32 "
        "until it is met on the search inputs.",
    )
    search: Literal["greedy", "nncf"] = Field(
        "greedy",
        description="How the budget is met: `greedy` (sensitivity-ranked fallback, then bisection) or `nncf` "
        "(NNCF's accuracy-aware quantization, `nncf.quantize_with_accuracy_control`, with PSNR as its metric; "
        "needs `backend: nncf` and a `min_psnr_db`-only budget).",
    )
    search_samples: Annotated[int, Field(ge=1, le=1024)] = Field(
        16,
        description="How many calibration inputs the budget search scores on.",
    )

    @model_validator(mode="after")
    def _search_fits(self) -> "Quantize":
        if self.search == "nncf" and self.budget is not None:
            if self.budget.min_ssim is not None:
                raise ValueError("search: nncf meets a PSNR budget only (NNCF controls one metric); drop "
                                 "budget.min_ssim, or use search: greedy for an SSIM budget")
            if self.backend != "nncf":
                raise ValueError("search: nncf quantizes with NNCF (nncf.quantize_with_accuracy_control); set "
                                 "backend: nncf, or use search: greedy with backend: onnxruntime")
        return self


class Prune(_Strict):
    """Structured channel pruning on torch-pruning's dependency graph, with generator-aware
    rules: the output layer keeps its channels, PixelShuffle inputs lose whole r² blocks,
    GroupNorm groups stay whole, layers that cannot be pruned safely are protected (and the
    report says why). The pruned model is retrained by nothing: add `distill` to win back quality."""

    kind: Literal["prune"] = "prune"
    ratio: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        0.5,
        description="Fraction of channels removed from every prunable channel group (ignored when "
        "`target_macs` is set).",
    )
    target_macs: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        None,
        description="Prune in steps until the MACs are at most this fraction of the original's (instead of a "
        "fixed ratio); the report notes when protected layers make it unreachable.",
    )
    importance: Literal["l1", "l2", "taylor", "bn_scale", "lamp"] = Field(
        "l2",
        description="How channels are scored: `l1`/`l2` weight magnitude, `taylor` weight × gradient of the distance "
        "to the original's output, `bn_scale` the norm's scale (gamma), `lamp` LAMP scores ranked across layers.",
    )
    iterative_steps: Annotated[int, Field(ge=1, le=100)] = Field(
        1,
        description="Reach the ratio in this many equal steps, importance re-scored after each.",
    )
    round_to: Annotated[int, Field(ge=1, le=256)] | None = Field(
        None,
        description="Round kept channel counts to multiples of this (hardware-friendly widths).",
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="Module-name globs (e.g. `tail*`) left untouched: neither input nor output channels change; "
        "a glob that matches no module is an error.",
    )


class DistillLoss(_Strict):
    pixel: Literal["l1", "l2", "charbonnier"] = Field(
        "l1",
        description="Pixel loss between student and teacher outputs.",
    )
    feature: Annotated[float, Field(ge=0)] = Field(
        0.0,
        description="Weight of the feature-map loss: MSE between teacher activations and the student's, mapped "
        "through learned 1x1 adapters that are dropped after training (at `taps`); 0 turns it off.",
    )
    ssim: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Weight of the (1 - SSIM) loss on image outputs; 0 turns it off."
    )


class Distill(_Strict):
    """Knowledge distillation: the original (teacher) trains a student to reproduce its output on
    training crops of the calibration images (or fresh latents); no labels needed. Adam with
    warm-up and cosine decay; the result is the EMA of the student's weights. Resumable from
    ``OUT/.resume/`` after an interruption; ``--nproc N`` trains with DistributedDataParallel."""

    kind: Literal["distill"] = "distill"
    student: Literal["pruned"] | ModelConfig = Field(
        "pruned",
        description=(
            "`pruned`: the model as the previous stages left it; or a model mapping (as `model:`) naming a "
            "smaller student."
        ),
    )
    steps: Annotated[int, Field(ge=1)] = Field(1000, description="Training steps.")
    batch_size: Annotated[int, Field(ge=1)] = Field(
        16, description="Inputs per step (the global batch: with --nproc N each process takes 1/N of it)."
    )
    lr: Annotated[float, Field(gt=0)] = Field(
        2e-4, description="Peak learning rate of Adam (linear warm-up over 5% of the steps, then cosine decay)."
    )
    taps: Literal["auto"] | list[str] = Field(
        "auto",
        description=(
            "Where the feature loss compares activations: module names present in both models, or "
            "`teacher_name=student_name` pairs; `auto`: up to 4 evenly spaced compute layers (Conv, ConvTranspose, "
            "Linear) whose names both models share, not the first or last."
        ),
    )
    loss: DistillLoss = Field(default_factory=DistillLoss, description="The terms of the distillation loss.")
    ema: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.999,
        description="Decay of the exponential moving average of the student's weights.",
    )
    checkpoint_every: Annotated[int, Field(ge=1)] = Field(
        250,
        description="Steps between resumable checkpoints.",
    )
    target_psnr: float | None = Field(
        None,
        description="PSNR (dB) of the student vs the teacher at which training may stop early; unset: run all steps.",
    )


class Precision(_Strict):
    """The exported graph in fp16/bf16 with fp32 islands, inputs and outputs in float32.
    Quality is measured on an fp32 emulation that rounds every low-precision tensor as a GPU
    would; onnxruntime's CPU provider has no fp16/bf16 arithmetic, so CPU latency says little
    (the report says so). Must be the last stage."""

    kind: Literal["precision"] = "precision"
    dtype: Literal["fp16", "bf16"] = Field("fp16", description="Floating-point type of the graph.")
    keep_fp32: Literal["auto"] | list[str] = Field(
        "auto",
        description=(
            "`auto`: keep in fp32 the ops fp16/bf16 handles badly (norms, Softmax/Exp/Log/Pow/Sqrt, large "
            "reductions, layers whose activations overflow fp16 on the calibration inputs, the last layer); "
            "or a list of node-name or op-type patterns kept in fp32 (`auto` in the list adds the rules above)."
        ),
    )


Stage = Annotated[Union[Prune, Distill, Quantize, Precision], Field(discriminator="kind")]
TORCH_STAGES = ("prune", "distill")
ONNX_STAGES = ("quantize", "precision")


class ExportConfig(_Strict):
    """torch -> ONNX export (TorchScript exporter, dynamic batch and spatial axes)."""

    opset: Annotated[int, Field(ge=17, le=21)] = Field(17, description="ONNX opset version.")
    dynamic_batch: bool = Field(True, description="The batch axis of the graph is dynamic.")
    dynamic_spatial: bool = Field(True, description="Height and width of image inputs are dynamic.")
    tolerance: Annotated[float, Field(gt=0)] = Field(
        1e-3,
        description=(
            "Largest allowed difference between ONNX and torch outputs, as a fraction of the output range; "
            "above it the export fails."
        ),
    )


class ValidateConfig(_Strict):
    """How speed is measured. ``size``: the image input side for speed (none = the
    model's default); ``batch``: the batch for speed; ``threads``: intra-op threads for
    torch and onnxruntime alike (none = all cores)."""

    warmup: Annotated[int, Field(ge=0, le=100)] = Field(
        3,
        description="Untimed runs of each model before timing.",
    )
    repeats: Annotated[int, Field(ge=3, le=1000)] = Field(
        20,
        description="Timed runs of each model, interleaved across models; latency is their median (and p90).",
    )
    threads: Annotated[int, Field(ge=1, le=256)] | None = Field(
        None,
        description="Intra-op threads for torch and onnxruntime alike. Unset: all cores.",
    )
    batch: Annotated[int, Field(ge=1, le=256)] = Field(1, description="Batch of the speed input.")
    size: Annotated[int, Field(ge=8, le=4096)] | None = Field(
        None,
        description="Image input side for speed. Unset: the model's default size.",
    )


class GateConfig(_Strict):
    """Thresholds on the final artifact; a missing threshold is not checked."""

    min_psnr: float | None = Field(
        None,
        description="Lowest PSNR (dB) of the final artifact's output vs the original's output.",
    )
    min_ssim: Annotated[float, Field(ge=-1, le=1)] | None = Field(
        None,
        description="Lowest SSIM of the final artifact's output vs the original's output.",
    )
    max_gt_psnr_drop: float | None = Field(
        None,
        description=(
            "Largest drop (dB) of PSNR vs ground truth, original minus final; only for tasks with ground "
            "truth (sr, denoise)."
        ),
    )
    min_speedup: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="Lowest speedup of the final artifact vs the original in onnxruntime fp32.",
    )
    min_sampling_psnr: float | None = Field(
        None,
        description=(
            "Lowest PSNR (dB) of the final artifact's end-to-end DDIM samples vs the original's; only for "
            "diffusion UNets (data.diffusion.sampling_steps > 0)."
        ),
    )


def _stage_error(index: int, message: str) -> PydanticCustomError:
    """An error about stage ``index``; `parse_recipe` puts the index into the location."""
    return PydanticCustomError("stage", message, {"stage_index": index})


class Recipe(_Strict):
    """A whole recipe. Only ``stages`` is required."""

    version: Literal[1] = Field(1, description="Recipe format version.")
    name: str | None = Field(None, description="A label for the report.")
    model: ModelConfig | None = Field(
        None,
        description="How to build the generator when the checkpoint does not say.",
    )
    data: DataConfig = Field(
        default_factory=DataConfig,
        description="Calibration and evaluation inputs.",
    )
    stages: Annotated[
        list[Stage],
        Field(
            min_length=1,
            description=(
                "What to do, in order: torch stages (prune, distill) before graph stages (quantize, precision)."
            ),
        ),
    ]
    export: ExportConfig = Field(
        default_factory=ExportConfig,
        description="torch -> ONNX export.",
    )
    validate_: ValidateConfig = Field(
        default_factory=ValidateConfig,
        alias="validate",
        description="How speed is measured.",
    )
    gate: GateConfig = Field(
        default_factory=GateConfig,
        description="Quality thresholds on the final artifact.",
    )

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
                raise _stage_error(i, "a stage must be a mapping with one key, the stage name "
                                   f"({', '.join(STAGE_NAMES)}), e.g. '- quantize: {{calibration: percentile}}'")
            (name, body), = item.items()
            if name not in STAGE_NAMES:
                raise _stage_error(i, f"unknown stage {name!r}; expected one of {', '.join(STAGE_NAMES)}")
            if body is None:
                body = {}
            if not isinstance(body, dict):
                raise _stage_error(i, f"the options of '{name}' must be a mapping, got {type(body).__name__}")
            if "kind" in body:
                raise _stage_error(i, f"'kind' is set by the stage key '{name}'; remove it")
            out.append({**body, "kind": name})
        return out

    @field_validator("stages", mode="after")
    @classmethod
    def _order(cls, stages: list[Any]) -> list[Any]:
        seen_onnx = None
        for i, st in enumerate(stages):
            if seen_onnx and stages[i - 1].kind == "precision":
                raise _stage_error(i, f"'{st.kind}' comes after 'precision': the fp16/bf16 graph is final; "
                                   "put 'precision' last")
            if st.kind in ONNX_STAGES:
                seen_onnx = seen_onnx or st.kind
            elif seen_onnx:
                raise _stage_error(i, f"'{st.kind}' comes after '{seen_onnx}': torch stages (prune, distill) "
                                   "must come before graph stages (quantize, precision)")
        return stages

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
            if part is loc[-1] and nxt is not None and k.value == str(part):
                return line  # the key itself (its value may start on the next line)
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
        if "stage_index" in (err.get("ctx") or {}):
            loc = loc + (err["ctx"]["stage_index"],)
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
