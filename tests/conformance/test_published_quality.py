"""Loading through imgcompress reproduces the published Set5 quality of the SR checkpoints.

Protocol (../shared/checkpoints/README.md): LR = PIL-bicubic downscale of the Set5 HR image,
PSNR on the BT.601 Y channel with a border of `scale` pixels cropped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imgcompress import load_generator
from imgcompress.data import make_inputs
from imgcompress.recipe import DataConfig
from imgcompress.validate.quality import outputs, quality


@pytest.mark.parametrize(("file", "published", "bicubic"), [
    ("fsrcnn_x2.pth", 37.10, 33.67),
    ("imdn_x4.pth", 32.21, 28.43),
])
def test_set5_y_psnr_matches_the_published_figure(shared_dir: Path, file: str, published: float, bicubic: float) -> None:
    g = load_generator(shared_dir / "checkpoints" / file)
    cfg = DataConfig(images=str(shared_dir / "images" / "set14"), eval_images=str(shared_dir / "images" / "set5"),
                     calibration_samples=1, eval_samples=5)
    inputs = make_inputs(g.spec, cfg)
    assert [s.name for s in inputs.evaluation] == ["baby.png", "bird.png", "butterfly.png", "head.png", "woman.png"]
    q = quality(outputs(g.module, [s.input for s in inputs.evaluation]), None, inputs, g.spec)
    assert q["gt_psnr_db"] == pytest.approx(published, abs=0.05)
    assert q["gt_psnr_db"] > bicubic + 2.0
