"""Pruning in torch, made permanent before export: no masks or re-parametrizations in the graph.

- ``unstructured``: global magnitude pruning (``torch.nn.utils.prune.global_unstructured``, L1)
  over every embedding, linear, convolution and recurrent weight, each weight's magnitude taken
  relative to its layer's RMS; the smallest ``amount`` of all those weights become zero. The
  graph keeps its dense shapes, so the file does not shrink: zeros only pay off under a
  compressor (a zipped bundle) or a sparse kernel.
- ``structured``: whole units are removed by L2 norm and the layers rebuilt smaller, so the
  graph really shrinks: LSTM/GRU hidden units (every gate's rows, the recurrent columns, and the
  next layer's or head's inputs), CNN filters, transformer feed-forward units. The embedding
  table — most of a text model's bytes — is not touched by structured pruning.

:func:`finetune` continues training for a few epochs to recover accuracy; for unstructured
pruning the masks are re-applied after every step, so pruned weights stay zero.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.models.cnn import CNNClassifier
    from modelyard.models.rnn import RNNClassifier
    from modelyard.models.transformer import TransformerClassifier

log = logging.getLogger("modelyard.compress")

_PRUNABLE = (nn.Embedding, nn.Linear, nn.Conv1d, nn.LSTM, nn.GRU)


@dataclass
class PruneReport:
    """What pruning did.

    Attributes:
        kind: ``unstructured`` or ``structured``.
        amount: the fraction asked for.
        sparsity: unstructured: the fraction of prunable weights that are zero; structured: the
            fraction of the pruned layers' parameters removed.
        zeros: prunable weights that are zero (unstructured) or parameters removed (structured).
        total: prunable weights (unstructured) or parameters of the pruned layers (structured).
        parameters_before: every parameter of the model before pruning.
        parameters_after: every parameter after (smaller only for structured pruning).
        layers: per layer, its sparsity (unstructured) or ``"before -> after"`` units.
        note: what the numbers mean for the file size.
        finetune: the fine-tune's summary, when one ran.
    """

    kind: str
    amount: float
    sparsity: float
    zeros: int
    total: int
    parameters_before: int
    parameters_after: int
    layers: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    finetune: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the manifest's ``variant.pruning``."""
        return {
            "kind": self.kind,
            "amount": self.amount,
            "sparsity": self.sparsity,
            "zeros": self.zeros,
            "total": self.total,
            "parameters_before": self.parameters_before,
            "parameters_after": self.parameters_after,
            "layers": self.layers,
            "note": self.note,
            "finetune": self.finetune,
        }


@dataclass
class PruneResult:
    """The pruned model, its report, and the masks a fine-tune must keep (unstructured)."""

    model: nn.Module
    report: PruneReport
    masks: list[tuple[nn.Module, str, torch.Tensor]] = field(default_factory=list)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned weights again (after an optimizer step moved them)."""
        for module, name, mask in self.masks:
            getattr(module, name).mul_(mask)


def prune_model(model: nn.Module, amount: float, kind: str = "unstructured") -> PruneResult:
    """Prune ``model`` in place (structured pruning replaces layers inside it).

    Args:
        model: a modelyard model (eval mode is kept).
        amount: the fraction to prune, in [0, 1): of all prunable weights (unstructured), or of
            the units of each pruned layer (structured).
        kind: ``unstructured`` or ``structured``.

    Returns:
        A :class:`PruneResult`.

    Raises:
        ConfigError: a bad amount or kind, or structured pruning of an unknown architecture.
    """
    if not 0.0 <= amount < 1.0:
        raise ConfigError(f"compress.prune: must be in [0, 1), got {amount}")
    if kind not in PRUNERS:
        raise ConfigError(
            f"compress.prune_kind: unknown kind {kind!r}; known: {', '.join(PRUNERS)}"
        )
    return PRUNERS[kind](model, amount)


def count_parameters(model: nn.Module) -> int:
    """Every parameter element of ``model``."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ unstructured
def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(qualified module name, module, parameter name) of every weight pruning may zero."""
    found = []
    for qualname, module in model.named_modules():
        if isinstance(module, nn.LSTM | nn.GRU):
            names = [n for n in module._flat_weights_names if n.startswith("weight_")]
        elif isinstance(module, _PRUNABLE):
            names = ["weight"]
        else:
            continue
        found += [(qualname, module, n) for n in names]
    return found


def _scaled_magnitude(w: torch.Tensor) -> torch.Tensor:
    rms = w.pow(2).mean().sqrt()
    return w.abs() / rms if rms > 0 else w.abs()


def prune_unstructured(model: nn.Module, amount: float) -> PruneResult:
    """Global L1 magnitude pruning over :func:`prunable_weights`, then made permanent."""
    before = count_parameters(model)
    weights = prunable_weights(model)
    params = [(module, name) for _, module, name in weights]
    # |w| is compared across layers on each layer's own scale (|w| / rms(w)): raw magnitudes
    # differ by 10x between an N(0, 1) embedding and a Linear initialised at 1/sqrt(fan_in), and
    # a raw global threshold would empty the small-scale layers (a transformer's attention and
    # feed-forward weights) while barely touching the embedding
    scores = {
        (module, name): _scaled_magnitude(getattr(module, name).detach()) for module, name in params
    }
    torch_prune.global_unstructured(
        params,
        pruning_method=torch_prune.L1Unstructured,
        importance_scores=scores,
        amount=amount,
    )
    masks, layers = [], {}
    zeros = total = 0
    for qualname, module, name in weights:
        mask = getattr(module, f"{name}_mask").detach().clone()
        # remove() folds the mask into the weight: a plain parameter again, nothing in the graph
        torch_prune.remove(module, name)
        masks.append((module, name, mask))
        n_zero = int((getattr(module, name) == 0).sum())
        zeros += n_zero
        total += mask.numel()
        layers[f"{qualname}.{name}"] = round(n_zero / mask.numel(), 4)
    report = PruneReport(
        kind="unstructured",
        amount=amount,
        sparsity=zeros / total if total else 0.0,
        zeros=zeros,
        total=total,
        parameters_before=before,
        parameters_after=count_parameters(model),
        layers=layers,
        note=(
            "zeros are stored densely: the graph keeps its shapes and its file size; "
            "they compress well (zip) and make int8 quantization no worse"
        ),
    )
    return PruneResult(model, report, masks)


# -------------------------------------------------------------------------------- structured
def _keep(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Indices (sorted) of the units to keep: the largest ``1 - amount`` by score, at least one."""
    n = scores.numel()
    k = max(1, n - round(amount * n))
    return torch.sort(torch.topk(scores, k).indices).values


def _linear(old: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    """A copy of ``old`` keeping only output ``rows`` and input ``cols`` (``None``: all)."""
    w = old.weight.detach()
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if old.bias is not None:
            bias = old.bias.detach()
            new.bias.copy_(bias if rows is None else bias[rows])
    return new


def _rnn(old: Any, keep: torch.Tensor, cols: torch.Tensor | None) -> nn.Module:
    """A one-layer unidirectional LSTM/GRU keeping hidden units ``keep`` and inputs ``cols``."""
    # (Any: torch's module attribute stubs read every attribute as Tensor | Module)
    gates = 4 if isinstance(old, nn.LSTM) else 3
    hidden = old.hidden_size
    rows = torch.cat([g * hidden + keep for g in range(gates)])  # every gate's rows of a unit
    w_ih = old.weight_ih_l0.detach()[rows]
    w_ih = w_ih if cols is None else w_ih[:, cols]
    new: Any = type(old)(w_ih.shape[1], len(keep), batch_first=old.batch_first, bias=old.bias)
    with torch.no_grad():
        new.weight_ih_l0.copy_(w_ih)
        new.weight_hh_l0.copy_(old.weight_hh_l0.detach()[rows][:, keep])
        if old.bias:
            new.bias_ih_l0.copy_(old.bias_ih_l0.detach()[rows])
            new.bias_hh_l0.copy_(old.bias_hh_l0.detach()[rows])
    return new


def _rnn_unit_scores(rnn: Any) -> torch.Tensor:
    """L2 norm of each hidden unit's incoming weights, over all gates."""
    gates = 4 if isinstance(rnn, nn.LSTM) else 3
    hidden = rnn.hidden_size
    w = torch.cat([rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach()], dim=1)  # (G*H, I+H)
    return w.view(gates, hidden, -1).pow(2).sum(dim=(0, 2)).sqrt()  # (H,)


def _prune_rnn(model: RNNClassifier, amount: float) -> dict[str, Any]:
    layers: dict[str, Any] = {}
    hidden = model.hidden_size
    cols: torch.Tensor | None = None  # inputs of the next layer that survive
    keeps: list[torch.Tensor] = []
    for i in range(len(model.forward_layers)):
        directions = [model.forward_layers]
        if model.backward_layers is not None:
            directions.append(model.backward_layers)
        keeps = []
        for stack in directions:
            old = stack[i]
            keep = _keep(_rnn_unit_scores(old), amount)
            stack[i] = _rnn(old, keep, cols)
            keeps.append(keep)
        layers[f"layer{i}"] = f"{hidden} -> {len(keeps[0])} units per direction"
        # the next layer reads [forward units, backward units]
        cols = torch.cat([k + d * hidden for d, k in enumerate(keeps)])
    model.hidden_size = len(keeps[0])
    model.head = _linear(model.head, None, cols)
    return layers


def _prune_cnn(model: CNNClassifier, amount: float) -> dict[str, Any]:
    layers: dict[str, Any] = {}
    cols, offset = [], 0
    old: Any
    for i, old in enumerate(model.convs):
        scores = old.weight.detach().flatten(1).norm(dim=1)  # (F,): one per filter
        keep = _keep(scores, amount)
        new = nn.Conv1d(old.in_channels, len(keep), old.kernel_size[0], padding=old.padding[0])
        with torch.no_grad():
            new.weight.copy_(old.weight.detach()[keep])
            if old.bias is not None and new.bias is not None:
                new.bias.copy_(old.bias.detach()[keep])
        model.convs[i] = new
        cols.append(keep + offset)
        offset += old.out_channels
        layers[f"convs.{i}"] = f"{old.out_channels} -> {len(keep)} filters"
    model.head = _linear(model.head, None, torch.cat(cols))
    return layers


def _prune_transformer(model: TransformerClassifier, amount: float) -> dict[str, Any]:
    layers: dict[str, Any] = {}
    layer: Any
    for i, layer in enumerate(model.layers):
        up, down = layer.ff[0], layer.ff[2]
        # a unit's weights in and out of the feed-forward layer, together
        scores = torch.cat([up.weight.detach(), down.weight.detach().T], dim=1).norm(dim=1)
        keep = _keep(scores, amount)
        layer.ff[0] = _linear(up, keep, None)
        layer.ff[2] = _linear(down, None, keep)
        layers[f"layers.{i}.ff"] = f"{up.out_features} -> {len(keep)} units"
    return layers


def _structured_layers(model: nn.Module) -> Callable[[Any, float], dict[str, Any]]:
    """The structured pruner for ``model``'s architecture."""
    from modelyard.models.cnn import CNNClassifier
    from modelyard.models.rnn import RNNClassifier
    from modelyard.models.transformer import TransformerClassifier

    for cls, fn in (
        (RNNClassifier, _prune_rnn),
        (CNNClassifier, _prune_cnn),
        (TransformerClassifier, _prune_transformer),
    ):
        if isinstance(model, cls):
            return fn
    raise ConfigError(
        f"structured pruning knows lstm, gru, cnn and transformer models, not "
        f"{type(model).__name__}; use prune_kind=unstructured"
    )


def _pruned_part(model: nn.Module) -> int:
    """Parameters outside the embeddings: what structured pruning can shrink."""
    embed = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return count_parameters(model) - embed


def prune_structured(model: nn.Module, amount: float) -> PruneResult:
    """Remove whole units (see the module docstring) by L2 norm, rebuilding smaller layers."""
    fn = _structured_layers(model)
    before, part_before = count_parameters(model), _pruned_part(model)
    was_training = model.training
    layers = fn(model, amount)
    model.train(was_training)
    after = count_parameters(model)
    removed = before - after
    report = PruneReport(
        kind="structured",
        amount=amount,
        sparsity=removed / part_before if part_before else 0.0,
        zeros=removed,
        total=part_before,
        parameters_before=before,
        parameters_after=after,
        layers=layers,
        note=(
            f"layers rebuilt smaller: {removed} of {before} parameters removed "
            f"({100 * removed / before:.1f}% of the model; embeddings are not pruned)"
        ),
    )
    return PruneResult(model, report)


PRUNERS: dict[str, Callable[[nn.Module, float], PruneResult]] = {
    "unstructured": prune_unstructured,
    "structured": prune_structured,
}


# --------------------------------------------------------------------------------- fine-tune
def finetune(result: PruneResult, run: Any, epochs: int, *, max_steps: int | None = None) -> None:
    """Continue training a pruned model on the run's training data, keeping pruned weights zero.

    This is the training loop itself (:func:`modelyard.training.epochs.train_epoch`) with the
    run's settings: its loss, optimizer, schedule (over the fine-tune's steps), precision,
    accumulation, clipping and batches seeded by the run's seed, on this machine's GPU if it has
    one (fp16 becomes fp32 on a CPU); an ``after_step`` hook
    re-applies the masks after every optimizer step. The model is left on the CPU in eval mode.

    Args:
        result: from :func:`prune_model`; its masks are re-applied after every step.
        run: the :class:`modelyard.training.Run` the model was trained in.
        epochs: passes over the training split.
        max_steps: stop after this many optimizer steps (tests; ``None``: whole epochs).
    """
    from modelyard.data import load_splits
    from modelyard.tokenize import load_tokenizer
    from modelyard.training.collate import Data
    from modelyard.training.environment import check_precision, resolve_device, seed_everything
    from modelyard.training.epochs import train_epoch
    from modelyard.training.prepare import build_trainer, encode_split, token_batches
    from modelyard.training.state import Loop, StepEnd

    if epochs <= 0:
        return
    # compression may run on another machine than training: the GPU when there is one, and
    # fp16 (CUDA only) becomes fp32 on a CPU
    device = resolve_device("auto")
    precision = run.config.train.precision
    if precision == "fp16" and device.type != "cuda":
        precision = "fp32"
    train_cfg = run.config.train.model_copy(
        update={"epochs": epochs, "device": device.type, "precision": precision}
    )
    config = run.config.model_copy(update={"train": train_cfg})
    check_precision(train_cfg.precision, device)
    splits = load_splits(config)
    tokenizer = load_tokenizer(run.paths.tokenizer)
    data = Data(
        train=encode_split(tokenizer, splits.train),
        validation=encode_split(tokenizer, splits.validation),
        batch=token_batches(config, tokenizer, device),
    )
    model = result.model.to(device)
    result.masks = [(module, name, mask.to(device)) for module, name, mask in result.masks]
    losses: list[float] = []

    def keep_pruned_zero(loop: Loop, step: StepEnd) -> None:
        result.apply_masks()
        losses.append(step.loss_sum / step.samples)

    trainer = build_trainer(config, model, data.train, run.labels.num_outputs, device)
    loop = Loop(config=config, data=data, trainer=trainer)
    loop.hooks.after_step.append(keep_pruned_zero)
    seed_everything(config.seed)
    for epoch in range(epochs):
        train_epoch(loop, epoch, max_steps=max_steps)
        if max_steps is not None and loop.progress.global_step >= max_steps:
            break
    model.cpu().eval()
    result.masks = [(module, name, mask.cpu()) for module, name, mask in result.masks]
    steps = loop.progress.global_step
    result.report.finetune = {
        "epochs": epochs,
        "steps": steps,
        "lr": config.train.optimizer.lr,
        "loss_first": losses[0] if losses else None,
        "loss_last": float(np.mean(losses[-10:])) if losses else None,
    }
    log.info("fine-tuned the pruned model: %d steps, loss %.4f", steps, losses[-1] if losses else 0)
