"""``train:``: optimizer, schedule, loss, epochs and the loop's settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from modelyard.config.base import StrictModel


class OptimizerConfig(StrictModel):
    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)  # sgd, rmsprop
    nesterov: bool = False  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float = Field(1e-8, gt=0.0)
    # layer-wise lr decay: layer i of L gets lr * layer_decay ** (L + 1 - i), embeddings i = 0
    layer_decay: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimizerConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov needs optimizer name 'sgd' and momentum > 0")
        return self


class ScheduleConfig(StrictModel):
    name: Literal["constant", "linear", "cosine", "plateau"] = "constant"
    warmup_steps: int = Field(0, ge=0)  # linear, cosine: linear warmup before decay
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)  # cosine / linear floor, as a share of lr
    factor: float = Field(0.5, gt=0.0, lt=1.0)  # plateau
    patience: int = Field(1, ge=0)  # plateau, in epochs
    monitor: str = "val_loss"  # plateau


class LossConfig(StrictModel):
    """``auto`` picks by task: binary/multilabel → bce, multiclass → cross_entropy, else mse."""

    name: Literal["auto", "bce", "cross_entropy", "mse", "huber", "focal"] = "auto"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # cross_entropy
    class_weights: Literal["none", "balanced"] | list[float] = "none"  # cross_entropy, bce
    focal_gamma: float = Field(2.0, ge=0.0)
    huber_delta: float = Field(1.0, gt=0.0)


class EarlyStoppingConfig(StrictModel):
    """On by default: ``train.epochs`` is a ceiling, a run stops once its monitored validation
    metric has not improved for ``patience`` epochs, and the best epoch's checkpoint is the one
    scored and exported (``train.early_stopping: null`` trains every epoch)."""

    monitor: str | None = None  # None: train.monitor, the metric that picks the best checkpoint
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class TrainConfig(StrictModel):
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_clip: float | None = Field(None, gt=0.0)  # max global grad norm
    grad_accum_steps: int = Field(1, ge=1)
    bucketing: bool = True  # length-bucketed batches, padded to the batch's longest text
    monitor: str = "val_loss"  # which validation metric picks the best checkpoint
    early_stopping: EarlyStoppingConfig | None = EarlyStoppingConfig()
    checkpoint_every_steps: int | None = Field(None, ge=1)  # mid-epoch checkpoints for resume
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:[0-9]+)$")  # auto|cpu|cuda|cuda:N
    # data-parallel runs (--nproc N, torchrun): auto = nccl on CUDA, gloo on CPU
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # bf16: training forward passes under autocast (weights, validation and export stay fp32);
    # fp16: the same in float16 with dynamic loss scaling (a GradScaler), on CUDA only
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_threads: int | None = Field(None, ge=1)
    tensorboard: bool = False
    progress: bool = True
    # a time limit from the start of ``train`` (setup included): no step starts past it, and
    # the epoch it cuts short is validated like any (``modelyard tune`` bounds each trial so)
    max_time_s: float | None = Field(None, gt=0.0)

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v
