"""Starter configs written by ``modelyard init``: commented YAML, one per task."""

from __future__ import annotations

from modelyard.config import MODEL_KINDS
from modelyard.tasks import get_task


def starter_config(task: str, name: str) -> str:
    """A commented starter config for ``task``; every key is a real config key.

    Raises:
        ValueError: unknown task; the message lists the registered ones.
    """
    kind = get_task(task)
    if kind.starter.template is not None:
        return kind.starter.template.format(name=name)
    label, label_help = kind.starter.label_column, kind.starter.label_help
    kinds = " | ".join(MODEL_KINDS)
    return f"""# modelyard config for a {task} text model. Train it with:
#   modelyard train {name}/config.yaml        (override any key: --set train.epochs=3)
# or let modelyard try families and settings on your data, within a time budget:
#   modelyard tune {name}/config.yaml --budget 20m
# The family and settings below measured best across every data set we hold (docs/benchmarks.md,
# "Hashed word and character n-grams"): a linear model on hashed words, word bigrams and
# character 2- to 5-grams, within 1.3 points of TF-IDF + logistic regression on each of seven
# sets (above it on two), where the runner-up, a bag of subwords, trails by up to 2.9.
name: {name}
task: {task}
seed: 13

data:
  train: {name}/train.csv       # CSV, TSV, JSONL or Parquet
  test: {name}/test.csv         # optional: scored after training
  # validation: {name}/val.csv  # optional; otherwise a seeded, stratified split of train
  validation_split: 0.1
  text: text                    # the column holding the text
  label: {label:<21} # {label_help}
  skip_bad_rows: false          # true: skip rows with empty text or bad labels, and report them
  clean: {{unicode: none, lowercase: false, strip_html: false}}

tokenizer:
  kind: char                    # word (Keras-style) | bpe | wordpiece | char | pretrained
  max_length: 1024              # characters; a longer text keeps its beginning
  padding_side: right
  truncation_side: right

model:
  # {kinds}
  # (pretrained: a local Hugging Face encoder, set model.path; causal_lm: task generation)
  # (bag_of_ngrams on a bpe tokenizer, examples/bag_of_ngrams.yaml, is the runner-up: +0.2 on
  # long technical texts, -2.9 on short sentences against TF-IDF + LR)
  kind: linear_ngrams
  char_ngrams: [2, 5]           # character n-grams (they may span a space)
  word_ngrams: 2                # words + word bigrams, found between spaces inside the graph
  buckets: 262144               # hashed weight rows shared by every feature

train:
  optimizer: {{name: adam, lr: 0.01}}    # sgd | adam | adamw | rmsprop | adagrad
  schedule: {{name: constant}}           # constant | linear | cosine | plateau
  loss: {kind.starter.loss_comment}
  epochs: 30                    # a ceiling: early stopping ends the run at its plateau
  batch_size: 32
  monitor: {kind.monitor:<21} # picks the best checkpoint, the one scored and exported
  # stop on the loss, which keeps improving after the accuracy of a small validation split
  # first stalls (py_docstrings: 0.853 stopping on val_accuracy, 0.876 on val_loss)
  early_stopping: {{monitor: val_loss, patience: 3}}   # null trains every epoch
"""
