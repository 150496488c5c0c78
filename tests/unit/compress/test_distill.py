"""The distill stage on the trained example: students, taps, schedule, resume, two processes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from imgcompress.compress import distill, prune
from imgcompress.compress.base import TrainOptions
from imgcompress.errors import RecipeError, UsageError
from imgcompress.models.spec import Generator
from imgcompress.recipe import Distill, ModelConfig, Prune
from imgcompress.validate import metrics


def _pruned(trained: Any) -> Generator:
    return prune.run(trained.generator, trained.ctx(), Prune(ratio=0.5)).generator


@pytest.fixture(scope="module")
def pruned(trained: Any) -> Generator:
    return _pruned(trained)


def _psnr(g: Generator, trained: Any) -> float:
    """Mean PSNR vs the teacher on the held-out evaluation images."""
    rng = trained.generator.spec.output_range
    out = []
    for s in trained.inputs.evaluation:
        with torch.no_grad():
            ref = metrics.normalise(trained.generator.module(s.input), rng)
            y = metrics.normalise(g.module(s.input), rng)
        out.append(metrics.psnr(y, ref))
    return sum(out) / len(out)


def _ctx(trained: Any, tmp: Path, **train: Any) -> Any:
    return dataclasses.replace(trained.ctx(workdir=tmp), train=TrainOptions(device="cpu", **train))


FAST = dict(steps=40, batch_size=4, lr=2e-3, checkpoint_every=10)


# --- pieces -----------------------------------------------------------------------------------


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    lrs = [distill.lr_at(s, 100, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.2) and lrs[4] == pytest.approx(1.0)  # 5 warm-up steps
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] < 0.01


def test_auto_taps_are_inner_compute_layers_both_models_share(trained: Any, pruned: Generator) -> None:
    taps = distill.resolve_taps(trained.generator.module, pruned.module, "auto")
    layers = distill._compute_layers(trained.generator.module)
    assert taps and all(t == s for t, s in taps)
    assert layers[0] not in dict(taps) and layers[-1] not in dict(taps)
    assert len(taps) <= distill.AUTO_TAPS


def test_explicit_taps_pairs_and_unknown_names(trained: Any, pruned: Generator) -> None:
    first = distill._compute_layers(trained.generator.module)[1]
    assert distill.resolve_taps(trained.generator.module, pruned.module, [f"{first}={first}"]) == [(first, first)]
    with pytest.raises(RecipeError, match=r"distill\.taps: 'nope': the teacher has no module 'nope'"):
        distill.resolve_taps(trained.generator.module, pruned.module, ["nope"])


def test_a_fresh_student_must_give_the_teachers_output_shape(trained: Any) -> None:
    g = trained.generator
    small = distill.make_student(g, Distill(student=ModelConfig(arch="espcn", kwargs={
        "scale": 2, "channels": 3, "features": 8, "num_body": 1})))
    assert small.arch == "espcn" and sum(p.numel() for p in small.module.parameters()) < 5000
    with pytest.raises(RecipeError, match=r"distill\.student: espcn gives output \(1, 3, 192, 192\) where the "
                                          r"teacher gives \(1, 3, 128, 128\)"):
        distill.make_student(g, Distill(student=ModelConfig(arch="espcn", kwargs={"scale": 3})))


def test_nproc_must_divide_the_batch(trained: Any, pruned: Generator, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--nproc 3 does not divide distill\.batch_size 4"):
        distill.run(pruned, _ctx(trained, tmp_path, nproc=3), Distill(**FAST))


# --- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(trained: Any, pruned: Generator, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return distill.run(pruned, _ctx(trained, tmp_path_factory.mktemp("d")), Distill(**FAST))


def test_distillation_wins_back_quality_lost_to_pruning(trained: Any, pruned: Generator, uninterrupted: Any) -> None:
    before, after = _psnr(pruned, trained), _psnr(uninterrupted.generator, trained)
    assert after > before + 5.0, (before, after)
    info = uninterrupted.info
    assert info["steps_done"] == 40 and info["resumed_from_step"] is None and info["stopped_early"] is False
    assert [h["step"] for h in info["history"]] == [10, 20, 30, 40]
    assert info["student_params"] == sum(p.numel() for p in pruned.module.parameters())
    # the teacher and the pruned input are left alone
    assert _psnr(trained.generator, trained) == metrics.PSNR_CAP
    assert _psnr(pruned, trained) == pytest.approx(before)


def test_target_psnr_stops_early(trained: Any, pruned: Generator, uninterrupted: Any, tmp_path: Path) -> None:
    target = uninterrupted.info["history"][1]["psnr_db"] - 0.01  # reached at step 20
    res = distill.run(pruned, _ctx(trained, tmp_path), Distill(**FAST, target_psnr=target))
    assert res.info["stopped_early"] is True and res.info["steps_done"] == 20


def test_feature_loss_trains_adapters_at_the_taps(trained: Any, pruned: Generator, tmp_path: Path) -> None:
    cfg = Distill(**{**FAST, "steps": 10}, loss={"pixel": "l1", "feature": 0.5, "ssim": 0.1})
    res = distill.run(pruned, _ctx(trained, tmp_path), cfg)
    assert res.info["taps"] and res.info["adapter_params"] > 0
    # adapters are dropped: the student has the pruned model's parameters only
    assert res.info["student_params"] == sum(p.numel() for p in pruned.module.parameters())


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_and_ends_where_an_uninterrupted_one_does(
        trained: Any, pruned: Generator, uninterrupted: Any, tmp_path: Path) -> None:
    ckpt = tmp_path / "resume" / "01-distill.pt"

    def stop_at_25(d: dict[str, Any]) -> None:
        if d["step"] >= 25:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        distill.run(pruned, _ctx(trained, tmp_path, resume_path=ckpt, resume_key="k", progress=stop_at_25),
                    Distill(**FAST))
    assert ckpt.is_file()  # written at step 20
    res = distill.run(pruned, _ctx(trained, tmp_path, resume_path=ckpt, resume_key="k"), Distill(**FAST))
    assert res.info["resumed_from_step"] == 20 and res.info["steps_done"] == 40
    a, b = res.generator.module.state_dict(), uninterrupted.generator.module.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert res.info["history"] == uninterrupted.info["history"]


def test_a_checkpoint_of_another_run_is_not_resumed(trained: Any, pruned: Generator, tmp_path: Path) -> None:
    ckpt = tmp_path / "r.pt"
    cfg = Distill(**{**FAST, "steps": 20})
    distill._save_checkpoint(ckpt, {"format": distill.CHECKPOINT_FORMAT, "key": "other", "step": 10})
    res = distill.run(pruned, _ctx(trained, tmp_path, resume_path=ckpt, resume_key="mine"), cfg)
    assert res.info["resumed_from_step"] is None and res.info["steps_done"] == 20


def test_fresh_ignores_a_matching_checkpoint(trained: Any, pruned: Generator, tmp_path: Path) -> None:
    ckpt = tmp_path / "r.pt"
    cfg = Distill(**{**FAST, "steps": 20})

    def stop(d: dict[str, Any]) -> None:
        if d["step"] >= 15:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        distill.run(pruned, _ctx(trained, tmp_path, resume_path=ckpt, resume_key="k", progress=stop), cfg)
    res = distill.run(pruned, _ctx(trained, tmp_path, resume_path=ckpt, resume_key="k", fresh=True), cfg)
    assert res.info["resumed_from_step"] is None


def test_two_processes_stay_in_sync_and_match_one_process(trained: Any, pruned: Generator, tmp_path: Path) -> None:
    cfg = Distill(**{**FAST, "steps": 6})
    one = distill.run(pruned, _ctx(trained, tmp_path / "one"), cfg)
    two = distill.run(pruned, _ctx(trained, tmp_path / "two", nproc=2), cfg)
    assert two.info["nproc"] == 2 and two.info["backend"] == "gloo"
    assert two.info["ranks_max_param_diff"] == 0.0
    a, b = one.generator.module.state_dict(), two.generator.module.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
