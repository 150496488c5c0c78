"""torch -> ONNX: the graph reproduces torch at other batches and sizes, or nothing is written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from torch import nn

from imgcompress import models
from imgcompress.errors import ExportError
from imgcompress.export import onnx as onnx_export
from imgcompress.export import runtime
from imgcompress.export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx
from imgcompress.models.spec import Generator, GeneratorSpec


def _builtin(name: str, kwargs: dict[str, Any]) -> Generator:
    torch.manual_seed(0)
    return Generator(models.build(name, kwargs).eval(), models.get(name).spec(kwargs), name, kwargs)


ESPCN = {"scale": 3, "channels": 3, "features": 8, "num_body": 1}
DCGAN = {"nz": 16, "ngf": 8, "nc": 3, "num_layers": 4}


def _ort(path: Path, x: torch.Tensor) -> torch.Tensor:
    return runtime.run(runtime.session(path, threads=1), x)


def test_espcn_exports_with_dynamic_batch_and_spatial_axes(tmp_path: Path) -> None:
    g = _builtin("espcn", ESPCN)
    p = tmp_path / "out" / "espcn.onnx"
    check = export_onnx(g, p, size=16)
    assert p.is_file() and sorted(os.listdir(p.parent)) == ["espcn.onnx"]
    assert check.max_abs_error <= check.tolerance == 1e-3
    assert check.shapes[0] == (2, 3, 16, 16) and len(check.shapes) == 2 and check.shapes[1][2] != 16
    graph = onnx.load(str(p))
    assert graph.opset_import[0].version == 17
    assert [i.name for i in graph.graph.input] == [INPUT_NAME] and [o.name for o in graph.graph.output] == [OUTPUT_NAME]
    g_ = torch.Generator().manual_seed(9)
    for shape in [(2, 3, 16, 16), (3, 3, 11, 7), (1, 3, 24, 40)]:  # other batches, odd and non-square sides
        x = torch.rand(shape, generator=g_)
        with torch.no_grad():
            ref = g.module(x)
        got = _ort(p, x)
        assert got.shape == ref.shape == (shape[0], 3, shape[2] * 3, shape[3] * 3)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_dcgan_exports_with_dynamic_batch(tmp_path: Path) -> None:
    g = _builtin("dcgan", DCGAN)
    p = tmp_path / "dcgan.onnx"
    check = export_onnx(g, p, opset=18)
    assert check.shapes == ((2, 16, 1, 1),)  # latents have no spatial axes to vary
    assert onnx.load(str(p)).opset_import[0].version == 18
    for batch in (1, 2, 5):
        z = torch.randn(batch, 16, 1, 1, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = g.module(z)
        got = _ort(p, z)
        assert got.shape == ref.shape == (batch, 3, 32, 32)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_static_batch_export(tmp_path: Path) -> None:
    g = _builtin("espcn", ESPCN)
    p = tmp_path / "static.onnx"
    check = export_onnx(g, p, dynamic_batch=False, dynamic_spatial=False, size=12)
    assert check.shapes == ((1, 3, 12, 12),)
    dims = onnx.load(str(p)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 12, 12]


# --- graphs that do not reproduce torch -----------------------------------------------------------


class TracesDifferently(nn.Module):
    """Eager and traced forwards disagree: the graph computes something else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5 if torch.jit.is_tracing() else x


class BakesItsSize(nn.Module):
    """Reads the height as a Python int: the traced graph keeps the export height forever."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = int(x.shape[2])
        return x[:, :, : h - 2] * 2


class BakesItsSizeIntoAnAdd(nn.Module):
    """A constant of the export size: the graph cannot even run at another size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.zeros(1, 1, int(x.shape[2]), int(x.shape[3]))


def _custom(module: nn.Module) -> Generator:
    return Generator(module.eval(), GeneratorSpec(task="translate", default_size=16), "test:custom")


def _assert_nothing_written(folder: Path, keep: set[str] = frozenset()) -> None:
    assert set(os.listdir(folder)) == set(keep), os.listdir(folder)


@pytest.mark.parametrize(("module", "match"), [
    (TracesDifferently(), r"the ONNX graph differs from torch by 0\.5 \(max abs, 0\.5 of the output range; tolerance 0\.001\)"),
    (BakesItsSize(), r"ONNX output shape \(2, 3, 14, 24\) != torch \(2, 3, 22, 24\)"),
], ids=["traces-differently", "bakes-its-size"])
def test_wrong_graph_raises_and_writes_nothing(tmp_path: Path, module: nn.Module, match: str) -> None:
    with pytest.raises(ExportError, match=match):
        export_onnx(_custom(module), tmp_path / "m.onnx")
    _assert_nothing_written(tmp_path)


def test_failed_export_keeps_an_existing_file(tmp_path: Path) -> None:
    p = tmp_path / "m.onnx"
    p.write_bytes(b"previous good export")
    with pytest.raises(ExportError):
        export_onnx(_custom(TracesDifferently()), p)
    assert p.read_bytes() == b"previous good export"
    _assert_nothing_written(tmp_path, {"m.onnx"})


def test_tolerance_is_relative_to_the_output_range(tmp_path: Path) -> None:
    g = _custom(TracesDifferently())
    g.spec = GeneratorSpec(task="translate", default_size=16, input_range=(0.0, 1.0), output_range=(0.0, 1000.0))
    check = export_onnx(g, tmp_path / "m.onnx")  # 0.5 off on a range of 1000: 5e-4 <= 1e-3
    assert 0.45 < check.max_abs_error <= 0.5  # x / 2 on inputs in [0, 1)
    with pytest.raises(ExportError, match=r"tolerance 0\.0001"):
        export_onnx(g, tmp_path / "n.onnx", tolerance=1e-4)
    _assert_nothing_written(tmp_path, {"m.onnx"})


def test_check_sees_a_corrupted_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The check must run the exported graph, not the torch module: perturb what onnxruntime returns.
    real_run = runtime.run

    def off_by_a_little(sess: Any, x: torch.Tensor) -> torch.Tensor:
        return real_run(sess, x) + 0.01

    monkeypatch.setattr(onnx_export.runtime, "run", off_by_a_little)
    with pytest.raises(ExportError, match=r"differs from torch by 0\.01"):
        export_onnx(_builtin("espcn", ESPCN), tmp_path / "m.onnx", size=16)
    _assert_nothing_written(tmp_path)


def test_graph_that_fails_at_another_size_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"does not run on an input of shape .*dynamic_spatial: false"):
        export_onnx(_custom(BakesItsSizeIntoAnAdd()), tmp_path / "m.onnx")
    _assert_nothing_written(tmp_path)
