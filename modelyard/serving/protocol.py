"""Request parsing and response encoding: the simple v1 API and the Open Inference Protocol (v2).

Everything here is pure (bytes in, bytes or values out) so the routes stay thin and the rules are
tested without a server. Every client mistake raises :class:`ProtocolError` with the HTTP status
to answer; nothing a client sends can turn into a 500.

Open Inference Protocol (KServe v2, also Triton's HTTP API): texts arrive as one ``BYTES`` input
named ``text`` (shape ``[N]`` or ``[N, 1]``); the answer holds ``scores`` (``FP32``, ``[N, C]``,
columns in label order) and ``label`` (``BYTES``, ``[N]``): the top label, or for a multilabel
model the thresholded label set (the v1 ``labels``) as a JSON array string such as
``["music", "plot"]`` (a Triton client gets it as bytes: ``json.loads`` each). The binary tensor
data extension (what ``tritonclient.http`` sends by default) is understood in both directions.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

INPUT_NAME = "text"
SCORES_OUTPUT = "scores"
LABEL_OUTPUT = "label"
BINARY_HEADER = "inference-header-content-length"


class ProtocolError(Exception):
    """A client error: ``status`` is the HTTP status to answer, the message goes in ``error``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Per-request limits (from ServeConfig)."""

    max_texts: int = 256
    max_text_chars: int = 20000


@dataclass
class InferRequest:
    """A parsed v2 infer request."""

    texts: list[str]
    id: str | None
    outputs: list[str]  # requested output names, in order
    binary_outputs: set[str]  # outputs to send as binary tensor data


def error_body(message: str) -> bytes:
    """The JSON error body used by every endpoint: ``{"error": "..."}``."""
    return orjson.dumps({"error": message})


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson says "surrogates not allowed" for any bad UTF-8; name the first bad byte instead
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise ProtocolError(
                400, f"request body is not valid UTF-8 (byte {bad.start})"
            ) from None
        raise ProtocolError(400, f"request body is not valid JSON: {exc}") from None


def check_texts(texts: Sequence[str], limits: Limits) -> None:
    """Enforce the number-of-texts and text-length limits.

    Raises:
        ProtocolError: 413 for too many texts, 422 for a text that is too long.
    """
    if len(texts) > limits.max_texts:
        raise ProtocolError(413, f"too many texts: {len(texts)} (at most {limits.max_texts})")
    for i, text in enumerate(texts):
        if len(text) > limits.max_text_chars:
            raise ProtocolError(
                422,
                f"texts[{i}] is too long: {len(text)} characters (at most {limits.max_text_chars})",
            )


# ----------------------------------------------------------------------------------------- v1
def parse_predict(body: bytes, limits: Limits) -> list[str]:
    """Parse ``{"texts": ["...", ...]}``.

    Returns:
        The texts.

    Raises:
        ProtocolError: 400 malformed JSON, 422 wrong shape or types, 413/422 over the limits.
    """
    payload = _loads(body)
    if not isinstance(payload, dict):
        raise ProtocolError(422, 'expected a JSON object like {"texts": ["..."]}')
    unknown = sorted(set(payload) - {"texts"})
    if unknown:
        raise ProtocolError(422, f"unknown field(s) {', '.join(unknown)}; expected 'texts'")
    texts = payload.get("texts")
    if not isinstance(texts, list):
        raise ProtocolError(422, "'texts' must be a list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ProtocolError(422, f"texts[{i}] must be a string, got {type(text).__name__}")
    check_texts(texts, limits)
    return texts


# ----------------------------------------------------------------------------------------- v2
def parse_infer(
    body: bytes, limits: Limits, *, header_length: str | None, outputs: Sequence[str]
) -> InferRequest:
    """Parse a v2 infer request (JSON, or JSON plus binary tensor data).

    Args:
        body: the raw request body.
        limits: text limits.
        header_length: the ``Inference-Header-Content-Length`` header, when present.
        outputs: the output names this model offers.

    Raises:
        ProtocolError: 400 for malformed requests, 413/422 over the limits.
    """
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(400, "Inference-Header-Content-Length must be an integer") from None
        if not 0 <= n <= len(body):
            raise ProtocolError(400, "Inference-Header-Content-Length is larger than the body")
        body, binary = body[:n], body[n:]
    payload = _loads(body)
    if not isinstance(payload, dict):
        raise ProtocolError(400, "infer request must be a JSON object")
    req_id = payload.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise ProtocolError(400, "'id' must be a string")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(400, f"expected 'inputs' with exactly one tensor named {INPUT_NAME!r}")
    texts = _parse_input(inputs[0], binary)
    check_texts(texts, limits)
    wanted, binary_outputs = _parse_outputs(payload, outputs)
    return InferRequest(texts, req_id, wanted, binary_outputs)


def _parse_input(tensor: dict[str, Any], binary: bytes) -> list[str]:
    name = tensor.get("name")
    if name != INPUT_NAME:
        raise ProtocolError(400, f"unknown input {name!r}; this model takes {INPUT_NAME!r}")
    if tensor.get("datatype") != "BYTES":
        raise ProtocolError(400, f"input {INPUT_NAME!r} must have datatype BYTES")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise ProtocolError(400, f"input {INPUT_NAME!r} must have shape [N] or [N, 1]")
    count = shape[0]
    params = _parameters(tensor)
    if "binary_data_size" in params:
        raw = _decode_binary_bytes(binary, params["binary_data_size"])
        texts = []
        for item in raw:
            try:
                texts.append(item.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError(400, "BYTES input is not valid UTF-8") from None
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise ProtocolError(400, f"input {INPUT_NAME!r} needs 'data' (a list of strings)")
        texts = _flatten_strings(data)
    if len(texts) != count:
        raise ProtocolError(400, f"input shape {shape} does not match {len(texts)} element(s)")
    return texts


def _flatten_strings(data: list[Any]) -> list[str]:
    # The spec allows the data of a [N, 1] tensor nested ([["a"], ["b"]]) or flat.
    out: list[str] = []
    for item in data:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list) and len(item) == 1 and isinstance(item[0], str):
            out.append(item[0])
        else:
            raise ProtocolError(400, "BYTES data must be strings")
    return out


def _decode_binary_bytes(binary: bytes, size: Any) -> list[bytes]:
    """BYTES in binary form: each element is a 4-byte little-endian length, then the bytes."""
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
        raise ProtocolError(400, "binary_data_size does not match the binary data")
    view = memoryview(binary)[:size]
    out: list[bytes] = []
    pos = 0
    while pos < size:
        if pos + 4 > size:
            raise ProtocolError(400, "truncated BYTES element in binary data")
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + n > size:
            raise ProtocolError(400, "truncated BYTES element in binary data")
        out.append(bytes(view[pos : pos + n]))
        pos += n
    return out


def _parameters(owner: dict[str, Any], flag: str | None = None) -> dict[str, Any]:
    """``owner["parameters"]``: an object, or null or absent (none); ``flag`` a boolean in it."""
    params = owner.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(400, "'parameters' must be an object")
    if flag is not None and not isinstance(params.get(flag, False), bool):
        raise ProtocolError(400, f"parameter {flag!r} must be true or false")
    return params


def _parse_outputs(payload: dict[str, Any], offered: Sequence[str]) -> tuple[list[str], set[str]]:
    all_binary = _parameters(payload, "binary_data_output").get("binary_data_output") is True
    requested = payload.get("outputs")
    if requested is None:
        return list(offered), set(offered) if all_binary else set()
    if not isinstance(requested, list):
        raise ProtocolError(400, "'outputs' must be a list")
    names: list[str] = []
    binary: set[str] = set()
    for out in requested:
        name = out.get("name") if isinstance(out, dict) else None
        if not isinstance(name, str) or name not in offered:
            raise ProtocolError(
                400, f"unknown output {name!r}; this model offers {', '.join(offered)}"
            )
        names.append(name)
        if all_binary or _parameters(out, "binary_data").get("binary_data") is True:
            binary.add(name)
    return names, binary


@dataclass
class EncodedResponse:
    body: bytes
    headers: dict[str, str]
    media_type: str


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request: InferRequest,
    scores: np.ndarray,
    labels: list[str],
) -> EncodedResponse:
    """Encode a v2 infer response (JSON, or JSON header plus binary tensor data).

    Args:
        scores: float32 ``(N, C)``. labels: each text's ``label`` element (see the module).
    """
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in request.outputs:
        if name == SCORES_OUTPUT:
            datatype, shape = "FP32", list(scores.shape)
            flat: Any = scores
        else:
            datatype, shape, flat = "BYTES", [len(labels)], labels
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if name in request.binary_outputs:
            blob = (
                np.ascontiguousarray(scores, dtype="<f4").tobytes()
                if datatype == "FP32"
                else b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in labels))
            )
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = flat.ravel().tolist() if datatype == "FP32" else flat
        outputs.append(entry)
    payload: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        payload["id"] = request.id
    payload["outputs"] = outputs
    head = orjson.dumps(payload)
    if not blobs:
        return EncodedResponse(head, {}, "application/json")
    return EncodedResponse(
        head + b"".join(blobs),
        {"Inference-Header-Content-Length": str(len(head))},
        "application/octet-stream",
    )


def model_metadata(name: str, versions: list[int], num_scores: int) -> dict[str, Any]:
    """The v2 model metadata object (``$metadata_model_response``)."""
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": SCORES_OUTPUT, "datatype": "FP32", "shape": [-1, num_scores]},
            {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]},
        ],
    }
