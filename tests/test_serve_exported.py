"""Real exported models (trained here, exported with torch.onnx) through a real server process:
a text's answer does not depend on the texts it was batched with, and a multilabel model's v2
``label`` is its thresholded label set.

Two kinds keep it quick (each costs a training run and an export); ``test_export_onnx`` covers
every kind's batch invariance at the runtime.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from helpers.serving import ServerProcess
from test_export_onnx import BATCH_ATOL, LONG, Runs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAIRS = [("lstm", "binary"), ("transformer", "multilabel")]
TEXTS = ["good film", "awful", "the plot was good and the actor awful", "", LONG, "fun " * 30]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    runs = Runs(tmp_path_factory.mktemp("exported"))
    for kind, task in PAIRS:
        runs.get(kind, task)
    # batches collect for a while, so concurrent requests share them
    proc = ServerProcess(runs.root / "models", "--max-delay-ms", "20", "--max-batch-size", "32")
    yield proc
    assert proc.stop() == 0


def _scores(r: httpx.Response) -> list[list[float]]:
    assert r.status_code == 200, r.text
    return [list(p["scores"].values()) for p in r.json()["predictions"]]


@pytest.mark.parametrize(("kind", "task"), PAIRS)
def test_answers_do_not_depend_on_batch_mates(server: ServerProcess, kind: str, task: str) -> None:
    path = f"/v1/models/{kind}-{task}/predict"

    async def main() -> tuple[list[list[float]], list[list[list[float]]]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            alone = [_scores(await c.post(path, json={"texts": [t]}))[0] for t in TEXTS]
            crowd = await asyncio.gather(
                *(c.post(path, json={"texts": [t, LONG, *TEXTS[:i]]}) for i, t in enumerate(TEXTS))
            )
        return alone, [_scores(r) for r in crowd]

    alone, crowd = asyncio.run(main())
    for i, rows in enumerate(crowd):
        np.testing.assert_allclose(rows[0], alone[i], atol=BATCH_ATOL)
        np.testing.assert_allclose(rows[1], alone[TEXTS.index(LONG)], atol=BATCH_ATOL)
    metrics = httpx.get(server.url + "/metrics").text
    model = f'model="{kind}-{task}"'
    single = re.search(r'modelyard_batch_size_bucket\{le="1.0",' + model + r"\} (\S+)", metrics)
    total = re.search(r"modelyard_batch_size_count\{" + model + r"\} (\S+)", metrics)
    assert single and total and float(single[1]) < float(total[1])  # some batches held several


def test_multilabel_v2_label_is_the_label_set(server: ServerProcess) -> None:
    name = "transformer-multilabel"
    with httpx.Client(base_url=server.url, timeout=30) as c:
        v1 = c.post(f"/v1/models/{name}/predict", json={"texts": TEXTS}).json()["predictions"]
        req = {
            "inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}]
        }
        outputs = c.post(f"/v2/models/{name}/infer", json=req).json()["outputs"]
    (label,) = [o for o in outputs if o["name"] == "label"]
    assert [json.loads(x) for x in label["data"]] == [p["labels"] for p in v1]
