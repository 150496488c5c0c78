"""Read and write generator checkpoints.

Reading never runs pickled code: torch files go through ``torch.load(weights_only=True)``,
safetensors through the safetensors library. Common containers (``state_dict``, ``params``,
``params_ema``, ``netG_state_dict`` ...) and wrapper prefixes (``module.``) are unwrapped.
Writing produces safetensors whose ``__metadata__`` carries everything needed to rebuild the
generator from the file alone.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .files import default_mode, temp_beside

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

FORMAT_VERSION = 1
METADATA_KEY = "imgcompress"

# Keys under which training code commonly nests the generator's weights, best first.
CONTAINER_KEYS = (
    "params_ema",
    "params",
    "netG_state_dict",
    "g_ema",
    "state_dict",
    "model_state_dict",
    "generator",
    "netG",
    "model",
    "net",
    "ema",
)
# Prefixes added by wrappers (DataParallel/DDP, torch.compile), stripped when every key has one.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".tar", ".bin")
# The weights of a diffusers model folder, best first.
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass
class RawCheckpoint:
    """A state dict as read from disk, plus the imgcompress metadata if the file has it."""

    path: Path
    state_dict: StateDict
    metadata: dict[str, Any] | None = None
    container: str = ""  # how it was unwrapped, e.g. "netG_state_dict" or "params"
    notes: list[str] = field(default_factory=list)


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80":
        return "torch-legacy"
    return "unknown"


def read_checkpoint(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Read a checkpoint file into an unwrapped state dict. Raises `CheckpointError`."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file; check the checkpoint path")
    if p.is_dir():
        return _read_model_folder(p)
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the file is empty; re-download or re-save the checkpoint")
    kind = _sniff(p)
    if kind == "safetensors":
        return _read_safetensors(p)
    if kind in ("torch-zip", "torch-legacy"):
        return _read_torch(p)
    raise CheckpointError(
        f"{p}: not a checkpoint (neither safetensors nor a torch file); "
        "pass a .safetensors or .pth/.pt/.ckpt file"
    )


def _read_model_folder(p: Path) -> RawCheckpoint:
    """A diffusers model folder: the weights beside its config.json (the config is the model
    loader's business)."""
    if not (p / "config.json").is_file():
        raise CheckpointError(f"{p}: is a folder without config.json; pass a .safetensors or .pth/.pt/.ckpt file, "
                              "or a diffusers model folder (config.json + diffusion_pytorch_model.safetensors)")
    for name in DIFFUSERS_WEIGHTS:
        if (p / name).is_file():
            raw = read_checkpoint(p / name)
            return RawCheckpoint(p, raw.state_dict, raw.metadata, f"diffusers folder ({name})", raw.notes)
    raise CheckpointError(f"{p}: no {' or '.join(DIFFUSERS_WEIGHTS)} beside config.json; the model folder is incomplete")


def _read_safetensors(p: Path) -> RawCheckpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{p}: unreadable safetensors file ({_first_line(e)}); it may be truncated, re-save it"
        ) from None
    if not sd:
        raise CheckpointError(f"{p}: the safetensors file holds no tensors")
    meta = None
    if METADATA_KEY in header:
        try:
            meta = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError:
            raise CheckpointError(
                f"{p}: the '{METADATA_KEY}' metadata in the safetensors header is not valid JSON; "
                "the file was edited or damaged"
            ) from None
        if not isinstance(meta, dict) or int(meta.get("format", 0)) > FORMAT_VERSION:
            raise CheckpointError(
                f"{p}: written by a newer imgcompress (metadata format {meta.get('format') if isinstance(meta, dict) else '?'}); "
                "upgrade imgcompress"
            )
    sd, container, notes = _unwrap(sd, p)
    return RawCheckpoint(p, sd, meta, container, notes)


def _read_torch(p: Path) -> RawCheckpoint:
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{p}: refused to load: the pickle holds objects other than tensors and plain "
            f"containers ({_blocked_global(e)}); only weights-only checkpoints are read — "
            "re-save it with torch.save(model.state_dict()) or as .safetensors"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, struct.error) as e:
        raise CheckpointError(
            f"{p}: unreadable torch file ({_first_line(e)}); it may be truncated or not a checkpoint"
        ) from None
    except Exception as e:  # torch raises assorted types on garbage input
        raise CheckpointError(f"{p}: unreadable torch file ({type(e).__name__}: {_first_line(e)})") from None
    sd, container, notes = _unwrap(obj, p)
    return RawCheckpoint(p, sd, None, container, notes)


def _blocked_global(e: BaseException) -> str:
    """The line of torch's weights-only refusal that names what was refused (e.g. ``GLOBAL
    posix.system``), rather than its generic first line about the ``weights_only`` default."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    hit = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), None)
    if hit is None:
        return _first_line(e, 140)
    return hit if len(hit) <= 140 else hit[:139] + "…"


def _first_line(e: BaseException, limit: int = 120) -> str:
    s = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _unwrap(obj: Any, p: Path) -> tuple[StateDict, str, list[str]]:
    path: list[str] = []
    notes: list[str] = []
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        key = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        path.append(key)
        obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{p}: holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        top = ", ".join(sorted(map(str, obj))[:6])
        raise CheckpointError(
            f"{p}: no tensors found (top-level keys: {top or 'none'}); "
            f"expected a state dict or one nested under one of: {', '.join(CONTAINER_KEYS[:5])}"
        )
    dropped = len(obj) - len(tensors)
    if dropped:
        notes.append(f"ignored {dropped} non-tensor entries")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
            notes.append(f"stripped prefix '{prefix}'")
    return tensors, ".".join(path), notes


def write_checkpoint(path: str | os.PathLike[str], state_dict: StateDict, metadata: dict[str, Any]) -> Path:
    """Write ``state_dict`` as safetensors with ``metadata`` (JSON) under the imgcompress key.

    The write is atomic: a temp file in the same folder, then a rename.
    """
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT_VERSION, **metadata}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    tmp = temp_beside(p)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
        os.chmod(tmp, default_mode())  # safetensors writes its file 0600
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
