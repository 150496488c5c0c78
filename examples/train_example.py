"""Train the example checkpoint: a small ×2 ESPCN on the images bundled with imgcompress.

    .venv/bin/python examples/train_example.py            # writes examples/espcn_x2.safetensors

The degradation is the one `imgcompress apply` evaluates with: PIL bicubic downscale by 2
(`imgcompress.data.bicubic_downscale`). The bundled images are split the way `apply`
splits them (every other image from the end is held out), so the model never sees the
images it is evaluated on, here or in a report made with the default data settings. Training is a fixed number of steps
with fixed seeds on a fixed number of threads, so a rerun gives the same weights on the
same machine and software (bit-exactness across CPUs and torch versions is not promised).
At the end it prints Y-PSNR (BT.601, 2 px border) of the net and of bicubic upscaling
on the held-out images.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn

import imgcompress
from imgcompress import models
from imgcompress.data import bicubic_downscale, bundled_images_dir, crop_to_multiple, list_images, load_rgb, to_tensor
from imgcompress.validate import metrics

SCALE = 2
HERE = Path(__file__).resolve().parent


def split(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(train, held out): the rule `imgcompress.data` uses to keep evaluation apart when a
    recipe asks for at least half the images (the default ``data.eval_samples`` is 8)."""
    held = files[::-1][::2][: len(files) // 2]
    return [f for f in files if f not in held], held


def random_batch(images: list[Image.Image], rng: random.Random, batch: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random HR crops (``crop`` px, flipped/rotated) and their bicubic ×2 downscales."""
    lrs, hrs = [], []
    for _ in range(batch):
        im = rng.choice(images)
        w, h = im.size
        left, top = rng.randint(0, w - crop), rng.randint(0, h - crop)
        hr = im.crop((left, top, left + crop, top + crop))
        if rng.random() < 0.5:
            hr = hr.transpose(Image.FLIP_LEFT_RIGHT)
        k = rng.randrange(4)
        if k:
            hr = hr.transpose((Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)[k - 1])
        lrs.append(to_tensor(bicubic_downscale(hr, SCALE)))
        hrs.append(to_tensor(hr))
    return torch.cat(lrs), torch.cat(hrs)


def bilinear_init(module: nn.Module, *, tail_noise: float = 0.1) -> None:
    """Start the net at bilinear ×2 upsampling, so training learns what interpolation misses.

    The first 3 features of ``head`` and of every ``body`` conv copy the RGB input through
    (inputs are in [0, 1], so the ReLUs pass them unchanged); ``tail`` turns them into the
    4 sub-pixels of bilinear upsampling (PixelShuffle order ``c·4 + 2·i + j``). The other
    features keep PyTorch's default initialisation; their weights into ``tail`` are scaled
    by ``tail_noise`` so the starting output stays close to bilinear.
    """
    c = 3
    with torch.no_grad():
        head = module.head
        head.weight[:c].zero_()
        head.bias[:c].zero_()
        k = head.kernel_size[0] // 2
        for ch in range(c):
            head.weight[ch, ch, k, k] = 1.0
        for conv in module.body:
            if isinstance(conv, nn.Conv2d):
                conv.weight[:c].zero_()
                conv.bias[:c].zero_()
                for ch in range(c):
                    conv.weight[ch, ch, 1, 1] = 1.0
        tail = module.tail
        tail.weight.mul_(tail_noise)
        tail.bias.zero_()
        tail.weight[:, :c].zero_()
        # ×2 only: HR pixel 2y+i sits at LR position y - 1/4 (i = 0) or y + 1/4 (i = 1)
        taps = (torch.tensor([0.25, 0.75, 0.0]), torch.tensor([0.0, 0.75, 0.25]))
        for ch in range(c):
            for i in range(SCALE):
                for j in range(SCALE):
                    tail.weight[ch * SCALE * SCALE + i * SCALE + j, ch] = torch.outer(taps[i], taps[j])


def evaluate(module: nn.Module, files: list[Path]) -> list[tuple[str, float, float]]:
    """Per image: (name, net Y-PSNR, bicubic Y-PSNR), both against the original, border = scale."""
    rows = []
    module.eval()
    with torch.no_grad():
        for f in files:
            hr = crop_to_multiple(load_rgb(f), SCALE)
            lr = bicubic_downscale(hr, SCALE)
            gt = metrics.y_channel(to_tensor(hr))
            net = metrics.y_channel(module(to_tensor(lr)).clamp(0, 1))
            bic = metrics.y_channel(to_tensor(lr.resize(hr.size, Image.BICUBIC)))
            rows.append((f.name, metrics.psnr(net, gt, border=SCALE), metrics.psnr(bic, gt, border=SCALE)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--num-body", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=48, help="HR crop side (px); the LR input is crop/2")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "espcn_x2.safetensors")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    train_files, held_files = split(list_images(bundled_images_dir()))
    train = [load_rgb(f) for f in train_files]
    print(f"train on {', '.join(f.name for f in train_files)}; hold out {', '.join(f.name for f in held_files)}")

    kwargs = {"scale": SCALE, "channels": 3, "features": args.features, "num_body": args.num_body}
    arch = models.get("espcn")
    assert arch is not None
    module = arch.build(**kwargs)
    bilinear_init(module)
    gen = imgcompress.Generator(module, arch.spec(kwargs), arch.name, kwargs, source="examples/train_example.py")
    print(f"espcn {kwargs}: {gen.params} parameters; {args.steps} steps of batch {args.batch} x {args.crop}px, "
          f"{args.threads} threads")

    opt = torch.optim.Adam(module.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps, eta_min=args.lr * 0.01)
    loss_fn = nn.L1Loss()
    t0, c0 = time.perf_counter(), time.process_time()
    running = 0.0
    module.train()
    for step in range(1, args.steps + 1):
        lr_img, hr_img = random_batch(train, rng, args.batch, args.crop)
        loss = loss_fn(module(lr_img), hr_img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if step % 250 == 0 or step == args.steps:
            n = 250 if step % 250 == 0 else step % 250
            print(f"step {step:5d}  L1 {running / n:.4f}  {time.perf_counter() - t0:6.1f} s", flush=True)
            running = 0.0
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0

    rows = evaluate(module, held_files)
    print(f"\ntrained in {train_s:.1f} s wall, {train_cpu:.1f} s CPU; held-out Y-PSNR (dB, border {SCALE}):")
    print(f"  {'image':<24} {'espcn':>7} {'bicubic':>8} {'gain':>6}")
    for name, net, bic in rows:
        print(f"  {name:<24} {net:7.2f} {bic:8.2f} {net - bic:+6.2f}")
    m_net = sum(r[1] for r in rows) / len(rows)
    m_bic = sum(r[2] for r in rows) / len(rows)
    print(f"  {'mean':<24} {m_net:7.2f} {m_bic:8.2f} {m_net - m_bic:+6.2f}")

    gen.eval()
    path = imgcompress.save_generator(gen, args.out)
    print(f"\nwrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
