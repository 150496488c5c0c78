"""imgcompress: compress and accelerate trained image generators.

    from imgcompress import apply
    result = apply("recipes/int8.yaml", "ckpt.safetensors", out="out/")
    assert result.passed, result.report.failures
"""

__version__ = "0.1.0"

from .errors import CheckpointError, DataError, ImgcompressError, RecipeError, UsageError  # noqa: E402

# The rest is imported on first use, so `import imgcompress.cli` does not load torch before the
# command has set up the process (see cli.py).
_LAZY = {
    "export_onnx": ".export.onnx",
    "load_generator": ".models.load",
    "save_generator": ".models.load",
    "Generator": ".models.spec",
    "GeneratorSpec": ".models.spec",
    "ApplyResult": ".pipeline",
    "apply": ".pipeline",
    "Recipe": ".recipe",
    "load_recipe": ".recipe",
    "parse_recipe": ".recipe",
    "check_gate": ".validate.gate",
    "Report": ".validate.report",
}


def __getattr__(name: str):  # noqa: ANN202 - PEP 562
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
