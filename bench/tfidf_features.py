"""Which features TF-IDF + logistic regression draws on: each feature set alone, one data set.

The ablation behind ``linear_ngrams`` (docs/benchmarks.md, "Hashed word and character
n-grams"): scikit-learn's TF-IDF (sublinear tf) + ``LogisticRegression(C=10)``, fitted on the
whole training file, scored on the test file, for words, character n-grams (within words, and
spanning them), both, and both without IDF. scikit-learn is a bench-only dependency.

    .venv/bin/python bench/tfidf_features.py /tmp/heldout/movie_binary_dev/train.csv \\
        /tmp/heldout/movie_binary_dev/test.csv
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

Vectorizers = Callable[[], list[TfidfVectorizer]]


def words() -> TfidfVectorizer:
    return TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)


def chars_in_words() -> TfidfVectorizer:
    return TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)


FEATURE_SETS: dict[str, Vectorizers] = {
    "word 1-2 + char_wb 2-5 (the baseline)": lambda: [words(), chars_in_words()],
    "word 1-2": lambda: [words()],
    "char_wb 2-5": lambda: [chars_in_words()],
    "char 1-5 (spanning words)": lambda: [
        TfidfVectorizer(analyzer="char", ngram_range=(1, 5), sublinear_tf=True)
    ],
    "both, binary counts, no IDF": lambda: [
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), use_idf=False, binary=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), use_idf=False, binary=True),
    ],
}


def read(path: str, text: str, label: str) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r[text] for r in rows], [r[label] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train")
    parser.add_argument("test")
    parser.add_argument("--text", default="text")
    parser.add_argument("--label", default="label")
    args = parser.parse_args()
    train_x, train_y = read(args.train, args.text, args.label)
    test_x, test_y = read(args.test, args.text, args.label)
    for name, make in FEATURE_SETS.items():
        vecs = make()
        x_train = sp.hstack([v.fit_transform(train_x) for v in vecs]).tocsr()
        x_test = sp.hstack([v.transform(test_x) for v in vecs]).tocsr()
        clf = LogisticRegression(C=10, max_iter=2000).fit(x_train, train_y)
        accuracy = float(np.mean(clf.predict(x_test) == np.asarray(test_y)))
        print(f"{name:40s} {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
