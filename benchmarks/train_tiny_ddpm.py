"""Train a tiny pixel-space DDPM (diffusers UNet2DModel, 16 × 16 RGB crops of an image folder)
and save it as a pipeline folder (unet/ + scheduler/), so recipes/unet_int8.yaml can be measured
on a UNet whose sampling converges (the test fixture's UNet is untrained).

    .venv/bin/python benchmarks/train_tiny_ddpm.py IMAGES OUT [--steps 1500] [--threads 2]

Epsilon objective on random 16-px crops of 4× downscaled images, linear schedule, Adam 1e-3.
Prints the loss every 250 steps and the seconds taken.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def crops(folder: Path, n: int, rng: random.Random) -> torch.Tensor:
    ims = [Image.open(p).convert("RGB") for p in sorted(folder.iterdir()) if p.suffix.lower() in (".png", ".jpg")]
    ims = [im.resize((im.width // 4, im.height // 4), Image.BICUBIC) for im in ims]
    out = []
    for _ in range(n):
        im = ims[rng.randrange(len(ims))]
        x, y = rng.randrange(im.width - 16), rng.randrange(im.height - 16)
        a = np.asarray(im.crop((x, y, x + 16, y + 16)), dtype=np.float32) / 127.5 - 1
        out.append(torch.from_numpy(a).permute(2, 0, 1))
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import diffusers

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    data = crops(a.images, 4096, rng)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    t0, run = time.time(), 0.0
    for step in range(1, a.steps + 1):
        x0 = data[torch.randint(len(data), (32,))]
        x0 = torch.where(torch.rand(32, 1, 1, 1) < 0.5, x0, x0.flip(-1))
        t = torch.randint(0, 1000, (32,))
        eps = torch.randn_like(x0)
        loss = F.mse_loss(unet(sched.add_noise(x0, eps, t), t).sample, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        run = 0.98 * run + 0.02 * loss.item() if step > 1 else loss.item()
        if step % 250 == 0:
            print(f"step {step}: loss {run:.4f} ({time.time() - t0:.0f} s)", flush=True)
    unet.save_pretrained(a.out / "unet")
    (a.out / "scheduler").mkdir(parents=True, exist_ok=True)
    (a.out / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
         "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon"}, indent=1))
    print(f"saved {a.out} after {a.steps} steps, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
