"""report.html from a real `imgcompress apply`, opened offline in headless Chromium.

The int8 recipe runs once (module-scoped) on the example checkpoint with fewer inputs and
timing repeats than it ships with, as in test_recipes.py. The Chromium cases skip, saying why,
where no chromium binary is on PATH (.ci/run installs one with apt-get when it can).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from imgcompress.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "espcn_x2.safetensors"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("html")
    data = yaml.safe_load((ROOT / "recipes" / "int8.yaml").read_text())
    data["data"] = {**data.get("data", {}), "calibration_samples": 8, "eval_samples": 3}
    data["validate"] = {"repeats": 3, "warmup": 1}
    recipe = tmp / "int8.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp / "out"
    res = runner.invoke(app, ["apply", str(recipe), str(EXAMPLE), "--out", str(out), "--threads", "2"])
    assert (out / "report.html").is_file(), res.output
    return {"code": res.exit_code, "output": res.output, "out": out, "html": (out / "report.html").read_text(),
            "report": json.loads((out / "report.json").read_text())}


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    exe = next((p for p in map(shutil.which, BROWSERS) if p), None)
    if exe is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); "
                    "install one, e.g. apt-get install -y chromium")
    profile = tmp_path_factory.mktemp("chromium-profile")
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}"]


class _Tags(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def test_apply_writes_report_html_and_prints_its_path(run: dict[str, Any]) -> None:
    assert run["code"] == 0, run["output"]
    out = run["out"]
    assert f"{out / 'report.html'}" in run["output"]
    assert not (out / ".partial").exists()
    assert (out / "report.html").stat().st_size < 3_000_000


def test_report_html_shows_the_measured_outputs(run: dict[str, Any]) -> None:
    page, r = run["html"], run["report"]
    imgs = _Tags(page).all("img")
    assert len(imgs) == 3 * 4  # 3 evaluation inputs: original | final | error map | ground truth (sr)
    assert all((a["src"] or "").startswith("data:image/png;base64,") for a in imgs)
    # the images are the ones measured: their per-image PSNRs average to the report's figure
    per_image = [float(v) for v in re.findall(r"PSNR vs original on this image: ([\d.]+) dB", page)]
    (final,) = r["artifacts"]
    assert len(per_image) == 3 and sum(per_image) / 3 == pytest.approx(final["psnr_db"], abs=0.01)
    assert "Drift budget search" in page and r["stages"][0]["info"]["search"]["sensitivity"][0]["node"] in page


def test_chromium_renders_the_grid_and_the_plot(run: dict[str, Any], chromium: list[str]) -> None:
    url = (run["out"] / "report.html").resolve().as_uri()
    res = subprocess.run([*chromium, "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = _Tags(res.stdout)
    imgs = [a for a in dom.all("img") if (a["src"] or "").startswith("data:image/png;base64,")]
    assert len(imgs) == 12
    circles = dom.all("circle")
    assert [c["data-name"] for c in circles] == ["original (ORT fp32)", run["report"]["final"]]


def test_chromium_screenshot_is_not_blank(run: dict[str, Any], chromium: list[str], tmp_path: Path) -> None:
    png = tmp_path / "shot.png"
    url = (run["out"] / "report.html").resolve().as_uri()
    res = subprocess.run([*chromium, f"--screenshot={png}", "--window-size=1200,2000", url],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and png.is_file(), res.stderr[-2000:]
    with Image.open(png) as im:
        assert im.size == (1200, 2000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 100  # text, tables, photos: far from a single colour
