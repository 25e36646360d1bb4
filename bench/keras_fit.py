"""The seed recipe in Keras against modelyard's whole ``train`` command, interleaved per seed.

(a) Keras: examples/seed.yaml as a Keras user writes it: Keras' ``Tokenizer(num_words=10000,
oov_token="<OOV>")`` (reimplemented below: Keras 3 dropped ``keras.preprocessing.text``),
``pad_sequences(maxlen=100)`` (pre-padding, pre-truncation), Embedding(10000, 128) -> LSTM(64) ->
Dense(1, sigmoid), Adam(1e-3), binary cross-entropy, ``fit(epochs=10, batch_size=32)``, the
weights of the best epoch by ``val_accuracy`` restored. It runs in a subprocess under another
interpreter (``--keras-python``, a venv with tensorflow-cpu; TensorFlow is not in modelyard's
venv) and times ``model.fit`` alone. (b) ``modelyard train examples/seed.yaml --set seed=N``,
timed end to end (the wall time of the process). Both see the same train / validation / test
texts (modelyard's seeded 10% validation split, handed to the Keras worker) and the same number
of threads. The order of (a) and (b) alternates from seed to seed. It also prints the floor of
any PyTorch command taking modelyard's training steps: a process that imports torch and takes
one Adam step, plus the steps' own time from the run's ``metrics.jsonl``.

    .venv/bin/python bench/keras_fit.py [--seeds 1 2 3] [--epochs 10] [--threads 1]
        [--keras-python /work/keras-venv/bin/python]

A bench tool only: never imported by modelyard or its tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KERAS_PYTHON = "/work/keras-venv/bin/python"
# keras.preprocessing.text.Tokenizer's default filters (tabs and newlines included)
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


# --- the Keras side (runs under --keras-python; stdlib, numpy and keras only) -------------------


class KerasTokenizer:
    """Keras 2's ``Tokenizer(num_words, oov_token)``: ``fit_on_texts`` + ``texts_to_sequences``.

    Lowercase, each filter character becomes a space, split on " " (empty pieces dropped); words
    are ranked by count (ties keep first-seen order, Python's sort being stable), the OOV token
    takes index 1 and words from index 1 on; a word ranked at or past ``num_words`` (or unseen)
    maps to the OOV index.
    """

    def __init__(self, num_words: int, oov_token: str) -> None:
        self.num_words = num_words
        self.oov_token = oov_token
        self.word_index: dict[str, int] = {}

    @staticmethod
    def words(text: str) -> list[str]:
        text = text.lower().translate(str.maketrans(KERAS_FILTERS, " " * len(KERAS_FILTERS)))
        return [w for w in text.split(" ") if w]

    def fit_on_texts(self, texts: Sequence[str]) -> None:
        counts: dict[str, int] = {}
        for text in texts:
            for w in self.words(text):
                counts[w] = counts.get(w, 0) + 1
        ranked = [w for w, _ in sorted(counts.items(), key=lambda kv: kv[1], reverse=True)]
        self.word_index = {w: i for i, w in enumerate([self.oov_token, *ranked], start=1)}

    def texts_to_sequences(self, texts: Sequence[str]) -> list[list[int]]:
        oov = self.word_index[self.oov_token]
        out = []
        for text in texts:
            seq = []
            for w in self.words(text):
                i = self.word_index.get(w)
                seq.append(i if i is not None and i < self.num_words else oov)
            out.append(seq)
        return out


def macro_f1(targets: np.ndarray, predicted: np.ndarray) -> float:
    """Mean F1 of the two classes (as modelyard.metrics computes it for a binary task)."""
    scores = []
    for cls in (0, 1):
        tp = float(np.sum((predicted == cls) & (targets == cls)))
        fp = float(np.sum((predicted == cls) & (targets != cls)))
        fn = float(np.sum((predicted != cls) & (targets == cls)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def keras_worker(data_path: str, out_path: str) -> None:
    """Train the seed recipe in Keras on the splits in ``data_path``; write results to ``out_path``.

    Args:
        data_path: JSON with seed, epochs, threads and train / validation / test texts + labels.
        out_path: where the JSON result (test accuracy, macro-F1, fit seconds, ...) goes.
    """
    t_start = time.perf_counter()
    data = json.loads(Path(data_path).read_text(encoding="utf-8"))
    import keras
    import tensorflow as tf

    threads = int(data["threads"])
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    keras.utils.set_random_seed(int(data["seed"]))

    tokenizer = KerasTokenizer(num_words=10000, oov_token="<OOV>")
    tokenizer.fit_on_texts(data["train"]["texts"])

    def inputs(split: str) -> tuple[np.ndarray, np.ndarray]:
        seqs = tokenizer.texts_to_sequences(data[split]["texts"])
        x = keras.utils.pad_sequences(seqs, maxlen=100, padding="pre", truncating="pre")
        return x, np.asarray(data[split]["labels"], dtype="float32")

    x_train, y_train = inputs("train")
    x_val, y_val = inputs("validation")
    x_test, y_test = inputs("test")

    model = keras.Sequential(
        [
            keras.Input(shape=(100,)),
            keras.layers.Embedding(10000, 128),
            keras.layers.LSTM(64),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )

    class KeepBest(keras.callbacks.Callback):
        """Keeps the weights of the epoch with the highest val_accuracy (first one on ties)."""

        def __init__(self) -> None:
            super().__init__()
            self.best = -1.0
            self.best_epoch = 0
            self.weights: list[Any] | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            acc = float((logs or {})["val_accuracy"])
            if acc > self.best:
                self.best, self.best_epoch = acc, epoch + 1
                self.weights = self.model.get_weights()

    keep = KeepBest()
    t0 = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        epochs=int(data["epochs"]),
        batch_size=32,
        validation_data=(x_val, y_val),
        callbacks=[keep],
        verbose=2,
    )
    fit_s = time.perf_counter() - t0
    if keep.weights is not None:
        model.set_weights(keep.weights)
    scores = model.predict(x_test, batch_size=256, verbose=0).reshape(-1)
    predicted = (scores >= 0.5).astype("int64")
    targets = y_test.astype("int64")
    result = {
        "accuracy": float(np.mean(predicted == targets)),
        "macro_f1": macro_f1(targets, predicted),
        "fit_s": fit_s,
        "worker_s": time.perf_counter() - t_start,
        "best_epoch": keep.best_epoch,
        "best_val_accuracy": keep.best,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


# --- the driver (runs under modelyard's venv) ---------------------------------------------------


def thread_env(threads: int) -> dict[str, str]:
    """The environment of both subprocesses: ``threads`` threads, CPU only, quiet TensorFlow."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        env[key] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = str(threads)
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return env


def run_keras(args: argparse.Namespace, seed: int, tmp: Path) -> dict[str, Any]:
    """The Keras recipe on the same splits modelyard draws for ``seed``, in a subprocess."""
    from modelyard.config import load_config
    from modelyard.data.splits import load_splits

    config = load_config(args.config, [f"seed={seed}"])
    splits = load_splits(config)
    if splits.test is None:
        raise SystemExit(f"bench/keras_fit.py: {args.config} names no test file")

    def part(examples: Any) -> dict[str, Any]:
        return {"texts": examples.texts, "labels": [int(t) for t in examples.targets.reshape(-1)]}

    data_path, out_path = tmp / f"keras-data-{seed}.json", tmp / f"keras-out-{seed}.json"
    payload = {
        "seed": seed,
        "epochs": args.epochs,
        "threads": args.threads,
        "train": part(splits.train),
        "validation": part(splits.validation),
        "test": part(splits.test),
    }
    data_path.write_text(json.dumps(payload), encoding="utf-8")
    cmd = [args.keras_python, __file__, "--keras-worker", str(data_path), str(out_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=thread_env(args.threads), check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench/keras_fit.py: the Keras worker failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out_path.read_text(encoding="utf-8"))
    result["process_s"] = wall
    return result


def run_modelyard(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """``modelyard train`` on the seed recipe for ``seed``, timed end to end."""
    name = f"keras-bench-seed{seed}"
    cmd = [
        args.modelyard,
        "train",
        args.config,
        "--overwrite",
        "--set",
        f"seed={seed}",
        "--set",
        f"train.epochs={args.epochs}",
        "--set",
        f"train.num_threads={args.threads}",
        "--set",
        "train.progress=false",
        "--set",
        f"output_dir={args.output_dir}",
        "--set",
        f"name={name}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=thread_env(args.threads), check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench/keras_fit.py: modelyard train failed (exit {proc.returncode})")
    run_dir = Path(args.output_dir) / name
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text(encoding="utf-8"))
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    epochs = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return {
        "accuracy": float(metrics["metrics"]["accuracy"]),
        "macro_f1": float(metrics["metrics"]["macro_f1"]),
        "train_s": wall,
        # the optimizer steps alone, as the run logs them (no validation, no files)
        "steps_s": sum(float(json.loads(line)["epoch_time_s"]) for line in epochs),
        "best_epoch": info.get("best_epoch"),
        "startup_s": torch_startup(args.threads),
    }


# A process that imports torch and takes one Adam step: torch.optim's step imports torch._dynamo,
# so this is what any PyTorch training command pays before its first batch. It ends as modelyard's
# command does, without the interpreter's teardown (os._exit).
TORCH_STARTUP = (
    "import os, torch; m = torch.nn.Linear(2, 1); o = torch.optim.Adam(m.parameters(), fused=True);"
    " m(torch.zeros(1, 2)).sum().backward(); o.step(); os._exit(0)"
)


def torch_startup(threads: int) -> float:
    """Wall seconds of a ``python -c TORCH_STARTUP`` process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", TORCH_STARTUP], env=thread_env(threads), check=True)
    return time.perf_counter() - t0


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± sample std`` (just the mean for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras-worker", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--config", default=str(ROOT / "examples" / "seed.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="threads for both (default 1)")
    parser.add_argument(
        "--keras-python",
        default=DEFAULT_KERAS_PYTHON,
        help=f"python of a venv with tensorflow-cpu (default {DEFAULT_KERAS_PYTHON})",
    )
    parser.add_argument(
        "--modelyard",
        default=str(Path(sys.executable).parent / "modelyard"),
        help="the modelyard command (default: the one next to this python)",
    )
    parser.add_argument("--output-dir", default="runs/bench-keras")
    args = parser.parse_args()
    if args.keras_worker:
        keras_worker(*args.keras_worker)
        return

    if not os.access(args.keras_python, os.X_OK):
        raise SystemExit(
            f"bench/keras_fit.py: --keras-python {args.keras_python} not found; make it with "
            "`python3 -m venv /work/keras-venv && /work/keras-venv/bin/pip install "
            "tensorflow-cpu==2.21.0`"
        )
    if not os.access(args.modelyard, os.X_OK):
        raise SystemExit(f"bench/keras_fit.py: --modelyard {args.modelyard} not found")

    rows: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="keras-fit-") as tmp:
        for i, seed in enumerate(args.seeds):
            # alternate who goes first, so drift in the machine's load hits both alike
            if i % 2 == 0:
                k = run_keras(args, seed, Path(tmp))
                m = run_modelyard(args, seed)
            else:
                m = run_modelyard(args, seed)
                k = run_keras(args, seed, Path(tmp))
            rows.append((seed, k, m))
            print(
                f"seed {seed}: keras acc {k['accuracy']:.4f} f1 {k['macro_f1']:.4f} "
                f"fit {k['fit_s']:.1f}s (best ep {k['best_epoch']}) | modelyard acc "
                f"{m['accuracy']:.4f} f1 {m['macro_f1']:.4f} train {m['train_s']:.1f}s "
                f"(best ep {m['best_epoch']}) | ratio {k['fit_s'] / m['train_s']:.2f}x",
                flush=True,
            )

    versions = rows[0][1]["versions"]
    print(
        f"\nseed recipe, {args.epochs} epochs, {args.threads} thread(s) each, seeds {args.seeds}; "
        f"tensorflow {versions['tensorflow']}, keras {versions['keras']}"
    )
    print(
        "| seed | Keras acc | Keras F1 | Keras fit s | modelyard acc | modelyard F1 "
        "| modelyard train s | fit s / train s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for seed, k, m in rows:
        print(
            f"| {seed} | {k['accuracy']:.4f} | {k['macro_f1']:.4f} | {k['fit_s']:.1f} "
            f"| {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['train_s']:.1f} "
            f"| {k['fit_s'] / m['train_s']:.2f}× |"
        )

    def col(side: int, key: str) -> list[float]:
        return [float(r[side][key]) for r in rows]

    ratios = [k["fit_s"] / m["train_s"] for _, k, m in rows]
    print(
        f"| mean ± std | {mean_std(col(1, 'accuracy'))} | {mean_std(col(1, 'macro_f1'))} "
        f"| {mean_std(col(1, 'fit_s'), 1)} | {mean_std(col(2, 'accuracy'))} "
        f"| {mean_std(col(2, 'macro_f1'))} | {mean_std(col(2, 'train_s'), 1)} "
        f"| {mean_std(ratios, 2)}× |"
    )
    total = statistics.fmean(col(1, "fit_s")) / statistics.fmean(col(2, "train_s"))
    print(f"mean Keras fit s / mean modelyard train s: {total:.2f}×")
    print(
        "Keras worker process (import + tokenize + fit + predict): "
        f"{mean_std(col(1, 'process_s'), 1)} s"
    )
    # the floor of any PyTorch command running these same steps: torch's start-up plus the steps
    fit_s = statistics.fmean(col(1, "fit_s"))
    floor = [m["startup_s"] + m["steps_s"] for _, _, m in rows]
    print(
        f"modelyard's optimizer steps alone: {mean_std(col(2, 'steps_s'), 1)} s "
        f"(fit s / steps s: {fit_s / statistics.fmean(col(2, 'steps_s')):.2f}×); torch start-up "
        f"(import + first Adam step, a process of its own): {mean_std(col(2, 'startup_s'), 2)} s"
    )
    print(
        f"floor = start-up + steps: {mean_std(floor, 1)} s, so no PyTorch command taking these "
        f"steps beats {fit_s / statistics.fmean(floor):.2f}× Keras' fit; modelyard's own overhead "
        f"above the floor: {statistics.fmean(col(2, 'train_s')) - statistics.fmean(floor):.1f} s"
    )


if __name__ == "__main__":
    main()
