"""The last leg of `make demo`: serve the model repository, ask it something, shut it down.

Starts `modelyard serve models/` on a free port of 127.0.0.1, waits until /v2/health/ready answers
(bounded, no blind sleeps), sends one request to the simple API and one to the Open Inference
Protocol endpoint, prints both answers, then stops the server gracefully (SIGINT).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(url: str, payload: dict[str, Any] | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_ready(base: str, proc: subprocess.Popen[bytes], deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with status {proc.returncode}")
        try:
            urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)  # polling interval while the server boots, not a wait for a result
    raise SystemExit(f"server not ready after {deadline_s:.0f} s")


def main() -> int:
    repo = sys.argv[1] if len(sys.argv) > 1 else "models"
    model = sys.argv[2] if len(sys.argv) > 2 else "sentiment"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "modelyard", "serve", repo, "--port", str(port)]
    print("$", " ".join(cmd[2:]).replace("-m modelyard", "modelyard"))
    proc = subprocess.Popen(cmd)
    try:
        wait_ready(base, proc)
        texts = ["Absolutely delicious, my kids love these.", "Stale, bland and overpriced."]
        print(f"POST /v1/models/{model}/predict")
        print(json.dumps(call(f"{base}/v1/models/{model}/predict", {"texts": texts}), indent=2))
        infer = {
            "id": "demo-1",
            "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}],
        }
        print(f"POST /v2/models/{model}/infer")
        print(json.dumps(call(f"{base}/v2/models/{model}/infer", infer), indent=2))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
