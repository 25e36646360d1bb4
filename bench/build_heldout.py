"""Two held-out-style data sets, built offline, for ``bench/small_data.py --heldout``.

The shipped examples were tuned on the shipped data; these two stand in for data a user brings:

- ``debian_sections``: an 11-class topic set of long technical descriptions, the Debian package
  descriptions of this machine's apt lists (``/var/lib/apt/lists/*Packages*``, lz4 or plain,
  else ``/var/lib/dpkg/status``), labelled by their ``Section:``. One package per source package
  and description (the ``-dev``/``-doc`` siblings repeat each other), at most ``--per-class``
  per section, split 80/20 by a hash of the package name (so the split never moves).
- ``py_docstrings`` and ``py_docstrings_b``: two 11-class topic sets of long technical
  descriptions (one to tune on, one to confirm on): the docstrings of the public functions and
  classes of 11 Python packages each (disjoint sets) installed beside modelyard, read with
  ``ast`` (nothing imported), labelled by package, at most ``--per-class`` each, split 80/20 by
  a hash of the qualified name. The stand-ins for the long-text 11-class held-out set: this
  machine's apt lists hold only the one-line package descriptions (``debian_sections`` is that
  short-text variant) and its dpkg status only ~700 installed packages.
- ``movie_binary``: the shipped movie snippets (``data/movie_snippets``, ~10.6k sentences)
  made binary by the sign of their score (``pos`` above 0, ``neg`` below; 0 dropped), their
  train/test split kept; ``movie_binary_dev`` splits its training file in two, to tune on.

    .venv/bin/python bench/build_heldout.py --out /tmp/heldout
    # then: bench/small_data.py --heldout /tmp/heldout/debian_sections/train.csv \\
    #           /tmp/heldout/debian_sections/test.csv
"""

from __future__ import annotations

import argparse
import ast
import csv
import glob
import hashlib
import random
import subprocess
import sysconfig
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "admin", "net", "science", "games", "sound", "graphics", "text", "utils", "web", "math", "mail"
)  # fmt: skip


def package_records() -> str:
    """The text of the apt Packages lists (decompressed), else of the dpkg status file."""
    lists = sorted(glob.glob("/var/lib/apt/lists/*Packages*"))
    parts = []
    for path in lists:
        if path.endswith(".lz4"):
            parts.append(subprocess.run(["lz4cat", path], capture_output=True, check=True).stdout)
        elif not path.endswith((".gz", ".xz", ".diff_Index")):
            parts.append(Path(path).read_bytes())
    if not parts:
        parts.append(Path("/var/lib/dpkg/status").read_bytes())
    return b"\n".join(parts).decode("utf-8", "replace")


def parse(text: str) -> list[dict[str, str]]:
    """Each stanza's Package, Source, Section and Description (short line + long text)."""
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and key:
                body = line.strip()
                fields[key] += " " + ("" if body == "." else body)
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields and "Description" in fields and "Section" in fields:
            out.append(fields)
    return out


def bucket(name: str) -> int:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) % 100


def debian_sections(out: Path, per_class: int) -> None:
    seen_source: set[tuple[str, str]] = set()
    seen_text: set[str] = set()
    rows: dict[str, list[tuple[str, str]]] = {s: [] for s in SECTIONS}
    for rec in sorted(parse(package_records()), key=lambda r: bucket(r["Package"] + "#")):
        section = rec["Section"].split("/")[-1]
        if section not in rows:
            continue
        source = rec.get("Source", rec["Package"]).split()[0]
        text = " ".join(rec["Description"].split())
        if (section, source) in seen_source or text in seen_text:
            continue
        seen_source.add((section, source))
        seen_text.add(text)
        if len(rows[section]) < per_class:
            rows[section].append((rec["Package"], text))
    train, test = [], []
    for section, items in rows.items():
        for name, text in items:
            (test if bucket(name) < 20 else train).append((text, section))
    write(out / "debian_sections", train, test, "label")


PACKAGES = {  # two disjoint sets of 11 packages: one to tune on, one to confirm on
    "py_docstrings": (
        "transformers", "ray", "torch", "sympy", "scipy", "networkx", "numpy", "pygments", "nltk",
        "sqlalchemy", "matplotlib",
    ),
    "py_docstrings_b": (
        "jax", "onnx", "optuna", "fontTools", "pip", "setuptools", "mypy", "huggingface_hub",
        "peft", "opentelemetry", "PIL",
    ),
}  # fmt: skip


def docstrings(package: Path) -> list[tuple[str, str]]:
    """(qualified name, whitespace-collapsed docstring) of each public def/class of a package."""
    out = []
    for path in sorted(package.rglob("*.py")):
        if "test" in path.parts or path.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc and not node.name.startswith("_"):
                    words = doc.split()[:250]
                    out.append((f"{path}:{node.name}", " ".join(words)))
    return out


def py_docstrings(out: Path, per_class: int, name: str) -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    seen: set[str] = set()
    train, test = [], []
    for package in PACKAGES[name]:
        items = [(q, t) for q, t in docstrings(site / package) if len(t.split()) >= 15]
        random.Random(package).shuffle(items)
        kept = 0
        for qualified, text in items:
            if text in seen or kept >= per_class:
                continue
            seen.add(text)
            kept += 1
            (test if bucket(qualified) < 20 else train).append((text, package))
    write(out / name, train, test, "label")


def movie_binary(out: Path) -> None:
    split: dict[str, list[tuple[str, str]]] = {}
    for part in ("train", "test"):
        with (ROOT / "data/movie_snippets" / f"{part}.csv").open(encoding="utf-8") as fh:
            rows = [(r["text"], float(r["score"])) for r in csv.DictReader(fh)]
        split[part] = [(t, "pos" if s > 0 else "neg") for t, s in rows if s != 0]
    write(out / "movie_binary", split["train"], split["test"], "label")
    # the one to tune on: movie_binary's training file split 80/20 by a hash of the text, so the
    # tuning never sees movie_binary's test file
    dev = [(t, y) for t, y in split["train"] if bucket(t) < 20]
    write(out / "movie_binary_dev", [r for r in split["train"] if bucket(r[0]) >= 20], dev, "label")


def write(folder: Path, train: list, test: list, label: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for part, rows in (("train", train), ("test", test)):
        with (folder / f"{part}.csv").open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", label])
            writer.writerows(rows)
    counts = Counter(lab for _, lab in train + test)
    lengths = sorted(len(t.split()) for t, _ in train + test)
    print(
        f"{folder}: {len(train)} train / {len(test)} test, {len(counts)} classes "
        f"{dict(counts.most_common())}, median {lengths[len(lengths) // 2]} words"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/heldout")
    parser.add_argument("--per-class", type=int, default=360)
    args = parser.parse_args()
    debian_sections(Path(args.out), args.per_class)
    for name in PACKAGES:
        py_docstrings(Path(args.out), args.per_class, name)
    movie_binary(Path(args.out))


if __name__ == "__main__":
    main()
