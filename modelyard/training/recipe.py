"""``train(config) -> Run``: ``setup`` → ``fit`` → ``finish``, each an importable step.

Reproducibility: the batch order of epoch ``e`` depends only on ``(seed, e)``; the model is built
right after seeding python/numpy/torch; a checkpoint stores every RNG state, the optimizer and
schedule, and how many batches of the current epoch are done, so a resumed run skips exactly those
batches and ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import logging
import os
import time

from modelyard.config import Config
from modelyard.errors import RunError
from modelyard.metrics import format_with_interval
from modelyard.plots import plot_learning_curves
from modelyard.runs import Run
from modelyard.tasks import get_task
from modelyard.training.distributed import World, barrier, check_ranks_agree, process_group
from modelyard.training.environment import torch_settings
from modelyard.training.epochs import fit
from modelyard.training.evaluation import evaluate_examples
from modelyard.training.generative import finish_generative, setup_generative
from modelyard.training.prepare import setup
from modelyard.training.state import Hooks, Session, write_run_json

log = logging.getLogger("modelyard.training")


def finish(session: Session) -> Run:
    """Mark the run complete, draw the learning curves, evaluate the best checkpoint on the test
    file when one is configured.

    Returns:
        The :class:`Run`, read back from disk.
    """
    paths, test = session.paths, session.data.test
    if isinstance(test, list):  # a generative run's inputs: finish_generative scores those
        raise TypeError("a generative session finishes with finish_generative")
    write_run_json(session, "completed")
    run = Run.load(paths.dir)
    if test is None and run.history:
        # with a test file, evaluate_examples draws the curves beside the test metrics
        plot_learning_curves(
            run.history, paths.eval_dir / "learning_curves.png", title=paths.dir.name
        )
    if test is not None:
        result = evaluate_examples(
            run, test.texts, test.targets, source=test.source, out_dir=paths.eval_dir
        )
        log.info(
            "test (%s): %s",
            test.source,
            _metrics_line(result.metrics, result.num_examples),
        )
        run.test_metrics = result.metrics
        run.test_size = result.num_examples
    return run


def _metrics_line(metrics: dict[str, float], n: int) -> str:
    return "  ".join(format_with_interval(k, v, n) for k, v in metrics.items())


def close(session: Session) -> None:
    """Release what the session holds open (the TensorBoard writer)."""
    if session.writer is not None:
        session.writer.close()
        session.writer = None


def train(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    world: World | None = None,
    hooks: Hooks | None = None,
) -> Run:
    """Train a model as the config says and write the run directory ``config.run_dir``.

    Under torchrun (``WORLD_SIZE`` > 1) it trains data-parallel: one rank per process, the
    config's ``train.batch_size`` is the global batch, rank 0 writes the run directory.

    Args:
        config: the resolved config (:func:`modelyard.config.load_config`).
        resume: continue from the run's last checkpoint (pass the run's saved config); ends with
            the same weights as an uninterrupted run.
        overwrite: delete an existing run of the same name first.
        world: this process among the ranks (default: read from torchrun's environment).
        hooks: callbacks added to the loop's own (``after_step``, ``after_epoch``).

    Returns:
        The finished :class:`Run`.

    Raises:
        RunError: the run directory already holds a run and neither flag was given; nothing to
            resume; the loss diverged.
        ConfigError, DataError: from the config and the data files.
    """
    started = time.monotonic()
    world = world if world is not None else World.from_env(os.environ)
    generative = get_task(config.task).generative
    begin, end = (setup_generative, finish_generative) if generative else (setup, finish)
    with torch_settings(config), process_group(world, config):
        session = begin(config, resume=resume, overwrite=overwrite, world=world)
        if config.train.max_time_s is not None:
            session.deadline = started + config.train.max_time_s
        if hooks is not None:
            session.hooks.after_step.extend(hooks.after_step)
            session.hooks.after_epoch.extend(hooks.after_epoch)
        try:
            fit(session)
            if not session.progress.history:  # only a time limit ends fit before an epoch
                raise RunError(
                    f"{session.paths.dir}: train.max_time_s ({config.train.max_time_s} s) "
                    "passed before the first epoch ended"
                )
            if world.distributed:
                session.digests = check_ranks_agree(session.trainer.model, world)
        except KeyboardInterrupt:
            write_run_json(session, "interrupted")
            raise
        except Exception:
            write_run_json(session, "failed")
            raise
        finally:
            close(session)
        run = end(session) if world.is_main else None
        barrier(world)  # the other ranks return once rank 0 has finished the run directory
        return run if run is not None else Run.load(session.paths.dir)
