"""JSON Schemas of what the routes take and answer: data beside the validators of
:mod:`modelyard.serving.protocol`, which the OpenAPI document (:mod:`modelyard.serving.openapi`)
is assembled from.

The request schemas say what the validators accept: ``tests/test_serve_openapi.py`` checks, on
hypothesis-made bodies, that ``parse_predict`` accepts a body exactly when its schema does and
that ``parse_infer`` accepts nothing its schema refuses (and everything it allows whose ``shape``
counts its ``data``: an agreement JSON Schema cannot state). The limits (``serve.max_texts``,
``serve.max_text_chars``) are in the schemas, so the document of a server says its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelyard.serving.protocol import INPUT_NAME, Limits

Schema = dict[str, Any]

ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
STRING_LIST: Schema = {"type": "array", "items": {"type": "string"}}
INT_MAP: Schema = {"type": "object", "additionalProperties": {"type": "integer"}}
# an object of parameters, or null (read as none)
PARAMETERS: Schema = {"type": ["object", "null"]}


def _flag(name: str) -> Schema:
    return {"type": ["object", "null"], "properties": {name: {"type": "boolean"}}}


def text(limits: Limits) -> Schema:
    return {"type": "string", "maxLength": limits.max_text_chars}


# ---------------------------------------------------------------------------------- requests
def predict_request(limits: Limits) -> Schema:
    """``POST /v1/models/{name}/predict``: what :func:`~.protocol.parse_predict` accepts."""
    return {
        "type": "object",
        "required": ["texts"],
        "additionalProperties": False,
        "properties": {
            "texts": {"type": "array", "maxItems": limits.max_texts, "items": text(limits)}
        },
    }


def infer_request(limits: Limits, outputs: Sequence[str]) -> Schema:
    """``POST /v2/models/{name}/infer`` (JSON part): what :func:`~.protocol.parse_infer` accepts.

    With ``binary_data_size`` in the input's parameters the texts are in the binary part after
    the JSON (``Inference-Header-Content-Length`` says where it starts) and ``data`` is ignored.
    """
    data = {
        "type": "array",
        "maxItems": limits.max_texts,
        "items": {
            "anyOf": [
                text(limits),
                {"type": "array", "minItems": 1, "maxItems": 1, "items": text(limits)},
            ]
        },
    }
    binary = {
        "required": ["parameters"],
        "properties": {"parameters": {"type": "object", "required": ["binary_data_size"]}},
    }
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"const": INPUT_NAME},
            "datatype": {"const": "BYTES"},
            "shape": {
                "type": "array",
                "minItems": 1,
                "maxItems": 2,
                "prefixItems": [
                    {"type": "integer", "minimum": 0, "maximum": limits.max_texts},
                    {"const": 1},
                ],
                "description": "[N] or [N, 1]; N is the number of texts",
            },
            "parameters": {
                "type": ["object", "null"],
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            },
        },
        "if": binary,
        "else": {"required": ["data"], "properties": {"data": data}},
    }
    output = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"enum": list(outputs)}, "parameters": _flag("binary_data")},
    }
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": ["string", "null"]},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": tensor},
            "outputs": {"type": ["array", "null"], "items": output},
            "parameters": _flag("binary_data_output"),
        },
    }


# --------------------------------------------------------------------------------- responses
PREDICTION: Schema = {
    "type": "object",
    "required": ["label", "score", "scores"],
    "properties": {
        "label": {"type": ["string", "null"], "description": "null without classes"},
        "score": {"type": "number", "description": "the label's score, or the value"},
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "labels": {**STRING_LIST, "description": "a label-set task's labels over the threshold"},
    },
}
PREDICT_RESPONSE: Schema = {
    "type": "object",
    "required": ["model", "version", "predictions"],
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "predictions": {"type": "array", "items": PREDICTION},
    },
}
_TENSOR_OUT: Schema = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"enum": ["FP32", "BYTES"]},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "array"},
        "parameters": {"type": "object"},
    },
}
INFER_RESPONSE: Schema = {
    "type": "object",
    "required": ["model_name", "model_version", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": _TENSOR_OUT},
    },
}
_STATUS: dict[str, Schema] = {  # what /v1/models and v2 model metadata add about a model
    "aliases": INT_MAP,
    "wanted": {"type": "integer"},
    "failed": {"type": "object", "additionalProperties": {"type": "string"}},
}
LIST_MODELS: Schema = {
    "type": "object",
    "required": ["models"],
    "properties": {
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "served", "aliases", "versions", "available", "ready"],
                "properties": {
                    "name": {"type": "string"},
                    "served": {"type": ["integer", "null"]},
                    **_STATUS,
                    "versions": {"type": "array", "items": {"type": "integer"}},
                    "available": {"type": "array", "items": {"type": "integer"}},
                    "ready": {"type": "boolean"},
                    "task": {"type": ["string", "null"]},
                    "labels": {"type": ["array", "null"], "items": {"type": "string"}},
                },
            },
        }
    },
}
_TENSOR_META: Schema = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
MODEL_METADATA: Schema = {
    "type": "object",
    "required": ["name", "versions", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": STRING_LIST,
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR_META},
        "outputs": {"type": "array", "items": _TENSOR_META},
        "served": {"type": ["string", "null"]},
        **_STATUS,
    },
}
SERVER_METADATA: Schema = {
    "type": "object",
    "required": ["name", "version", "extensions"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "extensions": STRING_LIST,
    },
}
LIVE: Schema = {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}}
READY: Schema = {
    "type": "object",
    "required": ["ready"],
    "properties": {
        "ready": {"type": "boolean"},
        "name": {"type": "string"},
        "error": {"type": "string"},
    },
}
_HISTOGRAM: Schema = {
    "type": ["object", "null"],
    "required": ["le", "counts", "sum"],
    "properties": {
        "le": {"type": "array", "items": {"type": "number"}, "description": "upper bounds"},
        "counts": {
            "type": "array",
            "items": {"type": "integer"},
            "description": "cumulative counts at each bound, then every observation (+Inf)",
        },
        "sum": {"type": "number"},
    },
}
STATS: Schema = {
    "type": "object",
    "required": ["time", "models"],
    "properties": {
        "time": {"type": "number"},
        "models": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["requests", "queue", "latency", "batch"],
                "properties": {
                    "requests": INT_MAP,
                    "queue": {"type": "integer"},
                    "latency": _HISTOGRAM,
                    "batch": _HISTOGRAM,
                },
            },
        },
    },
}
OPENAPI: Schema = {"type": "object", "required": ["openapi", "paths"]}


# ----------------------------------------------------------------------- OpenAI (generative)
# What :func:`~.openai_protocol.parse_request` reads; the sampling values' ranges are checked by
# the runtime. Documented, not yet tested against the parser as the v1/v2 schemas are.
OPENAI_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_SAMPLING: dict[str, Schema] = {
    "model": {"type": "string", "minLength": 1},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"]},
    "max_tokens": {"type": ["integer", "null"]},
    "temperature": {"type": ["number", "null"]},
    "top_p": {"type": ["number", "null"]},
    "seed": {"type": ["integer", "null"]},
    "n": {"const": 1},
    "stop": {"type": ["string", "array", "null"], "items": {"type": "string"}},
    "response_format": {"type": ["object", "null"]},
}
_TEXT_PART: Schema = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
CHAT_REQUEST: Schema = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        **_SAMPLING,
        "max_completion_tokens": {"type": ["integer", "null"]},
        "logprobs": {"type": ["boolean", "null"]},
        "top_logprobs": {"type": ["integer", "null"]},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["system", "user", "assistant"]},
                    "content": {
                        "anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]
                    },
                },
            },
        },
    },
}
COMPLETION_REQUEST: Schema = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        **_SAMPLING,
        "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 5},
        "prompt": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string"}},
            ]
        },
    },
}
COMPLETION_RESPONSE: Schema = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"enum": ["chat.completion", "text_completion"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "usage": {"type": "object"},
    },
}
