"""The server's page: its weight and its first paint in Debian's headless Chromium.

    .venv/bin/python bench/serve_page.py [--loads 10]

Serves a tiny generated bundle on 127.0.0.1, opens ``/`` ``--loads`` times in a fresh headless
Chromium (/usr/bin/chromium, /usr/bin/chromedriver) and prints the page's weight (HTML with its
inlined style and script: the one response) and the first contentful paint from the browser's
performance timing: the first load's, then the median and max of the others.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.serving import ServerProcess, build_real_bundle
from test_serve_browser import CHROMIUM, DRIVER, FLAGS, first_paint_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=10)
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as tmp:
        build_real_bundle(Path(tmp) / "models", "tiny")
        server = ServerProcess(Path(tmp) / "models")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in [*FLAGS, f"--user-data-dir={tmp}/profile"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
        try:
            weight = len(httpx.get(server.url + "/").content)
            paints = []
            for _ in range(args.loads):
                driver.get(server.url + "/")
                paints.append(first_paint_ms(driver))
        finally:
            driver.quit()
            server.stop()
    print(f"page weight (HTML + inlined CSS + JS): {weight} bytes ({weight / 1024:.1f} KB)")
    warm = paints[1:]  # the first load also starts the browser's renderer
    print(f"first contentful paint, first load: {paints[0]:.0f} ms")
    print(
        f"first contentful paint over {len(warm)} more loads: median "
        f"{statistics.median(warm):.0f} ms, max {max(warm):.0f} ms"
    )


if __name__ == "__main__":
    main()
