"""Checkpoint file <-> Generator: round trips, the architecture resolution order, custom classes."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from imgcompress import models
from imgcompress.checkpoint import read_checkpoint
from imgcompress.errors import CheckpointError
from imgcompress.models.load import load_generator, save_generator
from imgcompress.models.spec import Generator, GeneratorSpec


def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer (BatchNorm statistics too) a value of its own."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return module.eval()


def _generator(name: str, kwargs: dict[str, Any], seed: int = 0) -> Generator:
    arch = models.get(name)
    assert arch is not None
    return Generator(_randomise(models.build(name, kwargs), seed), arch.spec(kwargs), name, dict(kwargs))


def _input(spec: GeneratorSpec, batch: int = 2) -> torch.Tensor:
    return spec.example_input(batch=batch, size=max(4 * spec.size_multiple, 12), seed=5)


def _outputs_equal(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a(x), b(x))


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", models.names())
def test_round_trip_from_the_file_alone(tmp_path: Path, name: str, small_kwargs: dict[str, dict[str, Any]]) -> None:
    g = _generator(name, small_kwargs.get(name, {}))
    p = save_generator(g, tmp_path / "m.safetensors", recipe_sha256="ab" * 32)
    back = load_generator(p)
    assert (back.arch, back.kwargs, back.spec, back.widths) == (g.arch, g.kwargs, g.spec, {})
    assert back.source == str(p)
    assert not back.module.training
    x = _input(g.spec)
    assert _outputs_equal(back.module, g.module, x)
    meta = read_checkpoint(p).metadata
    assert meta is not None and meta["recipe_sha256"] == "ab" * 32


def test_round_trip_keeps_widths_and_spec_overrides(tmp_path: Path) -> None:
    g = _generator("espcn", {"scale": 2, "channels": 3, "features": 8, "num_body": 1})
    g.spec = GeneratorSpec(task="denoise", scale=2, default_size=24, output_range=(-1.0, 1.0))
    g.widths = {"body.0": [8]}
    back = load_generator(save_generator(g, tmp_path / "m.safetensors"))
    assert back.spec == g.spec and back.widths == {"body.0": [8]}


def test_spandrel_round_trip(tmp_path: Path, make_compact: Any) -> None:
    src = tmp_path / "compact.pth"
    torch.save({"params": make_compact(num_feat=8, num_conv=1, scale=2)}, src)
    g = load_generator(src)
    assert g.arch == "spandrel" and g.spec.scale == 2
    back = load_generator(save_generator(g, tmp_path / "m.safetensors"))
    assert back.arch == "spandrel" and back.spec == g.spec and back.kwargs == g.kwargs
    assert _outputs_equal(back.module, g.module, _input(g.spec, batch=1))


# --- resolution order ---------------------------------------------------------------------------


def test_metadata_beats_the_recipe(tmp_path: Path) -> None:
    g = _generator("espcn", {"scale": 3, "channels": 3, "features": 8, "num_body": 1})
    p = save_generator(g, tmp_path / "m.safetensors")
    back = load_generator(p, model={"arch": "fsrcnn", "kwargs": {"scale": 4},
                                    "spec": {"task": "denoise", "default_size": 16}})
    assert back.arch == "espcn" and back.kwargs == g.kwargs and back.spec == g.spec
    assert _outputs_equal(back.module, g.module, _input(g.spec))


def test_recipe_beats_detection(tmp_path: Path) -> None:
    kw = {"d": 12, "s": 6, "m": 2, "scale": 3, "in_channels": 1}
    g = _generator("fsrcnn", kw)
    p = tmp_path / "fsrcnn.pth"
    torch.save(g.module.state_dict(), p)
    detected = load_generator(p)  # the stride is not in the weights: detection guesses 2
    assert detected.arch == "fsrcnn" and detected.kwargs["scale"] == 2 and detected.spec.scale == 2
    named = load_generator(p, model={"arch": "fsrcnn", "kwargs": {"scale": 3}})
    assert named.kwargs == kw and named.spec.scale == 3
    x = torch.rand(1, 1, 7, 9)
    with torch.no_grad():
        assert named.module(x).shape == (1, 1, 21, 27)
    assert _outputs_equal(named.module, g.module, x)


def test_recipe_spec_replaces_a_builtin_spec(tmp_path: Path) -> None:
    g = _generator("espcn", {"scale": 2, "channels": 3, "features": 8, "num_body": 1})
    p = tmp_path / "plain.safetensors"
    save_file(g.module.state_dict(), str(p))  # no imgcompress metadata
    back = load_generator(p, model={"arch": "espcn", "spec": {"task": "sr", "scale": 2, "default_size": 40}})
    assert back.spec == GeneratorSpec(task="sr", scale=2, default_size=40)
    assert back.kwargs == g.kwargs  # inferred from the weights


def test_detection_when_nothing_names_the_arch(tmp_path: Path, small_kwargs: dict[str, dict[str, Any]]) -> None:
    g = _generator("dcgan", small_kwargs["dcgan"])
    p = tmp_path / "netG.pth"
    torch.save({"netG_state_dict": {f"module.{k}": v for k, v in g.module.state_dict().items()}, "epoch": 5}, p)
    back = load_generator(p)
    assert (back.arch, back.kwargs, back.spec) == ("dcgan", small_kwargs["dcgan"], g.spec)
    assert _outputs_equal(back.module, g.module, _input(g.spec))


def test_nothing_matches(tmp_path: Path) -> None:
    p = tmp_path / "mystery.pth"
    torch.save({"encoder.w": torch.zeros(3, 3), "decoder.w": torch.zeros(3)}, p)
    with pytest.raises(CheckpointError, match=r"mystery\.pth: no known architecture matches these 2 tensors.*model: \{arch: "):
        load_generator(p)


def test_unknown_builtin_name(tmp_path: Path) -> None:
    p = tmp_path / "m.pth"
    torch.save({"w": torch.zeros(1)}, p)
    with pytest.raises(CheckpointError, match=r"model\.arch 'espnc' is not a built-in architecture \(.*espcn.*\)"):
        load_generator(p, model={"arch": "espnc"})


# --- a custom class named in the recipe ----------------------------------------------------------

CUSTOM = "imgc_test_custom_nets"


@pytest.fixture()
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pkg = tmp_path / "code"
    pkg.mkdir()
    (pkg / f"{CUSTOM}.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class TinyNet(nn.Module):
            def __init__(self, width=4, gain=1.0):
                super().__init__()
                self.conv = nn.Conv2d(3, width, 3, padding=1)
                self.out = nn.Conv2d(width, 3, 1)
                self.gain = gain

            def forward(self, x):
                return self.out(torch.relu(self.conv(x))) * self.gain

        NOT_A_MODULE = 3
    """))
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, CUSTOM, raising=False)
    yield f"{CUSTOM}:TinyNet"
    sys.modules.pop(CUSTOM, None)


def _tiny_weights(path: Path, target: str, width: int) -> dict[str, torch.Tensor]:
    mod_name, _, cls_name = target.partition(":")
    cls = getattr(__import__(mod_name), cls_name)
    sd = _randomise(cls(width=width), seed=3).state_dict()
    torch.save({"state_dict": sd}, path)
    return sd


def test_custom_class_from_the_recipe(tmp_path: Path, custom_module: str) -> None:
    p = tmp_path / "tiny.pth"
    sd = _tiny_weights(p, custom_module, width=6)
    spec = {"task": "denoise", "output_range": [-1, 1], "default_size": 16}
    g = load_generator(p, model={"arch": custom_module, "kwargs": {"width": 6, "gain": 2.0}, "spec": spec})
    assert type(g.module).__name__ == "TinyNet" and g.module.gain == 2.0
    assert g.arch == custom_module and g.kwargs == {"width": 6, "gain": 2.0}
    assert g.spec == GeneratorSpec(task="denoise", output_range=(-1.0, 1.0), default_size=16)
    assert all(torch.equal(g.module.state_dict()[k], v) for k, v in sd.items())


def test_custom_class_round_trip(tmp_path: Path, custom_module: str) -> None:
    p = tmp_path / "tiny.pth"
    _tiny_weights(p, custom_module, width=5)
    g = load_generator(p, model={"arch": custom_module, "kwargs": {"width": 5, "gain": 0.5},
                                 "spec": {"task": "translate", "default_size": 20}})
    back = load_generator(save_generator(g, tmp_path / "tiny.safetensors"))  # no recipe needed
    assert (back.arch, back.kwargs, back.spec) == (custom_module, {"width": 5, "gain": 0.5}, g.spec)
    assert back.module.gain == 0.5  # a kwarg that is not in the weights survives
    assert _outputs_equal(back.module, g.module, _input(g.spec))


def test_custom_class_beats_detection(tmp_path: Path, custom_module: str) -> None:
    # A class whose keys happen to look like a built-in is still the one the recipe names.
    g = _generator("espcn", {"scale": 2, "channels": 3, "features": 8, "num_body": 1})
    p = tmp_path / "espcn.pth"
    torch.save(g.module.state_dict(), p)
    mod = tmp_path / "code" / f"{CUSTOM}.py"
    mod.write_text(mod.read_text() + textwrap.dedent("""
        from imgcompress.models.espcn import ESPCN

        class MyESPCN(ESPCN):
            pass
    """))
    target = f"{CUSTOM}:MyESPCN"
    named = load_generator(p, model={"arch": target, "kwargs": {"scale": 2, "features": 8},
                                     "spec": {"task": "sr", "scale": 2}})
    assert type(named.module).__name__ == "MyESPCN" and named.arch == target
    assert load_generator(p).arch == "espcn"


@pytest.mark.parametrize(("arch", "match"), [
    ("imgc_no_such_module:Net", r"cannot import module 'imgc_no_such_module'"),
    (f"{CUSTOM}:Missing", r"'Missing' is not an nn\.Module class"),
    (f"{CUSTOM}:NOT_A_MODULE", r"'NOT_A_MODULE' is not an nn\.Module class"),
])
def test_custom_class_errors(tmp_path: Path, custom_module: str, arch: str, match: str) -> None:
    p = tmp_path / "tiny.pth"
    _tiny_weights(p, custom_module, width=4)
    with pytest.raises(CheckpointError, match=match):
        load_generator(p, model={"arch": arch})


def test_custom_latent_spec_needs_latent_shape(tmp_path: Path, custom_module: str) -> None:
    p = tmp_path / "tiny.pth"
    _tiny_weights(p, custom_module, width=4)
    with pytest.raises(CheckpointError, match=r"set model\.spec\.latent_shape"):
        load_generator(p, model={"arch": custom_module, "spec": {"task": "generate", "input_kind": "latent"}})


def test_custom_class_bad_kwargs(tmp_path: Path, custom_module: str) -> None:
    p = tmp_path / "tiny.pth"
    _tiny_weights(p, custom_module, width=4)
    with pytest.raises(CheckpointError, match=r"failed: .*depth.*; fix model\.kwargs"):
        load_generator(p, model={"arch": custom_module, "kwargs": {"depth": 3}})


# --- weights that do not fit --------------------------------------------------------------------


def _espcn_file(tmp_path: Path, edit: Any = None) -> Path:
    sd = _generator("espcn", {"scale": 2, "channels": 3, "features": 16, "num_body": 1}).module.state_dict()
    if edit:
        sd = edit(dict(sd))
    p = tmp_path / "espcn.pth"
    torch.save(sd, p)
    return p


def test_mismatched_shapes_name_a_key(tmp_path: Path) -> None:
    p = _espcn_file(tmp_path)
    with pytest.raises(CheckpointError, match=(r"espcn\.pth: the weights do not fit arch 'espcn': \d+ of another shape "
                                               r"\(e\.g\. head\.weight: file \(16, 3, 5, 5\), model \(24, 3, 5, 5\)\)")):
        load_generator(p, model={"arch": "espcn", "kwargs": {"features": 24}})


def test_missing_key_is_named(tmp_path: Path) -> None:
    p = _espcn_file(tmp_path, lambda sd: {k: v for k, v in sd.items() if k != "tail.bias"})
    with pytest.raises(CheckpointError, match=r"1 missing \(e\.g\. tail\.bias\)"):
        load_generator(p, model={"arch": "espcn"})


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    p = _espcn_file(tmp_path, lambda sd: {**sd, "tail.extra": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"1 unexpected \(e\.g\. tail\.extra\)"):
        load_generator(p, model={"arch": "espcn"})


def test_custom_class_mismatch_names_a_key(tmp_path: Path, custom_module: str) -> None:
    p = tmp_path / "tiny.pth"
    _tiny_weights(p, custom_module, width=4)
    with pytest.raises(CheckpointError, match=r"conv\.weight: file \(4, 3, 3, 3\), model \(7, 3, 3, 3\)"):
        load_generator(p, model={"arch": custom_module, "kwargs": {"width": 7}})


def test_damaged_metadata_spec(tmp_path: Path) -> None:
    from imgcompress.checkpoint import write_checkpoint

    g = _generator("espcn", {"scale": 2, "channels": 3, "features": 8, "num_body": 1})
    p = write_checkpoint(tmp_path / "m.safetensors", g.module.state_dict(), {"arch": "espcn", "kwargs": g.kwargs})
    with pytest.raises(CheckpointError, match=r"metadata has no valid spec"):
        load_generator(p)
