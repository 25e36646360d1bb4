"""A training run on disk: the directory layout and the :class:`Run` that reads it back.

::

    runs/NAME/
      config.yaml               the resolved config (every default spelled out)
      run.json                  task, labels, vocab_size, num_outputs, status, best_epoch, version
      tokenizer.json            the tokenizer, cleaning and truncation included
      metrics.jsonl             one JSON line per epoch
      checkpoints/best.safetensors, last.safetensors, last.state.pt
      eval/                     metrics.json, report.txt, confusion_matrix.png, learning_curves.png
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.config import Config, load_config
from modelyard.errors import ConfigError, RunError

if TYPE_CHECKING:
    from modelyard.data import LabelSpace


@dataclass(frozen=True)
class RunPaths:
    """Where each file of a run lives."""

    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def run_json(self) -> Path:
        return self.dir / "run.json"

    @property
    def tokenizer(self) -> Path:
        return self.dir / "tokenizer.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    def weights(self, which: str = "best") -> Path:
        if which not in ("best", "last"):
            raise ValueError(f"which must be 'best' or 'last', got {which!r}")
        return self.checkpoints / f"{which}.safetensors"

    @property
    def state(self) -> Path:
        return self.checkpoints / "last.state.pt"

    @property
    def eval_dir(self) -> Path:
        return self.dir / "eval"

    @property
    def tensorboard(self) -> Path:
        return self.dir / "tensorboard"


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` looks like a training run (has run.json and config.yaml)."""
    paths = RunPaths(Path(path))
    return paths.run_json.is_file() and paths.config.is_file()


def read_history(path: Path) -> list[dict[str, Any]]:
    """Read metrics.jsonl; a torn last line (a crash mid-append) is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


@dataclass
class Run:
    """A finished (or interrupted) training run, read back from its directory.

    Attributes:
        dir: the run directory.
        config: the resolved config the run was trained with.
        labels: the label space (class names, task).
        history: one dict per epoch, as in metrics.jsonl.
        test_metrics: metrics of the best checkpoint on the test file, when one was evaluated.
        info: the contents of run.json.
    """

    dir: Path
    config: Config
    labels: LabelSpace
    history: list[dict[str, Any]]
    test_metrics: dict[str, Any] | None
    info: dict[str, Any] = field(default_factory=dict)
    test_size: int | None = None  # how many test texts test_metrics were measured on

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.dir)

    @property
    def task(self) -> str:
        return str(self.config.task)

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """Read a run directory.

        Args:
            path: ``runs/NAME``.

        Returns:
            The :class:`Run`.

        Raises:
            RunError: the directory is missing or is not a run.
        """
        from modelyard.data import LabelSpace

        paths = RunPaths(Path(path))
        if not paths.dir.is_dir():
            raise RunError(f"{paths.dir}: run directory not found")
        for needed in (paths.config, paths.run_json):
            if not needed.is_file():
                raise RunError(f"{paths.dir}: not a run directory ({needed.name} is missing)")
        try:
            config = load_config(paths.config)
        except ConfigError as exc:
            raise RunError(f"{paths.dir}: the run's config is invalid: {exc}") from exc
        try:
            info = json.loads(paths.run_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunError(f"{paths.run_json}: not valid JSON: {exc}") from exc
        if "label_space" in info:
            labels = LabelSpace.from_dict(info["label_space"])
        else:
            labels = LabelSpace(task=info["task"], labels=list(info["labels"]))
        test_metrics, test_size = _test_evaluation(paths, config)
        return cls(
            dir=paths.dir,
            config=config,
            labels=labels,
            history=read_history(paths.metrics),
            test_metrics=test_metrics,
            info=info,
            test_size=test_size,
        )


def _test_evaluation(paths: RunPaths, config: Config) -> tuple[dict[str, Any] | None, int | None]:
    """The metrics of ``eval/metrics.json`` when they were measured on the run's test file.

    An evaluation on the validation split (a run without a test file) or on another file is
    not a test result and is never reported as one.
    """
    try:
        payload = json.loads((paths.eval_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(payload, dict):
        return None, None
    # runs evaluated before the split was recorded: test when the config names a test file
    split = payload.get("split", "test" if config.data.test is not None else "validation")
    if split != "test" or not isinstance(payload.get("metrics"), dict):
        return None, None
    size = payload.get("num_examples")
    return payload["metrics"], int(size) if isinstance(size, int) else None


def recorded_test_metrics(run: Run) -> dict[str, float] | None:
    """The run's test metrics (see :func:`_test_evaluation`), finite values only."""
    metrics: Any = run.test_metrics
    if not isinstance(metrics, dict):
        return None
    # JSON has no NaN (roc_auc on one class); such a metric is left out rather than faked
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
