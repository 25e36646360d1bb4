"""Synthetic labelled text: a word decides the label, filler words around it."""

from __future__ import annotations

import csv
import random
from pathlib import Path

# the export and LiteRT tests' vocabulary
GOOD = ["good", "great", "lovely", "fun", "best"]


BAD = ["bad", "awful", "boring", "dull", "worst"]


FILLER = ["the", "film", "was", "plot", "actor", "and", "it", "music", "cast"]

# the training tests' filler, around one "good" or "bad"
SENTENCE_FILLER = [
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "actor",
    "story",
    "scene",
    "was",
    "is",
    "really",
    "quite",
    "very",
]


def write_synthetic(
    directory: Path,
    n_train: int = 64,
    n_test: int = 24,
    *,
    filler: list[str] = SENTENCE_FILLER,
    words: tuple[int, int] = (2, 10),
) -> dict[str, str]:
    """Binary CSVs whose label is whether the text says "good" or "bad", among filler words."""
    rng = random.Random(0)
    paths = {}
    for split, n in (("train", n_train), ("test", n_test)):
        path = directory / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            for i in range(n):
                label = "pos" if i % 2 else "neg"
                text = [rng.choice(filler) for _ in range(rng.randint(*words))]
                text.insert(rng.randint(0, len(text)), "good" if label == "pos" else "bad")
                writer.writerow([" ".join(text), label])
        paths[split] = str(path)
    return paths


def write_rows(path: Path, rows: list[tuple[str, str]]) -> None:
    """A ``text,label`` CSV of ``rows`` (quoted as the csv module does)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
