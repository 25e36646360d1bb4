"""The page (``GET /``) and the live figures (``GET /v1/stats``) in process, over toy models."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import orjson
import pytest
from helpers.serving import toy_loader, toy_repo
from starlette.testclient import TestClient

from modelyard.config import ServeConfig
from modelyard.serving import create_app
from modelyard.serving.ui import asset, human_size

pytestmark = pytest.mark.unit


def client(repo: Path, **settings: object) -> TestClient:
    app = create_app(str(repo), ServeConfig(**settings), loader=toy_loader, poll=False)  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return toy_repo(tmp_path / "models", {"toy": [1, 2], "other": [3]})


def test_page_lists_models_without_the_script(repo: Path) -> None:
    with client(repo) as c:
        r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    rows = re.findall(r'<tr><th scope="row">(\w+)</th><td>(\w+)</td><td>(\d+)</td>', r.text)
    assert rows == [("other", "multiclass", "3"), ("toy", "multiclass", "2")]
    assert r.text.count('class="status loaded"') == 2
    data = re.search(r'<script type="application/json" id="models-data">(.*?)</script>', r.text)
    assert data is not None
    models = orjson.loads(data.group(1))
    assert [(m["name"], m["answers"], m["labels"]) for m in models][1] == (
        "toy",
        "scores",
        ["neg", "pos", "mixed"],
    )


def test_page_allows_only_its_own_inlined_script_and_style(repo: Path) -> None:
    with client(repo) as c:
        r = c.get("/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    for name, directive in (("page.js", "script-src"), ("page.css", "style-src")):
        assert f"{directive} {asset(name).csp};" in csp
        assert asset(name).text in r.text
    # nothing fetched from outside (the SVG namespace is a name, never fetched)
    text = r.text.replace('"http://www.w3.org/2000/svg"', "")
    assert "http://" not in text and "https://" not in text and "//" + "cdn" not in text
    weight = sum(len(asset(n).text.encode()) for n in ("page.html", "page.js", "page.css"))
    assert weight < 100_000


def test_no_ui_flag_removes_the_page(repo: Path) -> None:
    with client(repo, ui=False) as c:
        assert c.get("/").status_code == 404
        assert c.get("/v1/stats").status_code == 200


def test_stats_count_requests_latency_and_batches_per_model(repo: Path) -> None:
    with client(repo) as c:
        for _ in range(3):
            assert c.post("/v1/models/toy/predict", json={"texts": ["good", "bad"]}).is_success
        assert c.post("/v1/models/toy/predict", json={"texts": "x"}).status_code == 422
        stats = c.get("/v1/stats").json()
    toy = stats["models"]["toy"]
    assert toy["requests"] == {"200": 3}
    assert toy["latency"]["counts"][-1] == 3 and len(toy["latency"]["le"]) == 13
    assert toy["batch"]["counts"][-1] >= 1 and toy["batch"]["sum"] == 6
    assert toy["queue"] == 0
    assert stats["models"][""]["requests"]["422"] == 1  # refused before a model was found


def test_page_asks_a_browser_for_the_key(repo: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("secret\n")
    basic = "Basic " + base64.b64encode(b"anyone:secret").decode()
    with client(repo, api_key_file=str(keys)) as c:
        r = c.get("/")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic ")
        assert c.get("/v1/models").headers["www-authenticate"].startswith("Bearer ")
        assert c.get("/", headers={"Authorization": basic}).status_code == 200
        assert c.get("/v1/stats", headers={"Authorization": basic}).status_code == 200
        wrong = "Basic " + base64.b64encode(b"anyone:nope").decode()
        assert c.get("/", headers={"Authorization": wrong}).status_code == 401


def test_human_size() -> None:
    assert [human_size(n) for n in (None, 12, 2048, 5 * 2**20)] == ["—", "12 B", "2.0 KB", "5.0 MB"]
