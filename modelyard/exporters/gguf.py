"""A merged Hugging Face llama directory as one GGUF file, the format llama.cpp, Ollama and LM
Studio load, written with the ``gguf`` package's writer.

What goes in: the architecture's sizes (``llama.*`` keys), every weight renamed to llama.cpp's
tensor names (``gguf.TensorNameMap``), the query and key projections re-ordered from Hugging
Face's half-split rotary layout to llama.cpp's interleaved one, and the tokenizer with its chat
template (:mod:`modelyard.exporters.gguf_vocab`). Norms stay F32; matrices are stored as the
chosen :data:`GGUF_TYPES` entry. Q8_0 and Q4_0 quantize rows in blocks of 32 values, so a
matrix whose rows are not a multiple of 32 wide stays F16 (listed in ``GGUFFile.kept_f16``).
K-quants (Q4_K, Q6_K, ...) work on blocks of 256: they need every width a multiple of 256
(SmolLM2's 576 is not) and llama.cpp's ``llama-quantize`` to make them; they are refused here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType as F

from modelyard.atomic import atomic_path
from modelyard.errors import BundleError
from modelyard.exporters.gguf_vocab import add_vocabulary
from modelyard.logs import quiet_logger

ARCHITECTURE = "llama"


@dataclass(frozen=True)
class GGUFType:
    """How a GGUF file stores its matrices: the tensor type and the file type it declares."""

    tensor: Q
    file: F
    # embeddings and the output projection; None: the same as every matrix
    embeddings: Q | None = None


GGUF_TYPES: dict[str, GGUFType] = {
    "f32": GGUFType(Q.F32, F.ALL_F32),
    "f16": GGUFType(Q.F16, F.MOSTLY_F16),
    "q8_0": GGUFType(Q.Q8_0, F.MOSTLY_Q8_0),
    # the embedding table and output projection are the most sensitive: kept at 8 bits
    "q4_0": GGUFType(Q.Q4_0, F.MOSTLY_Q4_0, embeddings=Q.Q8_0),
}
K_QUANTS = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
K_BLOCK = 256
EMBEDDING_TENSORS = ("token_embd.weight", "output.weight")


@dataclass(frozen=True)
class LlamaShape:
    """The sizes llama.cpp needs, read from a Hugging Face ``config.json``."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int
    rms_eps: float
    rope_theta: float
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict[str, Any], source: Path) -> LlamaShape:
        """Raises BundleError for another architecture or a rotary scaling llama.cpp's plain
        llama graph does not apply."""
        if config.get("model_type") != ARCHITECTURE:
            raise BundleError(
                f"{source}: GGUF export writes llama-architecture models (model_type llama, as "
                f"SmolLM2 and Llama are); this is {config.get('model_type')!r}"
            )
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise BundleError(f"{source}: rope_type {kind!r} is not exported yet (only default)")
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            layers=int(config["num_hidden_layers"]),
            hidden=hidden,
            intermediate=int(config["intermediate_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab=int(config["vocab_size"]),
            context=int(config.get("max_position_embeddings", 2048)),
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )


@dataclass(frozen=True)
class GGUFFile:
    """A written GGUF file and what it holds.

    Attributes:
        path: the file.
        quantization: the :data:`GGUF_TYPES` key its matrices were written as.
        size_bytes: the file's size.
        tensors: how many tensors it holds.
        pre_tokenizer: llama.cpp's name for the tokenizer's pre-tokenizer.
        kept_f16: matrices too narrow for the quantization's blocks, stored F16 instead.
    """

    path: Path
    quantization: str
    size_bytes: int
    tensors: int
    pre_tokenizer: str
    kept_f16: tuple[str, ...] = field(default=())


def gguf_type(quantization: str, shape: LlamaShape | None = None) -> GGUFType:
    """The :data:`GGUF_TYPES` entry for ``quantization``.

    Raises:
        BundleError: an unknown name; a K-quant, with whether the model's widths would fit it.
    """
    key = quantization.lower()
    if key in K_QUANTS:
        fits = ""
        if shape is not None:
            widths = {shape.hidden, shape.intermediate}
            odd = sorted(w for w in widths if w % K_BLOCK)
            fits = (
                f"; this model's widths {sorted(widths)} "
                + (f"are not ({odd})" if odd else "are")
                + " multiples of 256"
            )
        raise BundleError(
            f"{quantization}: K-quants store rows in blocks of {K_BLOCK} values, so every matrix "
            f"width must be a multiple of {K_BLOCK}{fits}, and they are made by llama.cpp's "
            f"llama-quantize, not the gguf package; written here: {', '.join(GGUF_TYPES)}"
        )
    if key not in GGUF_TYPES:
        raise BundleError(f"unknown GGUF type {quantization!r}; known: {', '.join(GGUF_TYPES)}")
    return GGUF_TYPES[key]


def write_gguf(
    directory: str | Path, path: str | Path, *, quantization: str = "f16", name: str | None = None
) -> GGUFFile:
    """Write a merged Hugging Face llama directory (``config.json``, safetensors weights,
    ``tokenizer.json``) as one GGUF file, atomically: a reader sees the old file or the new one.

    Args:
        directory: the Hugging Face directory (:func:`modelyard.exporters.registry.export_merged`
            writes one from a generation run).
        path: the ``.gguf`` file to write.
        quantization: a :data:`GGUF_TYPES` key (``f32``, ``f16``, ``q8_0``, ``q4_0``).
        name: the model's name in the file (``general.name``); default: the directory's name.

    Returns:
        The written :class:`GGUFFile`.

    Raises:
        BundleError: the directory is not a llama model with a byte-level BPE tokenizer that
            llama.cpp reproduces, a weight has no llama.cpp name, or ``quantization`` is unknown.
    """
    directory, path = Path(directory), Path(path)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise BundleError(f"{directory} has no config.json: not a Hugging Face model directory")
    shape = LlamaShape.from_config(json.loads(config_path.read_text()), directory)
    kind = gguf_type(quantization, shape)
    with quiet_logger("gguf"), atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch=ARCHITECTURE)
        writer.add_name(name or directory.name)
        add_architecture(writer, shape, kind)
        pre = add_vocabulary(writer, directory, shape.vocab)
        count, kept = add_weights(writer, directory, shape, kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return GGUFFile(path, quantization.lower(), path.stat().st_size, count, pre, kept)


def add_architecture(writer: gguf.GGUFWriter, shape: LlamaShape, kind: GGUFType) -> None:
    """The ``general.*`` and ``llama.*`` keys llama.cpp builds its graph from."""
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.intermediate)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_rope_dimension_count(shape.head_dim)
    if shape.head_dim * shape.heads != shape.hidden:
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
    writer.add_vocab_size(shape.vocab)
    writer.add_file_type(kind.file)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def read_weights(directory: Path) -> dict[str, np.ndarray]:
    """Every weight of the directory's safetensors files (sharded or not) as float32."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise BundleError(f"{directory} has no .safetensors weights")
    weights: dict[str, np.ndarray] = {}
    for file in files:
        # torch reads bfloat16, which numpy cannot; exporters may use torch
        with safe_open(str(file), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                weights[name] = st.get_tensor(name).float().numpy()
    return weights


def interleave_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """A query or key projection from Hugging Face's rotary layout (each head's first half of
    dimensions, then its second half) to llama.cpp's (pairs side by side)."""
    rows = weight.shape[0]
    halves = weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])  # (H, 2, D/2, C)
    return halves.swapaxes(1, 2).reshape(weight.shape)  # (H*D, C), pairs interleaved


def add_weights(
    writer: gguf.GGUFWriter, directory: Path, shape: LlamaShape, kind: GGUFType
) -> tuple[int, tuple[str, ...]]:
    """Rename, re-order and store every weight. Returns the tensor count and the matrices kept
    F16 because their rows do not fill whole quantization blocks."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, shape.layers)
    kept: list[str] = []
    count = 0
    for hf_name, weight in read_weights(directory).items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp from rope.freq_base
        if hf_name == "lm_head.weight" and shape.tied_embeddings:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise BundleError(f"{directory}: weight {hf_name!r} has no llama.cpp tensor name")
        if hf_name.endswith("q_proj.weight"):
            weight = interleave_rotary(weight, shape.heads)
        elif hf_name.endswith("k_proj.weight"):
            weight = interleave_rotary(weight, shape.kv_heads)
        stored, data = store(name, weight, kind)
        if stored is Q.F16 and kind.tensor not in (Q.F16, Q.F32):
            kept.append(name)
        writer.add_tensor(name, data, raw_dtype=stored)
        count += 1
    return count, tuple(kept)


def store(name: str, weight: np.ndarray, kind: GGUFType) -> tuple[Q, np.ndarray]:
    """The type a tensor is stored as and its bytes (or values) in that type."""
    if weight.ndim == 1:
        return Q.F32, weight.astype(np.float32)  # norms and biases: tiny, and precision matters
    wanted = kind.embeddings if kind.embeddings and name in EMBEDDING_TENSORS else kind.tensor
    if wanted in (Q.F32, Q.F16):
        return wanted, weight.astype(np.float32 if wanted is Q.F32 else np.float16)
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    if weight.shape[-1] % block:
        return Q.F16, weight.astype(np.float16)
    return wanted, gguf.quants.quantize(weight.astype(np.float32), wanted)
