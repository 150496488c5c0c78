"""Reading and writing checkpoints: safetensors with metadata, torch files without pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from imgcompress import checkpoint as ckpt
from imgcompress.checkpoint import FORMAT_VERSION, METADATA_KEY, read_checkpoint, write_checkpoint
from imgcompress.errors import CheckpointError


@pytest.fixture()
def sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "head.weight": torch.randn(4, 3, 3, 3, generator=g),
        "head.bias": torch.randn(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
        "table": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "half": torch.randn(5, generator=g).to(torch.float16),
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def _save(tmp_path: Path, obj: Any, name: str = "c.pth", *, legacy: bool = False) -> Path:
    p = tmp_path / name
    torch.save(obj, p, _use_new_zipfile_serialization=not legacy)
    return p


# --- safetensors -----------------------------------------------------------------------


def test_safetensors_round_trip_with_metadata(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    meta = {"arch": "espcn", "kwargs": {"scale": 3}, "spec": {"task": "sr", "input_range": [0.0, 1.0]},
            "widths": {"body.0": [8, 8]}}
    p = write_checkpoint(tmp_path / "sub" / "m.safetensors", sd, meta)
    assert p == tmp_path / "sub" / "m.safetensors" and p.is_file()
    raw = read_checkpoint(p)
    _same(raw.state_dict, sd)
    assert raw.metadata == {"format": FORMAT_VERSION, **meta}
    assert raw.path == p and raw.container == ""


def test_write_copies_tensors_not_views(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    p = write_checkpoint(tmp_path / "m.safetensors", {"t": base.t(), "row": base[1]}, {})
    raw = read_checkpoint(p)
    assert torch.equal(raw.state_dict["t"], base.t()) and torch.equal(raw.state_dict["row"], base[1])


def test_written_file_has_the_permissions_of_a_plain_open(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    mask = os.umask(0o022)
    try:
        p = write_checkpoint(tmp_path / "m.safetensors", sd, {"arch": "x"})
    finally:
        os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o644  # safetensors alone writes 0600


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    write_checkpoint(tmp_path / "m.safetensors", sd, {"arch": "a"})
    write_checkpoint(tmp_path / "m.safetensors", sd, {"arch": "b"})  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    assert read_checkpoint(tmp_path / "m.safetensors").metadata["arch"] == "b"


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, sd: dict[str, torch.Tensor],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    p = write_checkpoint(tmp_path / "m.safetensors", sd, {"arch": "old"})
    before = p.read_bytes()
    import safetensors.torch

    def boom(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(p, sd, {"arch": "new"})
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_safetensors_without_metadata(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    p = tmp_path / "plain.safetensors"
    save_file({f"module.{k}": v for k, v in sd.items()}, str(p), metadata={"other": "x"})
    raw = read_checkpoint(p)
    assert raw.metadata is None
    _same(raw.state_dict, sd)


@pytest.mark.parametrize(("header", "match"), [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": FORMAT_VERSION + 1, "arch": "x"}), "newer imgcompress"),
    (json.dumps([1, 2]), "newer imgcompress"),
])
def test_bad_metadata_is_refused(tmp_path: Path, header: str, match: str) -> None:
    p = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={METADATA_KEY: header})
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(p)


def test_truncated_safetensors(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    p = write_checkpoint(tmp_path / "m.safetensors", sd, {})
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match=r"m\.safetensors: unreadable safetensors file"):
        read_checkpoint(p)


@pytest.mark.parametrize(("content", "match"), [
    (None, "no such file"), (b"", "the file is empty"), (b"hello world, not a checkpoint", "not a checkpoint"),
])
def test_unusable_paths(tmp_path: Path, content: bytes | None, match: str) -> None:
    p = tmp_path / "x.pth"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(p)


def test_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)


# --- torch files: containers and prefixes -------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize(("wrap", "container"), [
    (lambda s: s, ""),
    (lambda s: {"state_dict": s, "epoch": 12, "optimizer": {"lr": 0.1}}, "state_dict"),
    (lambda s: {"params": s}, "params"),
    (lambda s: {"params_ema": s, "params": {"head.weight": torch.zeros(1)}}, "params_ema"),
    (lambda s: {"netG_state_dict": s, "netD_state_dict": {"x": torch.zeros(1)}, "epoch": 3}, "netG_state_dict"),
    (lambda s: {"state_dict": {"params_ema": s}, "iter": 5}, "state_dict.params_ema"),
    (lambda s: {"g_ema": {f"module.{k}": v for k, v in s.items()}}, "g_ema"),
], ids=["flat", "state_dict", "params", "params_ema_first", "netG_state_dict", "nested_twice", "g_ema+module"])
def test_containers_are_unwrapped(tmp_path: Path, sd: dict[str, torch.Tensor], wrap: Any, container: str,
                                  legacy: bool) -> None:
    raw = read_checkpoint(_save(tmp_path, wrap(sd), legacy=legacy))
    _same(raw.state_dict, sd)
    assert raw.container == container
    assert raw.metadata is None


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path: Path, sd: dict[str, torch.Tensor], prefix: str) -> None:
    raw = read_checkpoint(_save(tmp_path, {"state_dict": {prefix + k: v for k, v in sd.items()}}))
    _same(raw.state_dict, sd)
    assert any("stripped prefix" in n for n in raw.notes)


def test_model_prefix_is_kept(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    # CycleGAN generators are nn.Sequential called `model`: their keys start with "model." for real.
    cyclegan_like = {f"model.{i}.weight": v for i, v in enumerate(sd.values())}
    raw = read_checkpoint(_save(tmp_path, cyclegan_like))
    _same(raw.state_dict, cyclegan_like)
    raw = read_checkpoint(_save(tmp_path, {"model": cyclegan_like, "epoch": 200}, "wrapped.pth"))
    _same(raw.state_dict, cyclegan_like)
    assert raw.container == "model"


def test_prefix_on_only_some_keys_is_kept(tmp_path: Path) -> None:
    mixed = {"module.a": torch.zeros(1), "b": torch.ones(1)}
    raw = read_checkpoint(_save(tmp_path, mixed))
    assert sorted(raw.state_dict) == ["b", "module.a"]


def test_non_tensor_entries_are_dropped(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    raw = read_checkpoint(_save(tmp_path, {**sd, "epoch": 3, "name": "netG", "lrs": [0.1, 0.01]}))
    _same(raw.state_dict, sd)
    assert "ignored 3 non-tensor entries" in raw.notes


@pytest.mark.parametrize(("obj", "match"), [
    ({"epoch": 3, "cfg": {"lr": 0.1}}, r"no tensors found \(top-level keys: cfg, epoch\)"),
    ([torch.zeros(1)], "holds a list, not a state dict"),
    (torch.zeros(3), "holds a Tensor, not a state dict"),
])
def test_no_state_dict(tmp_path: Path, obj: Any, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(_save(tmp_path, obj))


# --- safety: weights only ----------------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``exec`` (creates a sentinel file), as a malicious checkpoint would."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.sentinel)!r}, 'w').close()",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, legacy: bool) -> None:
    sentinel = tmp_path / "pwned"
    p = _save(tmp_path, {"weight": torch.zeros(2), "evil": _Payload(sentinel)}, legacy=legacy)
    with pytest.raises(CheckpointError, match=r"refused to load: the pickle holds objects other than tensors"):
        read_checkpoint(p)
    assert not sentinel.exists()
    # The payload is real: an unrestricted load does run it.
    torch.load(p, weights_only=False)
    assert sentinel.exists()


def test_legacy_torch_format_reads(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    p = _save(tmp_path, {"state_dict": sd}, "old.pth", legacy=True)
    assert p.read_bytes()[:1] == b"\x80"  # a bare pickle stream, not a zip archive
    raw = read_checkpoint(p)
    _same(raw.state_dict, sd)
    assert raw.container == "state_dict"


def test_truncated_torch_file(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    p = _save(tmp_path, sd)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=r"c\.pth: unreadable torch file"):
        read_checkpoint(p)


def test_format_is_sniffed_not_taken_from_the_suffix(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    st = write_checkpoint(tmp_path / "weights.pth", sd, {"arch": "a"})  # safetensors under a torch suffix
    raw = read_checkpoint(st)
    assert raw.metadata is not None and raw.metadata["arch"] == "a"
    _same(raw.state_dict, sd)
    pt = _save(tmp_path, sd, "weights.bin")
    _same(read_checkpoint(pt).state_dict, sd)
