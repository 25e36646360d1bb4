"""The Predictor: raw text in, labels and scores out, from a verified bundle and no torch.

Three steps, each usable alone (the server batches between them): ``encode`` (the bundle's own
``tokenizer.json``), ``infer`` (length-sorted sub-batches through the backend, activation applied)
and ``postprocess`` (scores into :class:`Prediction` objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from modelyard.bundle import Bundle, Manifest, verify_bundle
from modelyard.errors import BundleError
from modelyard.runtime.backends import BACKENDS, Backend, Providers
from modelyard.runtime.generator import Generator, GeneratorSettings, load_generator
from modelyard.tasks import Prediction, get_task
from modelyard.tokenize import encode, pad_batch
from modelyard.versions import VersionRef

DEFAULT_MAX_BATCH = 64


def apply_activation(logits: np.ndarray, activation: str) -> np.ndarray:
    """Apply the bundle's activation to raw outputs (B, K), in float32."""
    x = np.asarray(logits, dtype=np.float32)
    if activation == "sigmoid":
        # split by sign so exp never overflows for large |x|
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    if activation == "identity":
        return x
    raise BundleError(f"unknown activation {activation!r}")


def to_predictions(
    task: str,
    labels: Sequence[str],
    scores: np.ndarray,
    *,
    threshold: float = 0.5,
    top_k: int | None = None,
) -> list[Prediction]:
    """Turn post-activation scores (N, num_outputs) into predictions, as the task reads them.

    Args:
        task: a registered task name.
        labels: class names (binary: ``labels[1]`` is the positive class).
        scores: probabilities (binary: (N, 1) of the positive class) or values (regression).
        threshold: binary: the positive class at or over it; multilabel: the label set.
        top_k: report only the k best class scores (``None``: all).

    Returns:
        One :class:`Prediction` per row.
    """
    return get_task(task).predictions(labels, scores, threshold=threshold, top_k=top_k)


class Predictor:
    """Predicts with one bundle version. Build with :func:`modelyard.runtime.load`.

    Args:
        bundle_dir: a verified version directory.
        manifest: its manifest.
        backend: the inference session over the bundle's graph.
        tokenizer: the bundle's tokenizer.
        max_batch: the most texts one backend call sees; longer inputs are split.
    """

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        backend: Backend,
        tokenizer: Tokenizer,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.path = bundle_dir
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self.task = manifest.task
        self.labels = list(manifest.labels)
        self.backend = backend
        self.tokenizer = tokenizer
        self.max_batch = max_batch

    def __repr__(self) -> str:
        return f"Predictor({self.name!r}, version={self.version}, task={self.task!r})"

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text: the bundle's tokenizer, truncated to max length, unpadded."""
        _check_texts(texts)
        return encode(self.tokenizer, list(texts))

    def infer(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores (N, num_outputs) float32, in input order, after the bundle's activation.

        Sequences are sorted by length and run in sub-batches of at most ``max_batch``, each
        padded only to its own longest sequence, so one long text does not make a whole batch
        pay for its padding. The models mask padding, so a text's score does not depend on its
        batch-mates.
        """
        n = len(seqs)
        out = np.zeros((n, self.manifest.num_outputs), dtype=np.float32)
        if n == 0:
            return out
        order = np.argsort([len(s) for s in seqs], kind="stable")
        for start in range(0, n, self.max_batch):
            idx = order[start : start + self.max_batch]
            batch = pad_batch(
                [list(seqs[i]) for i in idx],
                pad_id=self.manifest.pad_id,
                side=self.manifest.padding_side,
            )
            out[idx] = self.backend.run(batch.ids, batch.mask)
        return apply_activation(out, self.manifest.postprocess.activation)

    def postprocess(self, scores: np.ndarray) -> list[Prediction]:
        """Turn scores from :meth:`infer` into one :class:`Prediction` per row."""
        post = self.manifest.postprocess
        return to_predictions(
            self.task, self.labels, scores, threshold=post.threshold, top_k=post.top_k
        )

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Predict every text: encode, infer, postprocess.

        Args:
            texts: raw texts (a list, not one bare string).

        Returns:
            One :class:`Prediction` per text, in order.
        """
        return self.postprocess(self.infer(self.encode(texts)))

    def warmup(self) -> None:
        """Run one tiny batch so the first real request does not pay ORT's lazy setup."""
        self.infer([[self.manifest.pad_id + 1]] * 2)


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("expected a list of texts; wrap a single text as [text]")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"text {bad} is {type(texts[bad]).__name__}, not str")


def load(
    path: str | Path,
    version: VersionRef | None = None,
    *,
    task: str | None = None,
    providers: Providers = None,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    generation: GeneratorSettings | None = None,
) -> Predictor | Generator:
    """Load a bundle after checking every file against its manifest: a :class:`Predictor` for
    a classifier or regressor, a :class:`~modelyard.runtime.generator.Generator` for a
    generative bundle (task ``generation``).

    Args:
        path: ``REPO/NAME`` (its default version, or ``version``) or ``REPO/NAME/VERSION``.
        version: a version number or an alias (``server``, ``edge``…) of ``REPO/NAME``;
            ``None`` means the model's default (:func:`modelyard.versions.default_version`).
        task: when given, the task the caller expects; a bundle for another task is refused.
        providers: ONNX Runtime execution providers: ``None``/``"cpu"``, ``"auto"`` (CUDA when
            present), ``"cuda"`` or an explicit list.
        intra_op_threads: ORT threads inside one operator (default: ORT's choice).
        inter_op_threads: ORT threads across operators (default: ORT's choice).
        max_batch: the most texts one inference call sees.
        generation: a generative bundle's slots, threads and context
            (:class:`~modelyard.runtime.generator.GeneratorSettings`).

    Returns:
        A ready :class:`Predictor` or :class:`~modelyard.runtime.generator.Generator`.

    Raises:
        BundleError: the bundle is missing, corrupted (missing file, size or sha256 mismatch),
            from a newer schema version, for another task, or unreadable by the backend.
    """
    bundle = verify_bundle(path, version, task=task)
    if get_task(bundle.manifest.task).generative:
        return load_generator(bundle, generation)
    return _predictor(bundle, providers, intra_op_threads, inter_op_threads, max_batch)


def load_predictor(
    path: str | Path,
    version: VersionRef | None = None,
    *,
    task: str | None = None,
    providers: Providers = None,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Predictor:
    """:func:`load` for callers that score texts: a generative bundle is refused.

    Raises:
        BundleError: as :func:`load`, or the bundle is generative.
    """
    bundle = verify_bundle(path, version, task=task)
    if get_task(bundle.manifest.task).generative:
        raise BundleError(
            f"{bundle.path}: a generative bundle answers prompts, it does not score texts "
            "(modelyard.load(...).generate)"
        )
    return _predictor(bundle, providers, intra_op_threads, inter_op_threads, max_batch)


def _predictor(
    bundle: Bundle,
    providers: Providers,
    intra_op_threads: int | None,
    inter_op_threads: int | None,
    max_batch: int,
) -> Predictor:
    manifest = bundle.manifest
    backend_cls = BACKENDS.get(manifest.format)
    if backend_cls is None:
        raise BundleError(
            f"{bundle.path}: model format {manifest.format!r} is not supported here; "
            f"known: {', '.join(BACKENDS)}"
        )
    try:
        tokenizer = Tokenizer.from_file(str(bundle.path / manifest.tokenizer_file))
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        raise BundleError(f"{bundle.path / manifest.tokenizer_file}: unreadable ({exc})") from None
    backend = backend_cls(
        bundle.path / manifest.model_file,
        input_names=[spec.name for spec in manifest.inputs],
        providers=providers,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        pad_id=manifest.pad_id,
        padding_side=manifest.padding_side,
    )
    return Predictor(bundle.path, manifest, backend, tokenizer, max_batch=max_batch)
