"""The bad-input corpus: every unusable recipe, checkpoint, image folder or argument gets
one clear line naming the problem, exit code 2, no traceback; the inputs are not modified
and nothing in --out looks finished (no report.json).

Most cases run the CLI in-process (typer's CliRunner: torch is imported once); a few run
``python -m imgcompress.cli`` in a subprocess, as a user would.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

from imgcompress import models

ENV = {"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", "IMGCOMPRESS_DEBUG": ""}
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

MIN_RECIPE = "stages:\n  - quantize\n"


# --- inputs ------------------------------------------------------------------------------


@dataclass
class Env:
    """Where a case builds its inputs (``inp``), its --out folder, and what it watches."""

    tmp: Path
    shared_fn: Callable[[], Path]
    watched: list[Path] = field(default_factory=list)  # inputs outside ``inp`` to hash

    @property
    def inp(self) -> Path:
        return self.tmp / "in"

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def sentinel(self) -> Path:
        return self.tmp / "PWNED"

    def shared(self, rel: str) -> Path:
        p = self.shared_fn() / rel
        self.watched.append(p)
        return p

    def write(self, name: str, data: str | bytes) -> Path:
        p = self.inp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            p.write_text(data, encoding="utf-8")
        else:
            p.write_bytes(data)
        return p

    def recipe(self, text: str = MIN_RECIPE, name: str = "recipe.yaml") -> Path:
        return self.write(name, text)

    def torch_file(self, name: str, obj: object) -> Path:
        p = self.inp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, p)
        return p

    def fsrcnn(self, name: str = "fsrcnn.pth") -> Path:
        """A valid checkpoint: a freshly built FSRCNN (the real one's shape), saved as torch."""
        torch.manual_seed(0)
        return self.torch_file(name, models.build("fsrcnn", {}).state_dict())

    def fsrcnn_safetensors(self, name: str = "fsrcnn.safetensors") -> Path:
        from safetensors.torch import save_file

        torch.manual_seed(0)
        p = self.inp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in models.build("fsrcnn", {}).state_dict().items()}, str(p))
        return p

    def dcgan(self, name: str = "dcgan.pth") -> Path:
        """A small DCGAN generator (a model with no ground truth), under the real file's key."""
        torch.manual_seed(0)
        sd = models.build("dcgan", {"nz": 16, "ngf": 8, "nc": 3, "num_layers": 4}).state_dict()
        return self.torch_file(name, {"netG_state_dict": sd})

    def taesd(self, name: str = "taesd_decoder.pth", *, encoder: bool = False, latent: int = 4) -> Path:
        """A small TAESD-style decoder (or its encoder), as the published files are: a plain state dict."""
        from imgcompress.models.taesd import TAESDEncoder

        torch.manual_seed(0)
        if encoder:
            module = TAESDEncoder(latent_channels=latent, channels=8, blocks=[1, 1, 1, 1], pool_stages=[3],
                                  pool_channels=16)
        else:
            module = models.build("taesd_decoder", {"latent_channels": latent, "channels": 8,
                                                    "blocks": [1, 1, 1, 1], "pool_channels": 16})
        return self.torch_file(name, module.state_dict())

    def images(self, n: int, name: str = "images", junk: dict[str, bytes] | None = None) -> Path:
        folder = self.inp / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(n)
        for i in range(n):
            im = Image.new("RGB", (48, 48))
            im.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(48 * 48)])
            im.save(folder / f"img{i}.png")
        for fname, data in (junk or {}).items():
            (folder / fname).write_bytes(data)
        return folder


def junk_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def truncated(p: Path, frac: float = 0.5) -> Path:
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * frac)])
    return p


def png_bytes(side: int = 8) -> bytes:
    import io

    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), junk_bytes(side * side * 3)).save(buf, format="PNG")
    return buf.getvalue()


class RunsCode:
    """Unpickling this runs a shell command: weights_only loading must refuse it."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.sentinel}",))


def apply(e: Env, recipe: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["apply", str(recipe), str(ckpt), "--out", str(e.out), *extra]


# --- the cases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Env], list[str]]  # builds the inputs, returns the CLI arguments
    error: str  # regex the one-line message must match (re.search)
    shared: bool = False
    subprocess: bool = False
    xfail: str | None = None


def _typo(e: Env) -> list[str]:
    r = e.recipe("name: typo\nstages:\n  - quantize:\n      calibraton: minmax\n")
    return apply(e, r, e.inp / "never-read.pth")


CASES: list[Case] = [
    # --- recipes (fail before the checkpoint is read: it need not exist) ---
    Case("recipe-typo-key", _typo,
         r"recipe\.yaml: stages\.0\.quantize\.calibraton: Extra inputs are not permitted \(line 4\)", subprocess=True),
    Case("recipe-wrong-type",
         lambda e: apply(e, e.recipe("stages:\n  - quantize:\n      per_channel: sometimes\n"), e.inp / "x.pth"),
         r"stages\.0\.quantize\.per_channel: Input should be a valid boolean.*\(line 3\)"),
    Case("recipe-wrong-type-data",
         lambda e: apply(e, e.recipe("data:\n  calibration_samples: lots\nstages: [quantize]\n"), e.inp / "x.pth"),
         r"data\.calibration_samples: Input should be a valid integer.*\(line 2\)"),
    Case("recipe-out-of-range",
         lambda e: apply(e, e.recipe("stages:\n  - quantize:\n      percentile: 50\n"), e.inp / "x.pth"),
         r"stages\.0\.quantize\.percentile: Input should be greater than 90 \(line 3\)"),
    Case("recipe-bad-choice",
         lambda e: apply(e, e.recipe("stages:\n  - quantize:\n      calibration: median\n"), e.inp / "x.pth"),
         r"stages\.0\.quantize\.calibration: Input should be 'minmax', 'percentile' or 'entropy', got 'median'"),
    Case("recipe-unknown-stage",
         lambda e: apply(e, e.recipe("stages:\n  - quantize\n  - sparsify: {ratio: 0.5}\n"), e.inp / "x.pth"),
         r"stages\.1: unknown stage 'sparsify'; expected one of prune, distill, quantize, precision \(line 3\)"),
    Case("recipe-empty", lambda e: apply(e, e.recipe(""), e.inp / "x.pth"),
         r"recipe\.yaml: the recipe is empty; it needs at least 'stages:'"),
    Case("recipe-only-comments", lambda e: apply(e, e.recipe("# nothing here\n"), e.inp / "x.pth"),
         r"recipe\.yaml: the recipe is empty"),
    Case("recipe-no-stages", lambda e: apply(e, e.recipe("name: x\n"), e.inp / "x.pth"),
         r"recipe\.yaml: stages: Field required"),
    Case("recipe-empty-stages", lambda e: apply(e, e.recipe("stages: []\n"), e.inp / "x.pth"),
         r"recipe\.yaml: stages: List should have at least 1 item"),
    Case("recipe-yaml-syntax",
         lambda e: apply(e, e.recipe("stages:\n  - quantize: {calibration: minmax\ngate: {}\n"), e.inp / "x.pth"),
         r"recipe\.yaml: not valid YAML at line \d+, column \d+"),
    Case("recipe-is-a-list", lambda e: apply(e, e.recipe("- quantize\n- prune\n"), e.inp / "x.pth"),
         r"recipe\.yaml: the recipe must be a mapping with 'stages:', got a list"),
    Case("recipe-missing", lambda e: apply(e, e.inp / "nope.yaml", e.inp / "x.pth"),
         r"nope\.yaml: no such recipe file; shipped recipes are in recipes/"),
    Case("recipe-is-a-folder", lambda e: apply(e, e.images(0, name="recipes"), e.inp / "x.pth"),
         r"recipes: no such recipe file"),
    Case("recipe-binary-junk", lambda e: apply(e, e.write("recipe.yaml", b"\x89\xff" + junk_bytes(300)), e.inp / "x.pth"),
         r"recipe\.yaml: not a text file; a recipe is YAML"),
    Case("recipe-wrong-version", lambda e: apply(e, e.recipe("version: 2\nstages: [quantize]\n"), e.inp / "x.pth"),
         r"version: Input should be 1, got 2 \(line 1\)"),
    Case("recipe-graph-stage-after-precision",
         lambda e: apply(e, e.recipe("stages:\n  - precision\n  - quantize\n"), e.inp / "x.pth"),
         r"recipe\.yaml: stages\.1: 'quantize' comes after 'precision': the fp16/bf16 graph is final; "
         r"put 'precision' last \(line 3\)"),
    Case("recipe-prune-ignore-matches-nothing",
         lambda e: apply(e, e.recipe("stages:\n  - prune: {ignore: ['tial*']}\n"), e.fsrcnn()),
         r"recipe\.yaml: stages\.0\.prune\.ignore: 'tial\*' match no layer of the model; layer names look like"),
    Case("recipe-quantize-exclude-matches-nothing",
         lambda e: apply(e, e.recipe("stages:\n  - quantize: {exclude: ['/nope/*']}\n"), e.fsrcnn()),
         r"recipe\.yaml: stages\.0\.quantize\.exclude: '/nope/\*' match no node of the graph"),
    Case("recipe-precision-keep-fp32-matches-nothing",
         lambda e: apply(e, e.recipe("stages:\n  - precision: {keep_fp32: ['/nope/*']}\n"), e.fsrcnn()),
         r"recipe\.yaml: stages\.0\.precision\.keep_fp32: '/nope/\*' match no node name or op type of the graph"),
    Case("recipe-torch-stage-after-quantize",
         lambda e: apply(e, e.recipe("stages:\n  - quantize\n  - distill: {steps: 10}\n"), e.inp / "x.pth"),
         r"recipe\.yaml: stages\.1: 'distill' comes after 'quantize': torch stages \(prune, distill\) must come "
         r"before graph stages \(quantize, precision\)"),
    Case("recipe-gt-gate-no-ground-truth",
         lambda e: apply(e, e.recipe("stages: [quantize]\ngate: {max_gt_psnr_drop: 0.5}\n"), e.dcgan()),
         r"max_gt_psnr_drop needs ground truth, and task 'generate' has none; drop that threshold"),
    Case("recipe-gt-gate-no-ground-truth-real-dcgan",
         lambda e: apply(e, e.recipe("stages: [quantize]\ngate: {max_gt_psnr_drop: 0.5}\n"),
                         e.shared("checkpoints/dcgan_faces.tar")),
         r"max_gt_psnr_drop needs ground truth, and task 'generate' has none; drop that threshold", shared=True),
    Case("recipe-unknown-arch",
         lambda e: apply(e, e.recipe("model: {arch: resnet9000}\nstages: [quantize]\n"), e.fsrcnn()),
         r"fsrcnn\.pth: model\.arch 'resnet9000' is not a built-in architecture \(.*fsrcnn.*\); "
         r"or name a class as 'package\.module:Class'"),
    Case("recipe-arch-module-missing",
         lambda e: apply(e, e.recipe('model: {arch: "nonexistent.module:Cls"}\nstages: [quantize]\n'), e.fsrcnn()),
         r"model\.arch 'nonexistent\.module:Cls': cannot import module 'nonexistent\.module'.*install it or put it "
         r"on PYTHONPATH"),
    Case("recipe-arch-not-a-module-class",
         lambda e: apply(e, e.recipe('model: {arch: "os.path:join"}\nstages: [quantize]\n'), e.fsrcnn()),
         r"model\.arch 'os\.path:join': 'join' is not an nn\.Module class in os\.path"),
    # --- checkpoints ---
    Case("ckpt-missing", lambda e: apply(e, e.recipe(), e.inp / "gone.pth"),
         r"gone\.pth: no such file; check the checkpoint path"),
    Case("ckpt-is-a-folder", lambda e: apply(e, e.recipe(), e.images(1, name="ckpt.pth")),
         r"ckpt\.pth: is a folder without config\.json; pass a \.safetensors or \.pth"),
    Case("ckpt-empty", lambda e: apply(e, e.recipe(), e.write("empty.safetensors", b"")),
         r"empty\.safetensors: the file is empty; re-download or re-save the checkpoint"),
    Case("ckpt-truncated-safetensors", lambda e: apply(e, e.recipe(), truncated(e.fsrcnn_safetensors())),
         r"fsrcnn\.safetensors: unreadable safetensors file \(.*\); it may be truncated", subprocess=True),
    Case("ckpt-truncated-safetensors-header",
         lambda e: apply(e, e.recipe(), truncated(e.fsrcnn_safetensors(), frac=0.002)),
         r"fsrcnn\.safetensors: (unreadable safetensors file .*it may be truncated|not a checkpoint)"),
    Case("ckpt-truncated-pth", lambda e: apply(e, e.recipe(), truncated(e.fsrcnn())),
         r"fsrcnn\.pth: unreadable torch file \(.*\); it may be truncated"),
    Case("ckpt-truncated-real-pth",
         lambda e: apply(e, e.recipe(), truncated(e.write("fsrcnn_x2.pth", e.shared("checkpoints/fsrcnn_x2.pth").read_bytes()))),
         r"fsrcnn_x2\.pth: unreadable torch file \(.*\); it may be truncated", shared=True),
    Case("ckpt-text-named-pth", lambda e: apply(e, e.recipe(), e.write("weights.pth", "these are not weights\n")),
         r"weights\.pth: not a checkpoint \(neither safetensors nor a torch file\)"),
    Case("ckpt-png-named-safetensors", lambda e: apply(e, e.recipe(), e.write("model.safetensors", png_bytes())),
         r"model\.safetensors: not a checkpoint \(neither safetensors nor a torch file\)"),
    Case("ckpt-zip-not-torch",
         lambda e: apply(e, e.recipe(), _zip(e.inp / "archive.pth")),
         r"archive\.pth: unreadable torch file"),
    Case("ckpt-pickle-runs-code-zip",
         lambda e: apply(e, e.recipe(), e.torch_file("evil.pth", {"state_dict": RunsCode(e.sentinel)})),
         r"evil\.pth: refused to load: .*GLOBAL posix\.system.*only weights-only checkpoints are read", subprocess=True),
    Case("ckpt-pickle-runs-code-legacy",
         lambda e: apply(e, e.recipe(), e.write("evil.pt", pickle.dumps(RunsCode(e.sentinel), protocol=2))),
         r"evil\.pt: refused to load: .*GLOBAL posix\.system.*only weights-only checkpoints are read"),
    Case("ckpt-no-tensors", lambda e: apply(e, e.recipe(), e.torch_file("opt.pth", {"epoch": 3, "lr": 0.1})),
         r"opt\.pth: no tensors found \(top-level keys: epoch, lr\)"),
    Case("ckpt-a-bare-tensor", lambda e: apply(e, e.recipe(), e.torch_file("t.pth", torch.zeros(3))),
         r"t\.pth: holds a Tensor, not a state dict; save model\.state_dict\(\) instead"),
    Case("ckpt-no-arch-matches",
         lambda e: apply(e, e.recipe(), e.torch_file("odd.pth", {"stem.w": torch.randn(7, 5), "zz.q": torch.randn(3)})),
         r"odd\.pth: no known architecture matches these 2 tensors .*name one in the recipe, e\.g\. model: \{arch: "),
    Case("ckpt-shapes-dont-fit-arch",
         lambda e: apply(e, e.recipe("model: {arch: fsrcnn, kwargs: {d: 32}}\nstages: [quantize]\n"), e.fsrcnn()),
         r"fsrcnn\.pth: the weights do not fit arch 'fsrcnn': .*of another shape \(e\.g\. first_part\.0\.weight: "
         r"file \(56, 1, 5, 5\), model \(32, 1, 5, 5\)\); check model\.arch and model\.kwargs"),
    Case("ckpt-keys-dont-fit-arch",
         lambda e: apply(e, e.recipe("model: {arch: dcgan}\nstages: [quantize]\n"), e.fsrcnn()),
         r"fsrcnn\.pth: the weights do not fit arch 'dcgan': .*missing .*unexpected"),
    Case("ckpt-bad-kwargs-for-arch",
         lambda e: apply(e, e.recipe("model: {arch: fsrcnn, kwargs: {depth: 3}}\nstages: [quantize]\n"), e.fsrcnn()),
         r"fsrcnn\.pth: arch 'fsrcnn' does not take these kwargs .*depth"),
    # --- images (past recipe and checkpoint: a valid FSRCNN) ---
    Case("images-missing-folder", lambda e: apply(e, e.recipe(), e.fsrcnn(), "--images", str(e.inp / "nowhere")),
         r"nowhere: no such image folder; set data\.images \(or --images\)"),
    Case("images-folder-without-images",
         lambda e: apply(e, e.recipe(), e.fsrcnn(), "--images", str(e.images(0, junk={"notes.txt": b"hi"}))),
         r"images: holds no images \(\.png, .*\); point data\.images at a folder of images"),
    Case("images-corrupt-png",
         lambda e: apply(e, e.recipe(), e.fsrcnn(), "--images", str(e.images(2, junk={"broken.png": junk_bytes(2000)}))),
         r"broken\.png: unreadable image \(UnidentifiedImageError\); remove it or replace it"),
    Case("images-truncated-png",
         lambda e: apply(e, e.recipe(), e.fsrcnn(), "--images",
                         str(e.images(2, junk={"cut.png": png_bytes(64)[:2000]}))),
         r"cut\.png: unreadable image"),
    Case("images-only-one",
         lambda e: apply(e, e.recipe(), e.fsrcnn(), "--images", str(e.images(1))),
         r"images: needs at least 2 images to keep calibration and evaluation apart; add images or set "
         r"data\.eval_images"),
    Case("images-eval-folder-missing",
         lambda e: apply(e, e.recipe(), e.fsrcnn(), "--images", str(e.images(2)), "--eval-images", str(e.inp / "ev")),
         r"ev: no such image folder"),
    Case("images-recipe-data-images-missing",
         lambda e: apply(e, e.recipe(f"data: {{images: {e.inp / 'gone'}}}\nstages: [quantize]\n"), e.fsrcnn()),
         r"gone: no such image folder"),
    # --- a latent decoder's encoder (data.encoder) ---
    Case("data-encoder-missing",
         lambda e: apply(e, e.recipe(f"data: {{encoder: {e.inp / 'gone_encoder.pth'}}}\nstages: [quantize]\n"),
                         e.taesd()),
         r"data\.encoder: .*gone_encoder\.pth: no such file; set data\.encoder to the encoder checkpoint of this decoder"),
    Case("data-encoder-latent-channels-differ",
         lambda e: apply(e, e.recipe(f"data: {{encoder: {e.taesd('enc16.pth', encoder=True, latent=16)}}}\n"
                                     "stages: [quantize]\n"), e.taesd()),
         r"data\.encoder: enc16\.pth makes 16-channel latents, but the decoder takes 4; use the encoder of the "
         r"decoder's own autoencoder"),
    Case("data-encoder-is-the-decoder",
         lambda e: apply(e, e.recipe(f"data: {{encoder: {e.taesd()}}}\nstages: [quantize]\n"), e.taesd()),
         r"data\.encoder: taesd_decoder\.pth: not a TAESD-family encoder .*point data\.encoder at the encoder"),
    Case("data-encoder-truncated",
         lambda e: apply(e, e.recipe(f"data: {{encoder: {truncated(e.taesd('enc.pth', encoder=True))}}}\n"
                                     "stages: [quantize]\n"), e.taesd()),
         r"data\.encoder: .*enc\.pth: unreadable torch file \(.*\); it may be truncated"),
    Case("data-encoder-for-a-flat-latent-model",
         lambda e: apply(e, e.recipe(f"data: {{encoder: {e.taesd('enc.pth', encoder=True)}}}\nstages: [quantize]\n"),
                         e.dcgan()),
         r"data\.encoder is set, but the model takes latents \(16, 1, 1\), not image-like ones"),
    Case("data-encoder-real-taef2-decoder-as-encoder",
         lambda e: apply(e, e.recipe(f"data: {{encoder: {e.shared('checkpoints/taef2_decoder.pth')}}}\n"
                                     "stages: [quantize]\n"), e.shared("checkpoints/taef2_decoder.pth")),
         r"data\.encoder: taef2_decoder\.pth: not a TAESD-family encoder", shared=True),
    # --- arguments ---
    Case("args-out-is-a-file",
         lambda e: ["apply", str(e.recipe()), str(e.fsrcnn()), "--out", str(e.write("out.txt", "keep me\n"))],
         r"out\.txt: exists and is not a folder; --out must name a folder"),
    Case("args-threads-zero", lambda e: apply(e, e.recipe(), e.fsrcnn(), "--threads", "0"),
         r"Invalid value for '--threads'.*(greater than or equal to 1|x>=1)", subprocess=True),
    Case("args-min-ssim-out-of-range", lambda e: apply(e, e.recipe(), e.fsrcnn(), "--min-ssim", "5"),
         r"--min-ssim 5\.0: input should be less than or equal to 1"),
    Case("args-gate-missing-report", lambda e: ["gate", str(e.inp / "run" / "report.json"), "--min-psnr", "30"],
         r"report\.json: no such report; run imgcompress apply first", subprocess=True),
    Case("args-gate-folder-without-report", lambda e: ["gate", str(e.images(0, name="run")), "--min-psnr", "30"],
         r"run/report\.json: no such report"),
    Case("args-gate-non-report-json",
         lambda e: ["gate", str(e.write("report.json", '{"loss": 0.1, "epoch": 3}')), "--min-psnr", "30"],
         r"report\.json: not an imgcompress report \(schema 1\); pass the report\.json that apply wrote"),
    Case("args-gate-not-json", lambda e: ["gate", str(e.write("report.json", "psnr: 31\n"))],
         r"report\.json: not a JSON report \(JSONDecodeError\)"),
    Case("args-inspect-missing", lambda e: ["inspect", str(e.inp / "missing.safetensors")],
         r"missing\.safetensors: no such file; check the checkpoint path"),
    Case("args-inspect-no-checkpoint", lambda e: ["inspect"],
         r"inspect needs a CHECKPOINT \(or --archs\)"),
    Case("args-inspect-no-arch-matches",
         lambda e: ["inspect", str(e.torch_file("odd.pth", {"stem.w": torch.randn(7, 5)}))],
         r"odd\.pth: no known architecture matches these 1 tensors .*name one"),
]


def _zip(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "a zip, but not a torch checkpoint")
    return p


# --- running -----------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    crashed: BaseException | None = None  # an exception that escaped the CLI in-process


def run_subprocess(args: list[str], cwd: Path) -> Outcome:
    env = {**os.environ, **ENV}
    p = subprocess.run([sys.executable, "-m", "imgcompress.cli", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    return Outcome(p.returncode, p.stdout, p.stderr)


def run_in_process(args: list[str], cwd: Path) -> Outcome:
    from typer.testing import CliRunner

    from imgcompress.cli import app

    old = Path.cwd()
    os.chdir(cwd)
    try:
        r = CliRunner().invoke(app, args, env=ENV)
    finally:
        os.chdir(old)
    crashed = r.exception if r.exception is not None and not isinstance(r.exception, SystemExit) else None
    return Outcome(r.exit_code, r.stdout, r.stderr, crashed)


def error_lines(stderr: str) -> list[str]:
    """The error's lines. Progress (``· loading …``) and log lines (``calibration crop reduced …``)
    may come before it; the error is the last thing printed, starting at ``error:``. A usage error
    (click) is a ``Usage:``/``Try …`` header and the message in a frame that rich draws."""
    lines = [ln.strip() for ln in ANSI.sub("", stderr).splitlines()]
    lines = [ln for ln in lines if ln]
    if lines and lines[0].startswith("Usage:"):
        return [ln.strip("│ ") for ln in lines[1:] if not ln.startswith(("Try ", "╭", "╰"))]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    assert len(starts) == 1, "expected exactly one 'error:' line in:\n" + "\n".join(lines)
    return lines[starts[0]:]


def sha256_tree(*roots: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file()) if root.exists() else []
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _params() -> list:
    out = []
    for c in CASES:
        marks = [pytest.mark.shared] if c.shared else []
        if c.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=c.xfail))
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def test_corpus_is_big_and_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 25


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = Env(tmp_path, lambda: request.getfixturevalue("shared_dir"))
    args = case.make(env)
    before = sha256_tree(env.inp, *env.watched)

    run = run_subprocess if case.subprocess else run_in_process
    res = run(args, tmp_path)
    shown = f"args={args}\nexit={res.code}\nstdout={res.stdout!r}\nstderr={res.stderr!r}"

    assert res.crashed is None, f"an exception escaped the CLI: {res.crashed!r}\n{shown}"
    assert "Traceback" not in res.stderr + res.stdout, shown
    assert "internal error" not in res.stderr, shown
    assert res.code == 2, shown
    lines = error_lines(res.stderr)
    assert len(lines) == 1, f"expected a one-line error at the end, got {len(lines)} lines:\n" + "\n".join(lines)
    assert re.search(case.error, lines[0]), f"{lines[0]!r} does not match {case.error!r}"

    assert sha256_tree(env.inp, *env.watched) == before, "an input file was modified"
    assert not env.sentinel.exists(), "unpickling ran code from the checkpoint"
    if env.out.exists():
        assert not list(env.out.rglob("report.json")), f"finished-looking output in {env.out}"
