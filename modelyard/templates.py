"""Starter configs written by ``modelyard init``: commented YAML, one per task."""

from __future__ import annotations

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
  loss: {kind.starter.loss_comment}
  epochs: 10
  batch_size: 32
  monitor: {kind.monitor:<21} # picks the best checkpoint
  early_stopping: {{monitor: {kind.monitor}, patience: 3}}
"""
