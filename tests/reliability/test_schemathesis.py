"""schemathesis over the server's own ``/openapi.json``: a real server on 127.0.0.1, requests made
from the document's schemas (examples, boundary cases, fuzzing, stateful sequences), bounded in
examples and time. What must hold: no 5xx, every status documented, every response of its
documented content type and matching its schema.

schemathesis' acceptance checks are left out, each for a difference that is no bug:
``negative_data_rejection`` counts the 413 for more texts than ``serve.max_texts`` as accepting
(it wants 400/422), and ``positive_data_acceptance`` sends a v2 ``shape`` that does not count its
``data``, which JSON Schema cannot state. ``tests/test_serve_openapi.py`` checks both directions
between the validators and the schemas, those two rules apart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.serving import ServerProcess

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]
MAX_EXAMPLES = 15
MAX_TIME_S = 40


def test_schemathesis_finds_no_5xx_and_no_schema_mismatch(
    server: ServerProcess, tmp_path: Path, reliability
) -> None:
    cli = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    assert cli is not None, "schemathesis is in the dev extra"
    t0 = time.monotonic()
    junit = tmp_path / "schemathesis.xml"
    argv = [cli, "run", server.url + "/openapi.json", "--checks", ",".join(CHECKS)]
    argv += ["--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_TIME_S), "--seed", "7"]
    argv += ["--no-color", "--warnings", "off", "--report", "junit"]
    argv += ["--report-junit-path", str(junit), "--request-timeout", "10"]
    done = subprocess.run(
        argv,
        cwd=tmp_path,  # its own files (.schemathesis/) stay out of the checkout
        capture_output=True,
        text=True,
        timeout=MAX_TIME_S + 60,
    )
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert server.proc.poll() is None
    summary = [ln.strip() for ln in done.stdout.splitlines() if "generated" in ln]
    reliability.record(
        "input",
        "schemathesis (4.32) over /openapi.json: examples, boundary and fuzzed requests, "
        "stateful sequences",
        sum(int(w) for ln in summary for w in ln.split()[:1] if w.isdigit()),
        f"no 5xx, statuses, content types and bodies as documented ({elapsed:.0f} s)",
    )
