"""Training parts on tiny tensors: losses, optimizers, schedules, callbacks, checkpoints, plots."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modelyard.atomic import atomic_write
from modelyard.config import (
    LossConfig,
    OptimizerConfig,
    RNNConfig,
    ScheduleConfig,
    TrainConfig,
    load_config,
)
from modelyard.errors import ConfigError, RunError
from modelyard.models import build_model
from modelyard.plots import plot_confusion_matrix, plot_learning_curves
from modelyard.tasks import get_task
from modelyard.training.callbacks import BestTracker, EarlyStopping, metric_mode, resolve_monitor
from modelyard.training.checkpoint import (
    load_state,
    load_weights,
    rng_state,
    save_state,
    save_weights,
    set_rng_state,
)
from modelyard.training.collate import Data, TokenBatches, encoded_split
from modelyard.training.environment import torch_settings
from modelyard.training.epochs import train_step
from modelyard.training.losses import build_loss
from modelyard.training.optim import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    build_schedule,
    cosine_factor,
    current_lr,
    linear_factor,
)
from modelyard.training.state import Loop, Trainer

pytestmark = pytest.mark.unit


def _loss(name: str, task: str, targets: np.ndarray, k: int, **kw: object) -> torch.nn.Module:
    return build_loss(LossConfig(name=name, **kw), task, targets, k)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ losses
def test_bce_binary_matches_hand_computation() -> None:
    logits = torch.tensor([[0.5], [-1.0], [2.0]])
    y = torch.tensor([1.0, 0.0, 0.0])
    p = [1 / (1 + math.exp(-v)) for v in (0.5, -1.0, 2.0)]
    hand = -(math.log(p[0]) + math.log(1 - p[1]) + math.log(1 - p[2])) / 3
    loss = _loss("auto", "binary", y.numpy(), 1)
    assert float(loss(logits, y)) == pytest.approx(hand, rel=1e-6)


def test_bce_balanced_pos_weight() -> None:
    y = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)  # 1 positive, 3 negatives
    loss = _loss("bce", "binary", y, 1, class_weights="balanced")
    logits = torch.tensor([[0.3], [0.1], [-0.2], [0.4]])
    p = torch.sigmoid(logits[:, 0])
    hand = -(3.0 * torch.log(p[0]) + torch.log(1 - p[1:]).sum()) / 4  # pos_weight = 3/1
    assert float(loss(logits, torch.from_numpy(y))) == pytest.approx(float(hand), rel=1e-6)


def test_cross_entropy_smoothing_and_balanced_weights() -> None:
    y = np.array([0, 0, 0, 1, 2, 2])
    w = get_task("multiclass").class_weights("balanced", y, 3)
    assert w is not None
    np.testing.assert_allclose(w, [6 / 9, 6 / 3, 6 / 6])
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])
    t = torch.tensor([0, 2])
    logp = torch.log_softmax(logits, -1)
    eps = 0.1
    per_item = -((1 - eps) * logp[torch.arange(2), t] + eps / 3 * logp.sum(-1))
    loss = _loss("cross_entropy", "multiclass", y, 3, label_smoothing=eps)
    assert float(loss(logits, t)) == pytest.approx(float(per_item.mean()), rel=1e-6)
    weighted = _loss("auto", "multiclass", y, 3, class_weights="balanced")
    nll = -logp[torch.arange(2), t]
    hand = (w[0] * nll[0] + w[2] * nll[1]) / (w[0] + w[2])
    assert float(weighted(logits, t)) == pytest.approx(float(hand), rel=1e-6)


def test_regression_losses() -> None:
    y = torch.tensor([1.0, 0.0, 3.0])
    pred = torch.tensor([[1.5], [0.0], [0.5]])
    mse = _loss("auto", "regression", y.numpy(), 1)
    assert float(mse(pred, y)) == pytest.approx((0.25 + 0 + 6.25) / 3)
    huber = _loss("huber", "regression", y.numpy(), 1, huber_delta=1.0)
    assert float(huber(pred, y)) == pytest.approx((0.5 * 0.25 + 0 + (2.5 - 0.5)) / 3)


def test_focal_binary_and_multiclass() -> None:
    gamma = 2.0
    y = torch.tensor([1.0, 0.0])
    logits = torch.tensor([[1.0], [0.5]])
    p = torch.sigmoid(logits[:, 0])
    pt = torch.where(y > 0, p, 1 - p)
    hand = (-((1 - pt) ** gamma) * torch.log(pt)).mean()
    focal = _loss("focal", "binary", y.numpy(), 1, focal_gamma=gamma)
    assert float(focal(logits, y)) == pytest.approx(float(hand), rel=1e-6)

    logits3 = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    t = torch.tensor([1, 0])
    probs = torch.softmax(logits3, -1)[torch.arange(2), t]
    hand3 = (-((1 - probs) ** gamma) * torch.log(probs)).mean()
    focal3 = _loss("focal", "multiclass", t.numpy(), 3, focal_gamma=gamma)
    assert float(focal3(logits3, t)) == pytest.approx(float(hand3), rel=1e-6)
    # gamma 0 is plain cross-entropy
    ce = _loss("focal", "multiclass", t.numpy(), 3, focal_gamma=0.0)
    assert float(ce(logits3, t)) == pytest.approx(float(F.cross_entropy(logits3, t)), rel=1e-6)


def test_loss_task_mismatch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="does not fit task 'regression'"):
        _loss("cross_entropy", "regression", np.zeros(2, dtype=np.float32), 1)
    with pytest.raises(ConfigError, match="expected 3 weights"):
        _loss("cross_entropy", "multiclass", np.zeros(2, dtype=np.int64), 3, class_weights=[1, 2])


# ---------------------------------------------------------------------- optimizers, schedules
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_steps(name: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    extra = {"momentum": 0.9, "nesterov": True} if name == "sgd" else {}
    opt = build_optimizer(model.parameters(), OptimizerConfig(name=name, lr=0.1, **extra))  # type: ignore[arg-type]
    before = model.weight.detach().clone()
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_builds_and_steps(name: str) -> None:
    model = torch.nn.Linear(2, 1)
    opt = build_optimizer(model.parameters(), OptimizerConfig(lr=1.0))
    cfg = ScheduleConfig(name=name, warmup_steps=2, patience=0, factor=0.5)  # type: ignore[arg-type]
    schedule = build_schedule(opt, cfg, total_steps=10)
    lrs = []
    for epoch in range(3):
        for _ in range(3):
            opt.step()
            schedule.after_step()
        schedule.after_epoch({"val_loss": 1.0, "epoch": epoch + 1})  # never improves
        lrs.append(current_lr(opt))
    if name == "constant":
        assert lrs == [1.0, 1.0, 1.0]
    elif name == "plateau":
        assert lrs[-1] < lrs[0]
    else:
        assert lrs[0] > lrs[1] > lrs[2]
    restored = build_schedule(opt, cfg, total_steps=10)
    restored.load_state_dict(schedule.state_dict())


def test_schedule_shapes() -> None:
    assert linear_factor(0, total=10, warmup=2, floor=0.0) == 0.5
    assert linear_factor(1, total=10, warmup=2, floor=0.0) == 1.0
    assert linear_factor(6, total=10, warmup=2, floor=0.0) == pytest.approx(0.5)
    assert linear_factor(10, total=10, warmup=2, floor=0.1) == pytest.approx(0.1)
    assert cosine_factor(2, total=10, warmup=2, floor=0.0) == pytest.approx(1.0)
    assert cosine_factor(6, total=10, warmup=2, floor=0.0) == pytest.approx(0.5)
    assert cosine_factor(10, total=10, warmup=2, floor=0.2) == pytest.approx(0.2)


# -------------------------------------------------------------------------- grad accumulation
def _loop(
    accum: int,
    batch: int,
    seqs: list[list[int]],
    y: np.ndarray,
    scale: float | None = None,
    grad_clip: float | None = None,
) -> Loop:
    torch.manual_seed(0)
    cfg = RNNConfig(kind="gru", embedding_dim=8, hidden_size=16, dropout=0.0)
    model = build_model(cfg, task="binary", vocab_size=20, num_outputs=1, max_length=8)
    optimizer = build_optimizer(model.parameters(), OptimizerConfig(name="sgd", lr=0.5))
    trainer = Trainer(
        model=model,
        loss_fn=_loss("auto", "binary", y, 1),
        optimizer=optimizer,
        schedule=build_schedule(optimizer, ScheduleConfig(), total_steps=1),
        grad_clip=grad_clip,
        scaler=torch.amp.GradScaler("cpu", init_scale=scale or 1.0, enabled=scale is not None),
    )
    split = encoded_split(seqs, y)
    cpu = torch.device("cpu")
    data = Data(split, split, TokenBatches(pad_id=0, side="right", length=None, device=cpu))
    train = {"grad_accum_steps": accum, "batch_size": batch, "optimizer": "sgd"}
    config = load_config({"name": "t", "task": "binary", "data": {"train": "-"}, "train": train})
    return Loop(config=config, data=data, trainer=trainer)


def _params(loop: Loop) -> list[torch.nn.Parameter]:
    return list(loop.trainer.model.parameters())


def test_grad_accumulation_equals_one_big_batch() -> None:
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 20, size=rng.integers(2, 8))) for _ in range(8)]
    y = (rng.random(8) > 0.5).astype(np.float32)
    idx = np.arange(8)
    small = _loop(2, 4, seqs, y)
    big = _loop(1, 8, seqs, y)
    loss_small, n_small = train_step(small, [idx[:4], idx[4:]])
    loss_big, n_big = train_step(big, [idx])
    assert n_small == n_big == 8
    assert loss_small == pytest.approx(loss_big, rel=1e-5)
    for a, b in zip(_params(small), _params(big), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_a_loss_scaled_step_equals_the_unscaled_one_clipping_included() -> None:
    # fp16's GradScaler multiplies the loss by a power of two and divides the gradients back
    # before clipping and stepping: in fp32 arithmetic that is exact, so the step is the same
    rng = np.random.default_rng(1)
    seqs = [list(rng.integers(1, 20, size=rng.integers(2, 8))) for _ in range(8)]
    y = (rng.random(8) > 0.5).astype(np.float32)
    idx = np.arange(8)
    plain = _loop(2, 4, seqs, y, grad_clip=0.05)
    scaled = _loop(2, 4, seqs, y, scale=2.0**12, grad_clip=0.05)
    for loop in (plain, scaled):
        train_step(loop, [idx[:4], idx[4:]])
    for a, b in zip(
        plain.trainer.model.parameters(), scaled.trainer.model.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    assert (
        scaled.trainer.scaler.get_scale() == 2.0**12
    )  # no overflow: the scale stays until it grows


def test_fp16_needs_cuda() -> None:
    from modelyard.training.environment import check_precision

    with pytest.raises(ConfigError, match=r"train\.precision fp16 needs a CUDA device"):
        check_precision("fp16", torch.device("cpu"))
    check_precision("bf16", torch.device("cpu"))  # a warning at most


# -------------------------------------------------------------------------------- callbacks
def test_metric_mode_and_monitor_names() -> None:
    assert metric_mode("val_loss") == "min"
    assert metric_mode("val_accuracy") == "max"
    assert metric_mode("val_rmse") == "min"
    assert resolve_monitor("accuracy", ["val_loss", "val_accuracy"], "k") == "val_accuracy"
    with pytest.raises(ConfigError, match="valid: val_loss, val_accuracy"):
        resolve_monitor("f2", ["val_loss", "val_accuracy"], "train.monitor")


def test_early_stopping_patience_and_min_delta() -> None:
    es = EarlyStopping(BestTracker("val_loss", "min", min_delta=0.05), patience=2)
    losses = [1.0, 0.9, 0.88, 0.87, 0.5]
    stops = [es.step({"epoch": i + 1, "val_loss": v}) for i, v in enumerate(losses[:4])]
    assert stops == [False, False, False, True]  # 0.88 and 0.87 are within min_delta of 0.9
    assert es.stopped_epoch == 4 and es.tracker.best_epoch == 2
    again = EarlyStopping(BestTracker("val_loss", "min", min_delta=0.05), patience=2)
    again.load_state_dict(es.state_dict())
    assert again.wait == es.wait and again.tracker.best == 0.9


# ------------------------------------------------------------------------------- checkpoints
def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.bin"
    atomic_write(target, lambda fh: fh.write(b"old"))

    def broken(fh: object) -> None:
        fh.write(b"half of a new")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]  # no temp file left behind


def test_weights_and_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    save_weights(tmp_path / "w.safetensors", model)
    other = torch.nn.Linear(4, 2)
    load_weights(tmp_path / "w.safetensors", other)
    assert torch.equal(other.weight, model.weight)

    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    state = {"optimizer": opt.state_dict(), "rng": rng_state(), "history": [{"a": 1.0}]}
    save_state(tmp_path / "s.pt", state)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    loaded = load_state(tmp_path / "s.pt")  # weights_only=True: plain types only
    set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
    torch.optim.Adam(model.parameters()).load_state_dict(loaded["optimizer"])
    with pytest.raises(RunError, match="nothing to resume"):
        load_state(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------- plots
def test_plots_write_pngs(tmp_path: Path) -> None:
    cm = plot_confusion_matrix(np.array([[5, 1], [2, 7]]), ["neg", "pos"], tmp_path / "cm.png")
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_accuracy": 0.5 + e / 10}
        | {"lr": 0.01}
        for e in (1, 2, 3)
    ]
    curves = plot_learning_curves(history, tmp_path / "curves.png")
    for png in (cm, curves):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torch_settings_turn_fills_off_keep_determinism_and_restore() -> None:
    determinism: Any = torch.utils.deterministic
    before = (torch.are_deterministic_algorithms_enabled(), determinism.fill_uninitialized_memory)
    config: Any = SimpleNamespace(train=TrainConfig(num_threads=None))
    with torch_settings(config):
        assert torch.are_deterministic_algorithms_enabled()
        assert determinism.fill_uninitialized_memory is False
    after = (torch.are_deterministic_algorithms_enabled(), determinism.fill_uninitialized_memory)
    assert after == before
