"""Starter configs written by ``modelyard init``: commented YAML, one per task."""

from __future__ import annotations

from modelyard.config import TASKS

_DATA = {
    "binary": ("label", "two classes, e.g. positive/negative"),
    "multiclass": ("label", "one class per row, string or integer"),
    "multilabel": ("labels", 'a JSON list, or one string with labels separated by "|"'),
    "regression": ("score", "a number"),
}
_LOSS = {
    "binary": "auto            # binary cross-entropy; or focal",
    "multiclass": "auto            # cross-entropy; or {name: cross_entropy, label_smoothing: 0.1}",
    "multilabel": "auto            # binary cross-entropy per label",
    "regression": "auto            # mse; or huber",
}
_MONITOR = {
    "binary": "val_accuracy",
    "multiclass": "val_accuracy",
    "multilabel": "val_micro_f1",
    "regression": "val_rmse",
}


def starter_config(task: str, name: str) -> str:
    """A commented starter config for ``task``; every key is a real config key."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    label, label_help = _DATA[task]
    return f"""# modelyard config for a {task} text model. Train it with:
#   modelyard train {name}/config.yaml        (override any key: --set train.epochs=3)
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
  kind: word                    # word (Keras-style) | bpe | wordpiece | pretrained
  num_words: 10000              # word: vocabulary cap, id 0 = padding, id 1 = OOV
  oov_token: "<OOV>"
  max_length: 100               # longer texts are truncated
  padding_side: right
  truncation_side: right

model:
  kind: lstm                    # lstm | gru | cnn | transformer
  embedding_dim: 128
  hidden_size: 64
  num_layers: 1
  bidirectional: false
  dropout: 0.0

train:
  optimizer: {{name: adam, lr: 0.001}}   # sgd | adam | adamw | rmsprop | adagrad
  schedule: {{name: constant}}           # constant | linear | cosine | plateau
  loss: {_LOSS[task]}
  epochs: 10
  batch_size: 32
  monitor: {_MONITOR[task]:<21} # picks the best checkpoint
  early_stopping: {{monitor: {_MONITOR[task]}, patience: 3}}
"""
