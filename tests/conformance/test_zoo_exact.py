"""The built-in archs reproduce the real checkpoints exactly.

Each reference forward below restates the architecture facts of
``shared/checkpoints/README.md`` with ``torch.nn.functional`` ops on the raw tensors,
independently of ``imgcompress.models``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from imgcompress import models

pytestmark = pytest.mark.shared

Tensors = dict[str, torch.Tensor]

FILES = {
    "fsrcnn": "fsrcnn_x2.pth",
    "imdn": "imdn_x4.pth",
    "dcgan": "dcgan_faces.tar",
    "mnist_vae_decoder": "mnist_vae.pth",
    "cyclegan_resnet": "cyclegan_vintage_G_A2B.pth",
    "taesd_decoder": "taef2_decoder.pth",
}


def raw_state_dict(shared: Path, name: str) -> Tensors:
    """The file's tensors, unwrapped by hand (the resolver's job in the library)."""
    sd = torch.load(shared / "checkpoints" / name, map_location="cpu", weights_only=True)
    if name == "dcgan_faces.tar":
        sd = sd["netG_state_dict"]
    elif name == "imdn_x4.pth":
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    elif name == "realesr-animevideov3.pth":
        sd = sd["params"]
    return dict(sd)


def load_builtin(sd: Tensors, name: str, **overrides: object) -> torch.nn.Module:
    arch = models.detect(sd)
    assert arch is not None and arch.name == name
    module = models.build(name, {**arch.infer_kwargs(sd), **overrides}).eval()
    module.load_state_dict(arch.select(sd), strict=True)
    return module


def seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# --- reference forwards ---------------------------------------------------------------


def ref_fsrcnn(w: Tensors, x: torch.Tensor) -> torch.Tensor:
    h = F.prelu(F.conv2d(x, w["first_part.0.weight"], w["first_part.0.bias"], padding=2), w["first_part.1.weight"])
    h = F.prelu(F.conv2d(h, w["mid_part.0.weight"], w["mid_part.0.bias"]), w["mid_part.1.weight"])
    for i in (2, 4, 6, 8):
        h = F.conv2d(h, w[f"mid_part.{i}.weight"], w[f"mid_part.{i}.bias"], padding=1)
        h = F.prelu(h, w[f"mid_part.{i + 1}.weight"])
    h = F.prelu(F.conv2d(h, w["mid_part.10.weight"], w["mid_part.10.bias"]), w["mid_part.11.weight"])
    return F.conv_transpose2d(h, w["last_part.weight"], w["last_part.bias"], stride=2, padding=4, output_padding=1)


def ref_dcgan(w: Tensors, z: torch.Tensor) -> torch.Tensor:
    h = z
    for conv, bn, stride, pad in ((0, 1, 1, 0), (3, 4, 2, 1), (6, 7, 2, 1), (9, 10, 2, 1)):
        h = F.conv_transpose2d(h, w[f"main.{conv}.weight"], stride=stride, padding=pad)
        mean, var = w[f"main.{bn}.running_mean"], w[f"main.{bn}.running_var"]
        h = F.batch_norm(h, mean, var, w[f"main.{bn}.weight"], w[f"main.{bn}.bias"], training=False, eps=1e-5)
        h = F.relu(h)
    return torch.tanh(F.conv_transpose2d(h, w["main.12.weight"], stride=2, padding=1))


def ref_vae_decoder(w: Tensors, z: torch.Tensor) -> torch.Tensor:
    h = F.relu(F.linear(z, w["fc3.weight"], w["fc3.bias"]))
    return torch.sigmoid(F.linear(h, w["fc4.weight"], w["fc4.bias"])).reshape(-1, 1, 28, 28)


def ref_cyclegan(w: Tensors, x: torch.Tensor) -> torch.Tensor:
    def conv_in_relu(h: torch.Tensor, i: int, *, relu: bool = True, **conv: int) -> torch.Tensor:
        h = F.conv2d(h, w[f"model.{i}.weight"], w[f"model.{i}.bias"], **conv)
        h = F.instance_norm(h, weight=w[f"model.{i + 1}.weight"], bias=w[f"model.{i + 1}.bias"], eps=1e-5)
        return F.relu(h) if relu else h

    h = conv_in_relu(F.pad(x, (3, 3, 3, 3), mode="reflect"), 1)
    h = conv_in_relu(h, 4, stride=2, padding=1)
    h = conv_in_relu(h, 7, stride=2, padding=1)
    for b in range(10, 19):
        p = f"model.{b}.block"
        r = F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), w[f"{p}.1.weight"], w[f"{p}.1.bias"])
        r = F.relu(F.instance_norm(r, weight=w[f"{p}.2.weight"], bias=w[f"{p}.2.bias"], eps=1e-5))
        r = F.conv2d(F.pad(r, (1, 1, 1, 1), mode="reflect"), w[f"{p}.5.weight"], w[f"{p}.5.bias"])
        h = h + F.instance_norm(r, weight=w[f"{p}.6.weight"], bias=w[f"{p}.6.bias"], eps=1e-5)
    for i in (19, 22):
        h = F.conv_transpose2d(h, w[f"model.{i}.weight"], w[f"model.{i}.bias"], stride=2, padding=1, output_padding=1)
        h = F.relu(F.instance_norm(h, weight=w[f"model.{i + 1}.weight"], bias=w[f"model.{i + 1}.bias"], eps=1e-5))
    h = F.conv2d(F.pad(h, (3, 3, 3, 3), mode="reflect"), w["model.26.weight"], w["model.26.bias"])
    return torch.tanh(h)


def ref_imdn(w: Tensors, x: torch.Tensor) -> torch.Tensor:
    def conv(h: torch.Tensor, name: str) -> torch.Tensor:
        k = w[f"{name}.weight"]
        return F.conv2d(h, k, w[f"{name}.bias"], padding=k.shape[-1] // 2)

    def lrelu(h: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(h, 0.05)

    fea = conv(x, "fea_conv")
    h, outs = fea, []
    for b in range(1, 7):
        p = f"IMDB{b}"
        d1, r = lrelu(conv(h, f"{p}.c1")).split([16, 48], dim=1)
        d2, r = lrelu(conv(r, f"{p}.c2")).split([16, 48], dim=1)
        d3, r = lrelu(conv(r, f"{p}.c3")).split([16, 48], dim=1)
        d4 = conv(r, f"{p}.c4")  # no activation: with one, Set5 ×4 drops from 32.21 to 31.22 dB
        cat = torch.cat([d1, d2, d3, d4], dim=1)
        mean = cat.mean(dim=(2, 3), keepdim=True)
        stat = ((cat - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt() + mean  # population std + mean
        att = torch.sigmoid(conv(F.relu(conv(stat, f"{p}.cca.conv_du.0")), f"{p}.cca.conv_du.2"))
        h = conv(cat * att, f"{p}.c5") + h
        outs.append(h)
    h = conv(lrelu(conv(torch.cat(outs, dim=1), "c.0")), "LR_conv") + fea
    return F.pixel_shuffle(conv(h, "upsampler.0"), 4)


def ref_taef2_decoder(w: Tensors, z: torch.Tensor) -> torch.Tensor:
    w = {k: v.float() for k, v in w.items()}  # the file is fp16

    def block(h: torch.Tensor, i: int) -> torch.Tensor:
        if f"{i}.pool.0.weight" in w:
            p = F.relu(F.group_norm(F.conv2d(h, w[f"{i}.pool.0.weight"]), 4, w[f"{i}.pool.1.weight"],
                                    w[f"{i}.pool.1.bias"]))
            h = h + F.conv2d(p, w[f"{i}.pool.3.weight"])
        r = F.relu(F.conv2d(h, w[f"{i}.conv.0.weight"], w[f"{i}.conv.0.bias"], padding=1))
        r = F.relu(F.conv2d(r, w[f"{i}.conv.2.weight"], w[f"{i}.conv.2.bias"], padding=1))
        return F.relu(F.conv2d(r, w[f"{i}.conv.4.weight"], w[f"{i}.conv.4.bias"], padding=1) + h)

    h = F.relu(F.conv2d(torch.tanh(z / 3) * 3, w["1.weight"], w["1.bias"], padding=1))
    for stage in ((3, 4, 5), (8, 9, 10), (13, 14, 15), (18,)):
        if stage[0] != 3:
            h = F.conv2d(F.interpolate(h, scale_factor=2, mode="nearest"), w[f"{stage[0] - 1}.weight"], padding=1)
        for i in stage:
            h = block(h, i)
    return F.conv2d(h, w["19.weight"], w["19.bias"], padding=1)


def ref_compact(w: Tensors, x: torch.Tensor) -> torch.Tensor:
    h = x
    for i in range(0, 34, 2):
        h = F.prelu(F.conv2d(h, w[f"body.{i}.weight"], w[f"body.{i}.bias"], padding=1), w[f"body.{i + 1}.weight"])
    h = F.pixel_shuffle(F.conv2d(h, w["body.34.weight"], w["body.34.bias"], padding=1), 4)
    return h + F.interpolate(x, scale_factor=4, mode="nearest")


# --- tests ----------------------------------------------------------------------------


@torch.no_grad()
def test_fsrcnn_matches_reference(shared_dir: Path) -> None:
    sd = raw_state_dict(shared_dir, FILES["fsrcnn"])
    module = load_builtin(sd, "fsrcnn")
    x = seeded(2, 1, 24, 20)
    y = module(x)
    assert y.shape == (2, 1, 48, 40)
    assert torch.equal(y, ref_fsrcnn(sd, x))


@torch.no_grad()
def test_dcgan_matches_reference(shared_dir: Path) -> None:
    sd = raw_state_dict(shared_dir, FILES["dcgan"])
    module = load_builtin(sd, "dcgan")
    z = torch.randn(4, 100, 1, 1, generator=torch.Generator().manual_seed(0))
    y = module(z)
    assert y.shape == (4, 3, 64, 64)
    assert torch.equal(y, ref_dcgan(sd, z))


@torch.no_grad()
def test_mnist_vae_decoder_matches_reference(shared_dir: Path) -> None:
    sd = raw_state_dict(shared_dir, FILES["mnist_vae_decoder"])
    assert {"fc1.weight", "fc21.weight", "fc22.weight"} <= set(sd)  # the file holds the encoder too
    module = load_builtin(sd, "mnist_vae_decoder")
    z = torch.randn(8, 20, generator=torch.Generator().manual_seed(0))
    y = module(z)
    assert y.shape == (8, 1, 28, 28)
    assert torch.equal(y, ref_vae_decoder(sd, z))
    # Our own saved files hold only the decoder: they must detect and load the same way.
    assert torch.equal(load_builtin(models.get("mnist_vae_decoder").select(sd), "mnist_vae_decoder")(z), y)


@torch.no_grad()
def test_cyclegan_matches_reference(shared_dir: Path) -> None:
    sd = raw_state_dict(shared_dir, FILES["cyclegan_resnet"])
    assert len(sd) == 94 and not any("running" in k for k in sd)
    module = load_builtin(sd, "cyclegan_resnet")
    x = seeded(1, 3, 64, 64) * 2 - 1
    y = module(x)
    assert y.shape == (1, 3, 64, 64)
    assert torch.equal(y, ref_cyclegan(sd, x))


@torch.no_grad()
def test_imdn_matches_reference(shared_dir: Path) -> None:
    sd = raw_state_dict(shared_dir, FILES["imdn"])
    module = load_builtin(sd, "imdn")
    x = seeded(1, 3, 24, 20)
    y = module(x)
    assert y.shape == (1, 3, 96, 80)
    assert torch.equal(y, ref_imdn(sd, x))


@torch.no_grad()
def test_realesr_compact_loads_through_spandrel(shared_dir: Path) -> None:
    raw = torch.load(shared_dir / "checkpoints" / "realesr-animevideov3.pth", map_location="cpu", weights_only=True)
    assert models.detect(raw["params"]) is None  # no built-in arch claims it
    desc = models.spandrel_detect(raw)  # the {"params": ...} wrapper is spandrel's to unwrap
    assert desc is not None
    gen = models.spandrel_generator(desc, "realesr-animevideov3.pth").eval()
    assert (gen.arch, gen.kwargs) == ("spandrel", {"architecture": "Compact"})
    spec = gen.spec
    assert (spec.task, spec.color, spec.scale, spec.size_multiple) == ("sr", "rgb", 4, 1)
    x = seeded(1, 3, 16, 12)
    y = gen(x)
    assert y.shape == (1, 3, 64, 48)
    assert torch.equal(y, ref_compact(raw["params"], x))


@torch.no_grad()
def test_taef2_decoder_matches_reference(shared_dir: Path) -> None:
    sd = raw_state_dict(shared_dir, FILES["taesd_decoder"])
    assert len(sd) == 79 and all(v.dtype == torch.float16 for v in sd.values())
    module = load_builtin(sd, "taesd_decoder")
    z = torch.randn(2, 32, 6, 5, generator=torch.Generator().manual_seed(0)) * 2
    y = module(z)
    assert y.shape == (2, 3, 48, 40)
    assert torch.equal(y, ref_taef2_decoder(sd, z))


@pytest.mark.parametrize("name", sorted(FILES))
def test_detection_is_unambiguous(shared_dir: Path, name: str) -> None:
    sd = raw_state_dict(shared_dir, FILES[name])
    assert [a for a in models.names() if models.get(a).detect(sd)] == [name]
    assert models.spandrel_detect(sd) is None


@pytest.mark.parametrize("name", ["taef2_encoder.pth", "realesr-animevideov3.pth"])
def test_no_zoo_arch_claims_other_files(shared_dir: Path, name: str) -> None:
    sd = raw_state_dict(shared_dir, name)
    for arch in FILES:
        assert models.get(arch).detect(sd) is False, arch
