"""The prune stage: each generator-aware rule on a small synthetic model, IMDN, the options,
the fallback, and the pruned-file round trip (`restore_widths`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from imgcompress import export_onnx, load_generator, models, save_generator
from imgcompress.compress import prune
from imgcompress.compress.base import StageContext
from imgcompress.data import Inputs
from imgcompress.errors import RecipeError
from imgcompress.models.load import restore_widths
from imgcompress.models.spec import Generator, GeneratorSpec
from imgcompress.recipe import Prune
from imgcompress.validate import cost

HERE = __name__  # this module, importable while the tests run: arch "<HERE>:Class"
IMAGE = GeneratorSpec(task="translate", default_size=16)


# --- synthetic generators ---------------------------------------------------------------------------


class ShuffleNet(nn.Module):
    """A PixelShuffle in the middle: ``up`` feeds it, ``mid`` reads its output."""

    def __init__(self, r: int = 2) -> None:
        super().__init__()
        self.r = r
        self.head = nn.Conv2d(3, 16, 3, padding=1)
        self.up = nn.Conv2d(16, 8 * r * r, 3, padding=1)
        self.shuffle = nn.PixelShuffle(r)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.shuffle(self.up(torch.relu(self.head(x)))))
        return self.out(torch.relu(self.mid(h)))


class TransposeNet(nn.Module):
    """Latent -> image through ConvTranspose + BatchNorm (a small DCGAN)."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(8, 32, 4, 1, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(True),
            nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(True),
            nn.ConvTranspose2d(16, 3, 4, 2, 1, bias=False), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.conv2(torch.relu(self.norm(self.conv1(x))))))


class SkipNet(nn.Module):
    """A concat skip, a residual add and an InstanceNorm + PReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 12, 3, padding=1)
        self.norm = nn.InstanceNorm2d(12, affine=True)
        self.act = nn.PReLU(12)
        self.c = nn.Conv2d(20, 8, 1)
        self.d = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.a(x))
        b = self.act(self.norm(self.b(a)))
        c = self.c(torch.cat([a, b], dim=1))
        return self.out(torch.relu(self.d(c)) + c)


class AttrNet(nn.Module):
    """Reads a channel count from a plain attribute: pruning ``a`` breaks its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.width = 8
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = h[:, : self.width] * 1.0 + h.new_zeros(h.shape[0], self.width, *h.shape[2:])
        return self.out(torch.relu(self.b(h)))


# --- helpers -----------------------------------------------------------------------------------------


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return module.eval()


def _gen(module: nn.Module, spec: GeneratorSpec = IMAGE, arch: str | None = None,
         kwargs: dict[str, Any] | None = None) -> Generator:
    return Generator(_randomise(module), spec, arch or f"{HERE}:{type(module).__name__}", dict(kwargs or {}))


def _ctx(g: Generator, n: int = 3, size: int = 16) -> StageContext:
    cal = [g.spec.example_input(size=size, seed=i) for i in range(n)]
    teacher = Generator(copy.deepcopy(g.module).eval(), g.spec, g.arch, dict(g.kwargs))
    for p in teacher.module.parameters():
        p.requires_grad_(False)
    return StageContext(teacher=teacher, inputs=Inputs(g.spec.task, cal, []), workdir=Path("."), threads=2)


def _prune(g: Generator, **cfg: Any) -> tuple[Any, StageContext]:
    ctx = _ctx(g)
    return prune.run(g, ctx, Prune(**cfg)), ctx


def _reloads_exactly(g: Generator, tmp_path: Path, x: torch.Tensor) -> Generator:
    back = load_generator(save_generator(g, tmp_path / "pruned.safetensors"))
    assert back.widths == g.widths and back.arch == g.arch
    with torch.no_grad():
        assert torch.equal(back.module(x), g.module(x))
    return back


def _rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """For each slice along dim 0 of ``pruned``, the index of the equal slice of ``original``."""
    out = []
    for j in range(pruned.shape[0]):
        hits = [i for i in range(original.shape[0]) if torch.equal(original[i], pruned[j])]
        assert len(hits) == 1, j
        out.append(hits[0])
    return out


# --- rules ---------------------------------------------------------------------------------------------


def test_pixelshuffle_producer_is_pruned_in_whole_blocks(tmp_path: Path) -> None:
    g = _gen(ShuffleNet(r=2))
    res, ctx = _prune(g)
    p, o = res.generator.module, g.module
    assert p.up.out_channels % 4 == 0 and p.up.out_channels == 4 * p.mid.in_channels
    assert p.mid.in_channels == 4  # 8 shuffled channels, half kept
    kept_in = _rows(o.head.weight.detach(), p.head.weight.detach())
    rows = _rows(o.up.weight.detach()[:, kept_in], p.up.weight.detach())
    blocks = [rows[i:i + 4] for i in range(0, len(rows), 4)]
    assert all(b == list(range(b[0], b[0] + 4)) and b[0] % 4 == 0 for b in blocks)  # whole r² blocks
    # and mid reads exactly the shuffled channels of those blocks
    kept_mid = _rows(o.out.weight.detach().transpose(0, 1), p.out.weight.detach().transpose(0, 1))
    mid = o.mid.weight.detach()[kept_mid].transpose(0, 1)
    assert _rows(mid, p.mid.weight.detach().transpose(0, 1)) == [b[0] // 4 for b in blocks]
    assert res.info["macs_after"] < res.info["macs_before"]
    _reloads_exactly(res.generator, tmp_path, ctx.inputs.calibration[0])


def test_output_layer_keeps_its_channels_and_is_reported() -> None:
    g = _gen(ShuffleNet())
    res, ctx = _prune(g)
    assert res.generator.module.out.out_channels == 3
    assert {"layer": "out", "reason": prune.OUTPUT_REASON} in res.info["protected"]
    with torch.no_grad():
        x = ctx.inputs.calibration[0]
        assert res.generator.module(x).shape == g.module(x).shape


def test_convtranspose_prunes_its_output_axis_and_norms_follow(tmp_path: Path) -> None:
    spec = GeneratorSpec(task="generate", input_kind="latent", latent_shape=(8, 1, 1), output_range=(-1.0, 1.0),
                         default_size=16)
    g = _gen(TransposeNet(), spec)
    res, ctx = _prune(g)
    m = res.generator.module.main
    assert m[0].weight.shape == (8, 16, 4, 4) and m[0].in_channels == 8 and m[0].out_channels == 16  # (in, out, k, k)
    assert m[1].num_features == 16 and m[1].running_mean.shape == (16,)
    assert m[3].weight.shape == (16, 8, 4, 4) and m[4].num_features == 8
    assert m[6].weight.shape == (8, 3, 4, 4)  # the output ConvTranspose lost inputs, kept its 3 outputs
    assert res.generator.widths["main.0"] == [8, 16, 4, 4]
    _reloads_exactly(res.generator, tmp_path, ctx.inputs.calibration[0])


def test_groupnorm_groups_stay_whole(tmp_path: Path) -> None:
    g = _gen(GroupNormNet())
    with torch.no_grad():
        g.module.norm.weight.copy_(torch.arange(1.0, 17.0))  # each channel identifiable
    res, ctx = _prune(g)
    norm = res.generator.module.norm
    assert norm.num_channels == 8 and norm.num_channels % norm.num_groups == 0
    kept = [int(v) - 1 for v in norm.weight.detach()]
    assert sorted(k // 4 for k in kept) == [0, 0, 1, 1, 2, 2, 3, 3]  # two channels from each group
    _reloads_exactly(res.generator, tmp_path, ctx.inputs.calibration[0])


def test_concat_skip_residual_and_norms_stay_consistent(tmp_path: Path) -> None:
    g = _gen(SkipNet())
    res, ctx = _prune(g)
    m = res.generator.module
    assert (m.a.out_channels, m.b.out_channels, m.norm.num_features, m.act.num_parameters) == (4, 6, 6, 6)
    assert m.c.in_channels == m.a.out_channels + m.b.out_channels == 10
    assert m.c.out_channels == m.d.out_channels == m.out.in_channels == 4  # residual add couples c and d
    _reloads_exactly(res.generator, tmp_path, ctx.inputs.calibration[0])


def test_imdn_split_sizes_follow_the_pruned_layers(tmp_path: Path) -> None:
    kw = {"in_channels": 3, "out_channels": 3, "num_features": 32, "num_blocks": 2, "scale": 2}
    torch.manual_seed(0)  # default init: random N(0, 0.3) weights blow the activations up past export's tolerance
    g = Generator(models.build("imdn", kw).eval(), models.get("imdn").spec(kw), "imdn", kw)
    res, ctx = _prune(g)
    m = res.generator.module
    for b in (m.IMDB1, m.IMDB2):
        assert b.splits() == [(4, 12)] * 3  # each part of every split halved: 8/24 -> 4/12
        assert b.c4.out_channels == 4 and b.c5.in_channels == 16
    assert m.upsampler[0].out_channels == 12
    assert res.info["macs_before"] / res.info["macs_after"] >= 2.5
    back = _reloads_exactly(res.generator, tmp_path, ctx.inputs.calibration[0])
    assert back.module.IMDB1.splits() == [(4, 12)] * 3
    export_onnx(res.generator, tmp_path / "imdn.onnx", size=16)


def test_the_input_generator_and_the_teacher_are_untouched() -> None:
    g = _gen(SkipNet())
    before = {k: v.clone() for k, v in g.module.state_dict().items()}
    res, ctx = _prune(g)
    for m in (g.module, ctx.teacher.module):
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert res.generator.module is not g.module
    assert res.onnx_path is None and res.precision == "fp32"
    info = res.info
    assert info["params_after"] < info["params_before"] and info["macs_after"] < info["macs_before"]
    assert info["input_shape"] == list(ctx.inputs.calibration[0].shape)
    assert info["macs_before"] == cost.macs(g.module, ctx.inputs.calibration[0])


# --- options ---------------------------------------------------------------------------------------


def test_ignore_freezes_a_layer_and_rejects_unknown_names() -> None:
    g = _gen(SkipNet())
    res, _ = _prune(g, ignore=["d"])
    m = res.generator.module
    assert (m.d.in_channels, m.d.out_channels) == (8, 8) and m.c.out_channels == 8
    assert any(p["layer"] == "d" and "prune.ignore 'd'" in p["reason"] for p in res.info["protected"])
    assert m.a.out_channels == 4  # the rest is pruned
    with pytest.raises(RecipeError, match=r"prune\.ignore: 'nope' match no layer"):
        _prune(g, ignore=["nope"])


def test_round_to_keeps_multiples() -> None:
    g = _gen(SkipNet())
    res, _ = _prune(g, ratio=0.4, round_to=4)
    m = res.generator.module
    assert all(c % 4 == 0 for c in (m.a.out_channels, m.b.out_channels, m.c.out_channels))


def test_target_macs_steps_until_reached() -> None:
    g = _gen(ShuffleNet())
    res, _ = _prune(g, target_macs=0.3)
    assert res.info["macs_after"] <= 0.3 * res.info["macs_before"]
    assert res.info["steps"] >= 1 and res.info["ratio"] is None


def test_iterative_steps_reach_the_ratio() -> None:
    g = _gen(SkipNet())
    res, _ = _prune(g, iterative_steps=3)
    assert res.info["steps"] == 3
    assert res.generator.module.a.out_channels == 4


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "bn_scale", "lamp"])
def test_every_importance_gives_a_working_smaller_model(importance: str, tmp_path: Path) -> None:
    g = _gen(SkipNet())
    res, ctx = _prune(g, importance=importance)
    assert res.info["importance"] == importance
    assert res.info["macs_after"] < res.info["macs_before"]
    _reloads_exactly(res.generator, tmp_path, ctx.inputs.calibration[0])


def test_taylor_uses_the_distance_to_the_teacher() -> None:
    g = _gen(SkipNet())
    a, _ = _prune(g, importance="taylor")
    b, _ = _prune(g, importance="l2")
    assert a.generator.widths == b.generator.widths  # same shapes ...
    wa, wb = a.generator.module.a.weight, b.generator.module.a.weight
    assert not torch.equal(wa, wb)  # ... different channels kept


def test_bn_scale_without_norms_says_what_it_used() -> None:
    g = _gen(ShuffleNet())
    res, _ = _prune(g, importance="bn_scale")
    assert any("bn_scale" in n for n in res.info["notes"])


def test_lamp_ranks_across_layers() -> None:
    g = _gen(SkipNet())
    res, _ = _prune(g, importance="lamp")
    assert res.info["ranking"].startswith("global")
    m = res.generator.module
    assert all(c >= 1 for c in (m.a.out_channels, m.b.out_channels, m.c.out_channels))


# --- never a broken model --------------------------------------------------------------------------------


def test_a_group_that_breaks_the_forward_is_protected_not_fatal(tmp_path: Path) -> None:
    g = _gen(AttrNet())
    res, ctx = _prune(g)
    m = res.generator.module
    assert m.a.out_channels == 8  # its group broke the forward: protected
    assert m.b.out_channels == 4  # the rest pruned
    assert res.info["fallback"] and "broke the model" in res.info["fallback"]
    assert any(p["layer"] == "a" and "broke the model" in p["reason"] for p in res.info["protected"])
    _reloads_exactly(res.generator, tmp_path, ctx.inputs.calibration[0])


# --- the loader side ---------------------------------------------------------------------------------------


class AllLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.act = nn.PReLU(8)
        self.gn = nn.GroupNorm(2, 8)
        self.up = nn.ConvTranspose2d(8, 6, 4, 2, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gn(self.act(self.inorm(self.dw(self.bn(self.conv(x))))))
        return self.fc(self.up(h).mean(dim=(2, 3)))


def test_restore_widths_resizes_every_supported_layer() -> None:
    src = _randomise(AllLayers())
    keep8, keep6 = [0, 2, 3, 5], [1, 2, 4]
    sd = {}
    for k, v in src.state_dict().items():
        v = v.clone()
        layer = k.split(".")[0]
        if layer in ("conv",):
            v = v[keep8]
        elif layer in ("bn", "inorm", "act", "gn") and v.ndim == 1:
            v = v[keep8]
        elif layer == "dw":
            v = v[keep8]
        elif layer == "up":
            v = v[keep8][:, keep6] if v.ndim == 4 else v[keep6]
        elif layer == "fc" and k.endswith("weight"):
            v = v[:, keep6]
        sd[k] = v
    fresh = AllLayers()
    resized = restore_widths(fresh, sd)
    assert set(resized) == {"conv", "bn", "dw", "inorm", "act", "gn", "up", "fc"}
    fresh.load_state_dict(sd, strict=True)
    assert (fresh.conv.out_channels, fresh.bn.num_features, fresh.dw.groups, fresh.dw.in_channels) == (4, 4, 4, 4)
    assert (fresh.inorm.num_features, fresh.act.num_parameters, fresh.gn.num_channels) == (4, 4, 4)
    assert (fresh.up.in_channels, fresh.up.out_channels, fresh.fc.in_features) == (4, 3, 3)
    with torch.no_grad():
        assert fresh.eval()(torch.rand(2, 3, 8, 8)).shape == (2, 5)


def test_pruned_spandrel_model_reloads_from_the_file_alone(tmp_path: Path) -> None:
    g0 = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    c_in = 3
    for i in range(3):
        sd[f"body.{2 * i}.weight"] = torch.randn(16, c_in, 3, 3, generator=g0) * 0.1
        sd[f"body.{2 * i}.bias"] = torch.zeros(16)
        sd[f"body.{2 * i + 1}.weight"] = torch.full((16,), 0.25)
        c_in = 16
    sd["body.6.weight"] = torch.randn(12, 16, 3, 3, generator=g0) * 0.1
    sd["body.6.bias"] = torch.zeros(12)
    src = tmp_path / "compact.pth"
    torch.save({"params": sd}, src)
    g = load_generator(src)
    assert g.arch == "spandrel"
    res, ctx = _prune(g)
    assert res.generator.module.body[0].out_channels == 8
    assert res.generator.kwargs["unpruned_shapes"]["body.0.weight"] == [16, 3, 3, 3]
    _reloads_exactly(res.generator, tmp_path, ctx.inputs.calibration[0])


def test_the_trained_example_prunes_by_3x_and_reloads(tmp_path: Path) -> None:
    g = load_generator(Path(__file__).resolve().parents[3] / "examples" / "espcn_x2.safetensors")
    res, ctx = _prune(g)
    assert res.info["macs_before"] / res.info["macs_after"] >= 3.0
    assert [p["layer"] for p in res.info["protected"]] == ["tail"]
    _reloads_exactly(res.generator, tmp_path, ctx.inputs.calibration[0])
    export_onnx(res.generator, tmp_path / "espcn.onnx", size=16)
