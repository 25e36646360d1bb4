"""Serving generative models in tests: a toy generator (the engine's interface, each token held
by a gate and a delay, so slots stay busy as long as a test wants) and uvicorn in a thread.

The toy answers ``" w0 w1 ..."``, one word a token, ``max_tokens`` of them (8 by default); it
counts the streams running in it (``active``) and those stopped by their caller (``cut``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from modelyard.runtime.generation_params import ContextLengthError, GenerationParams
from modelyard.runtime.generator import GenerationChunk
from modelyard.runtime.llama_cpp import GeneratedToken

TOY_CONTEXT = 64


class ToyGenerator:
    """What the server asks of a :class:`modelyard.runtime.Generator`, without an engine."""

    task = "generation"

    def __init__(
        self,
        name: str = "toy-llm",
        version: int = 1,
        *,
        slots: int = 2,
        gate: threading.Event | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.name, self.version, self.slots = name, version, slots
        self.labels: list[str] = []
        self.gate, self.delay_s = gate, delay_s
        self.active = 0
        self.cut = 0
        self.lock = threading.Lock()

    def check(self, request: Any, params: GenerationParams) -> bool:
        if params.max_tokens is not None and params.max_tokens > TOY_CONTEXT:
            raise ContextLengthError(f"max_tokens over the toy's {TOY_CONTEXT}", "max_tokens")
        return not isinstance(request, str)

    def run_stream(
        self,
        request: Any,
        params: GenerationParams,
        on_chunk: Callable[[GenerationChunk], bool],
        chat: bool,
    ) -> None:
        with self.lock:
            self.active += 1
        try:
            n = params.max_tokens or 8
            for i in range(n):
                if self.gate is not None:
                    self.gate.wait(30)
                if self.delay_s:
                    time.sleep(self.delay_s)
                token = GeneratedToken(i, f" w{i}".encode(), -0.5)
                if on_chunk(GenerationChunk(text=f" w{i}", tokens=(token,))):
                    with self.lock:
                        self.cut += 1
                    return
            on_chunk(GenerationChunk(finish_reason="length"))
            on_chunk(GenerationChunk(prompt_tokens=3, completion_tokens=n))
        finally:
            with self.lock:
                self.active -= 1

    def warmup(self) -> None:
        pass

    def close(self) -> None:
        pass


def mixed_loader(generators: dict[str, ToyGenerator]) -> Callable[[Path], Any]:
    """A loader: the given toy generators by model name, a toy classifier for any other."""
    from helpers.serving import ToyPredictor

    def load(path: Path) -> Any:
        return generators.get(path.parent.name) or ToyPredictor(path.parent.name, int(path.name))

    return load


class ThreadServer:
    """uvicorn in a thread of this process, on a free port (``with`` starts and stops it)."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise TimeoutError("the server did not start")
            time.sleep(0.02)  # bounded by the deadline above
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
