"""imgcompress: compress and accelerate trained image generators.

    from imgcompress import apply
    result = apply("recipes/int8.yaml", "ckpt.safetensors", out="out/")
    assert result.passed, result.report.failures
"""

__version__ = "0.1.0"

from .errors import CheckpointError, DataError, ImgcompressError, RecipeError, UsageError  # noqa: E402
from .export.onnx import export_onnx  # noqa: E402
from .models.load import load_generator, save_generator  # noqa: E402
from .models.spec import Generator, GeneratorSpec  # noqa: E402
from .pipeline import ApplyResult, apply  # noqa: E402
from .recipe import Recipe, load_recipe, parse_recipe  # noqa: E402
from .validate.gate import check_gate  # noqa: E402
from .validate.report import Report  # noqa: E402

__all__ = [
    "__version__",
    "apply",
    "ApplyResult",
    "load_generator",
    "save_generator",
    "export_onnx",
    "load_recipe",
    "parse_recipe",
    "Recipe",
    "Generator",
    "GeneratorSpec",
    "Report",
    "check_gate",
    "ImgcompressError",
    "RecipeError",
    "CheckpointError",
    "DataError",
    "UsageError",
]
