"""What a generative bundle's manifest says about how its model answers (``generation``).

A foundation beside :mod:`modelyard.bundle`, which holds it in :class:`~modelyard.bundle.Manifest`;
the runtime and the server read it to start the engine and to check requests.
"""

from __future__ import annotations

from dataclasses import dataclass


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationSpec:
    """What a generative bundle (task ``generation``) says about how it answers.

    Attributes:
        engine: the engine that runs ``model_file`` (``llama.cpp``).
        context_length: tokens of context per request, prompt and answer together.
        chat_template: the Jinja chat template the prompt of a chat is rendered with (also in
            the model file's metadata); ``None``: the model takes plain prompts only.
        stop_tokens: the tokens that end an answer (end of turn, end of text).
        base_model: what the run fine-tuned (a directory, GGUF file or ``package:NAME``).
        licence: the base model's licence as its source states it (``None``: not stated).
        quantization: how the weights are stored (``f32``, ``f16``, ``q8_0``, ``q4_0``).
    """

    engine: str
    context_length: int
    chat_template: str | None
    stop_tokens: list[str]
    base_model: str
    licence: str | None
    quantization: str

    def problems(self) -> list[str]:
        """What is wrong with the values (a manifest edited by hand)."""
        problems = []
        if not _is_int(self.context_length) or self.context_length < 1:
            problems.append(f"context_length must be a positive integer: {self.context_length!r}")
        if not isinstance(self.stop_tokens, list) or not all(
            isinstance(t, str) for t in self.stop_tokens
        ):
            problems.append("stop_tokens must be a list of strings")
        if self.chat_template is not None and not isinstance(self.chat_template, str):
            problems.append("chat_template must be a string or null")
        return problems
