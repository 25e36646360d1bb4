"""A GGUF model answering prompts and chats through llama.cpp, in-process, without torch.

llama.cpp comes from ``xllamacpp`` (a prebuilt wheel: llama.cpp's own server, its slots and
continuous batching, called from Python). The decode loop, KV cache and scheduling are the
engine's; this module owns the settings it starts with and the shape of what it answers.

>>> generator = LlamaCppGenerator("model.gguf")
>>> generator.generate([{"role": "user", "content": "What is a cat?"}], max_tokens=16).text
>>> generator.close()
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.errors import BundleError, DataError

Messages = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class GeneratedToken:
    """One step of a generation as the engine reports it.

    ``text_bytes`` may also hold the bytes of earlier tokens that ended mid-character: llama.cpp
    reports such a token together with the one that completes the character, under that one's
    id, so ids can be fewer than ``Generation.completion_tokens``.
    """

    id: int
    text_bytes: bytes
    logprob: float
    top_logprobs: tuple[GeneratedToken, ...] = ()  # the most likely tokens at this step


@dataclass(frozen=True)
class Generation:
    """A finished generation.

    Attributes:
        text: the generated text (the chat template's answer, or the prompt's continuation).
        tokens: the generated tokens with their log-probabilities (:class:`GeneratedToken`).
        finish_reason: ``stop`` (an end-of-generation token) or ``length`` (``max_tokens``).
        prompt_tokens: how many tokens the prompt (after the chat template) took.
        completion_tokens: how many tokens were generated.
    """

    text: str
    tokens: tuple[GeneratedToken, ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def token_ids(self) -> list[int]:
        """The generated ids, as far as the engine reports them (see :class:`GeneratedToken`)."""
        return [token.id for token in self.tokens]


class LlamaCppGenerator:
    """A GGUF file loaded into llama.cpp (through ``xllamacpp``), answering one request at a
    time from each caller and many at once across ``slots``.

    Args:
        model_path: the ``.gguf`` file.
        context_length: tokens of context per slot (prompt and answer together); default:
            the model's own (its ``context_length`` key).
        slots: requests decoded together (llama.cpp's parallel slots, continuous batching).
        threads: CPU threads for decoding and for prompt processing.
        cache_prompt: reuse a slot's cached prompt prefix. Off by default: a reused cache
            changes the numerics, so the same greedy request can answer differently.
        prompt_cache_mib: host memory for prompts whose slot has moved on (llama.cpp's
            ``cache_ram_mib``), so a prefix many requests share is prefilled once, not once per
            slot; 0: none.

    Raises:
        BundleError: ``xllamacpp`` is not installed, the file is missing, or llama.cpp
            cannot load it.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        context_length: int | None = None,
        slots: int = 1,
        threads: int | None = None,
        cache_prompt: bool = False,
        prompt_cache_mib: int = 0,
    ) -> None:
        try:
            import xllamacpp
        except ImportError as exc:
            raise BundleError(
                "GGUF models run on llama.cpp through xllamacpp: pip install 'modelyard[serve-llm]'"
            ) from exc
        path = Path(model_path)
        if not path.is_file():
            raise BundleError(f"{path}: no such GGUF file")
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = slots
        # n_ctx is shared by the slots: each gets context_length; 0 means the model's own
        params.n_ctx = context_length * slots if context_length else 0
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads or (
            os.cpu_count() or 1
        )
        params.warmup = False
        # prompts kept in host memory once their slot moves on, restored into any slot whose
        # request shares their prefix (a system prompt every chat repeats); 0: the slots' own only
        params.cache_ram_mib = prompt_cache_mib
        params.verbosity = -1  # llama.cpp logs errors only
        # xllamacpp also listens on a random 127.0.0.1 port (llama.cpp's own HTTP server); a key
        # no one knows closes it to other local processes, calls in-process never ask for one
        self._key = secrets.token_urlsafe(32)
        params.api_keys = [self._key]
        self.path = path
        self.cache_prompt = cache_prompt
        self.slots = slots
        self.context_length = context_length
        try:
            self.engine: Any = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise BundleError(f"{path}: llama.cpp could not load it ({exc})") from exc

    def generate(self, request: str | Messages, *, max_tokens: int = 64) -> Generation:
        """Greedy generation: a prompt's continuation, or the answer to a chat (the model's
        chat template applied by llama.cpp).

        Args:
            request: a prompt, or a list of ``{"role": ..., "content": ...}`` messages.
            max_tokens: the most tokens to generate.

        Raises:
            DataError: llama.cpp refused the request (e.g. longer than the context).
        """
        body: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "cache_prompt": self.cache_prompt,
        }
        chat = not isinstance(request, str)
        if isinstance(request, str):
            # OpenAI's completions take a count of top log-probabilities, chats a flag
            body |= {"prompt": request, "logprobs": 1}
        else:
            body |= {"messages": list(request), "logprobs": True}
        return parse_answer(self.answer(body, chat=chat), chat=chat)

    def answer(self, body: dict[str, Any], *, chat: bool) -> dict[str, Any]:
        """One OpenAI-shaped request as llama.cpp takes it, answered whole (its answer or its
        error shape, ``{"error": {...}}``).

        Raises:
            DataError: llama.cpp refused the request before answering (e.g. a message without
                content).
        """
        engine = self._engine()
        try:
            if chat:
                answer: dict[str, Any] = engine.handle_chat_completions(body)
            else:
                answer = engine.handle_completions(body)
        except (ValueError, RuntimeError) as exc:
            raise DataError(f"llama.cpp refused the request: {exc}") from exc
        return answer

    def stream(
        self, body: dict[str, Any], on_chunk: Callable[[dict[str, Any]], bool], *, chat: bool
    ) -> None:
        """Stream one request: ``on_chunk`` gets each OpenAI chunk (or llama.cpp's error shape)
        in this thread as llama.cpp makes it; returning True stops the generation and frees its
        slot. Returns when the stream ends or is stopped.

        Raises:
            DataError: llama.cpp refused the request before streaming.
        """
        engine = self._engine()
        body = {**body, "stream": True}
        try:
            if chat:
                engine.handle_chat_completions(body, on_chunk)
            else:
                engine.handle_completions(body, on_chunk)
        except (ValueError, RuntimeError) as exc:
            raise DataError(f"llama.cpp refused the request: {exc}") from exc

    def count_tokens(self, request: str | Messages) -> int:
        """How many tokens a prompt (or a chat, after the chat template) takes, as llama.cpp
        tokenizes it: through its own HTTP server on 127.0.0.1, which holds the tokenizer and
        the template (about 0.5 ms a prompt and 1.8 ms a chat on 2 cores).

        Raises:
            DataError: llama.cpp cannot render or tokenize it.
        """
        if isinstance(request, str):
            prompt = request
        else:
            prompt = self._local("/apply-template", {"messages": list(request)})["prompt"]
        body = {
            "content": prompt,
            "add_special": True,
            "parse_special": not isinstance(request, str),
        }
        return len(self._local("/tokenize", body)["tokens"])

    def _local(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self._engine().listening_address + path,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except (OSError, ValueError) as exc:  # HTTPError is an OSError
            raise DataError(f"llama.cpp cannot read the request ({path}): {exc}") from exc
        return answer

    def _engine(self) -> Any:
        if self.engine is None:
            raise BundleError(f"{self.path}: the generator is closed")
        return self.engine

    def close(self) -> None:
        """Stop the engine and free the model (the generator answers no more)."""
        self.engine = None

    def __enter__(self) -> LlamaCppGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_answer(answer: Mapping[str, Any], *, chat: bool) -> Generation:
    """An OpenAI-shaped answer from llama.cpp as a :class:`Generation`.

    Raises:
        DataError: the answer is llama.cpp's error shape.
    """
    if "error" in answer or "choices" not in answer:
        error = answer.get("error", answer)
        message = error.get("message", error) if isinstance(error, Mapping) else error
        raise DataError(f"llama.cpp refused the request: {message}")
    choice = answer["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    tokens = parse_tokens(choice)
    usage = answer.get("usage", {})
    return Generation(
        text=text or "",
        tokens=tokens,
        finish_reason=str(choice.get("finish_reason")),
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
    )


def parse_tokens(choice: Mapping[str, Any]) -> tuple[GeneratedToken, ...]:
    """The tokens of one answer's (or stream chunk's) choice with their log-probabilities."""
    steps = (choice.get("logprobs") or {}).get("content") or []
    return tuple(
        GeneratedToken(
            int(step["id"]),
            bytes(step["bytes"]),
            float(step["logprob"]),
            tuple(
                GeneratedToken(int(top["id"]), bytes(top["bytes"]), float(top["logprob"]))
                for top in step.get("top_logprobs") or ()
            ),
        )
        for step in steps
    )
