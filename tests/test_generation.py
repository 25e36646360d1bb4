"""The generative task: a causal LM fine-tuned on conversations through the one loop.

Unit: the batch function's learnt positions, logits for those positions alone, adapter-only
checkpoints, the per-token validation loss, answer scoring. Integration: a tiny random llama
trained, scored beside its base model and resumed after kill -9. CLI: ``train``, ``generate``,
``evaluate`` as a user types them. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("rouge_score")

from helpers.processes import train_until_killed  # noqa: E402
from helpers.tiny_llm import tiny_llama_dir, tiny_tokenizer  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from modelyard.cli import main  # noqa: E402
from modelyard.config import CausalLMConfig, dump_config, load_config  # noqa: E402
from modelyard.errors import ConfigError, DataError  # noqa: E402
from modelyard.models.causal_lm import causal_lm_loss, load_causal_lm  # noqa: E402
from modelyard.training import train  # noqa: E402
from modelyard.training.checkpoint import load_state  # noqa: E402
from modelyard.training.collate import ChatBatches, ChatSplit  # noqa: E402
from modelyard.training.generate import score_answers  # noqa: E402
from modelyard.training.generative import setup_generative  # noqa: E402
from modelyard.training.recipe import close  # noqa: E402

PETS = [
    ("cat", "A small pet."),
    ("dog", "A loyal pet that barks."),
    ("cow", "A farm animal."),
    ("bird", "It flies."),
]


def _chat(question: str, answer: str | None) -> dict[str, Any]:
    turns = [{"role": "user", "content": f"What is a {question}?"}]
    if answer is not None:
        turns.append({"role": "assistant", "content": answer})
    return {"messages": turns}


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    return tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


def _raw(tmp_path: Path, model_dir: Path, **train: Any) -> dict[str, Any]:
    records = [_chat(*PETS[i % 4]) for i in range(40)]
    _write_jsonl(tmp_path / "train.jsonl", records)
    _write_jsonl(tmp_path / "test.jsonl", [_chat(q, a) for q, a in PETS])
    return {
        "name": "gen",
        "task": "generation",
        "seed": 3,
        "output_dir": str(tmp_path / "runs"),
        "data": {
            "train": str(tmp_path / "train.jsonl"),
            "test": str(tmp_path / "test.jsonl"),
            "validation_split": 0.2,
        },
        "tokenizer": {"max_length": 64},
        "model": {"kind": "causal_lm", "path": str(model_dir), "lora": {"r": 4, "alpha": 8}},
        "train": {
            "optimizer": {"name": "adamw", "lr": 0.02},
            "epochs": 3,
            "batch_size": 8,
            "progress": False,
            **train,
        },
    }


# ---------------------------------------------------------------------------------- unit
@pytest.mark.unit
def test_batches_select_the_positions_whose_next_token_is_learnt() -> None:
    ignore = -100
    split = ChatSplit(
        seqs=[[5, 6, 7, 8], [9, 10]],
        labels=[[ignore, ignore, 7, 8], [ignore, 10]],
        lengths=np.array([4, 2]),
        source="x",
    )
    batch = ChatBatches(pad_id=0, device=torch.device("cpu"))(split, np.array([0, 1]))
    ids, mask, select = batch.inputs
    assert ids.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # position t predicts token t + 1: row 0 learns 7 (from 6) and 8 (from 7), row 1 learns 10
    assert select.tolist() == [[False, True, True, False], [True, False, False, False]]
    assert batch.targets.tolist() == [7, 8, 10]


@pytest.mark.unit
def test_logits_of_the_selected_positions_equal_the_full_forward(model_dir: Path) -> None:
    model = load_causal_lm(CausalLMConfig(kind="causal_lm", path=str(model_dir))).model.eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    select = torch.tensor([[0, 1, 0, 1, 0], [1, 0, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        full = model(ids, mask)  # (B, T, V)
        picked = model(ids, mask, select)  # (N, V)
    assert picked.shape == (4, full.shape[-1])
    torch.testing.assert_close(picked, full[select], atol=1e-5, rtol=1e-5)


@pytest.mark.unit
def test_checkpoints_hold_the_adapters_alone_and_refuse_another_model(model_dir: Path) -> None:
    cfg = CausalLMConfig(kind="causal_lm", path=str(model_dir), lora={"r": 2, "alpha": 4})
    model = load_causal_lm(cfg).model
    trained = model.trained_state_dict()
    assert trained and all("lora_" in name for name in trained)
    assert sum(p.numel() for p in trained.values()) < sum(p.numel() for p in model.parameters())
    other = load_causal_lm(cfg.model_copy(update={"lora": None})).model
    with pytest.raises(ValueError, match="does not fit"):
        other.load_trained_state(trained)


@pytest.mark.unit
def test_score_answers_rouge_l_and_exact_match() -> None:
    scores = score_answers(
        ["A small pet.", "a farm  animal", "nothing"],
        ["a small pet", "A farm animal.", "It flies."],
    )
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["rouge_l"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        score_answers(["a"], [])


# ---------------------------------------------------------------------------- integration
@pytest.mark.integration
def test_validation_loss_is_the_mean_over_every_learnt_token(
    tmp_path: Path, model_dir: Path
) -> None:
    config = load_config(_raw(tmp_path, model_dir, batch_size=3))
    session = setup_generative(config)
    try:
        record = session.validator(session) if session.validator else {}
        split = session.data.validation
        model = session.trainer.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for ids, labels in zip(split.seqs, split.labels, strict=True):
                logits = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
                n = sum(1 for y in labels[1:] if y != -100)
                total += float(causal_lm_loss(logits, torch.tensor([labels]))) * n
                count += n
        assert record["val_loss"] == pytest.approx(total / count, rel=1e-4)
        assert record["val_perplexity"] == pytest.approx(np.exp(total / count), rel=1e-4)
    finally:
        close(session)


@pytest.mark.integration
def test_generation_run_trains_scores_base_and_fine_tuned_and_reports(
    tmp_path: Path, model_dir: Path
) -> None:
    run = train(load_config(_raw(tmp_path, model_dir)))
    assert [r["epoch"] for r in run.history] == [1, 2, 3]
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"]
    assert all("val_perplexity" in r for r in run.history)
    best = load_file(str(run.paths.weights("best")))
    assert best and all("lora_" in k for k in best)  # the adapters, not the base weights
    evaluation = json.loads((run.paths.eval_dir / "metrics.json").read_text())
    assert evaluation["split"] == "test" and evaluation["num_examples"] == 4
    assert (
        set(evaluation["metrics"])
        == set(evaluation["base_metrics"])
        == {
            "rouge_l",
            "exact_match",
        }
    )
    assert run.test_metrics == evaluation["metrics"]
    samples = [
        json.loads(s) for s in (run.paths.eval_dir / "samples.jsonl").read_text().splitlines()
    ]
    assert [s["reference"] for s in samples] == [a for _, a in PETS]
    assert all({"prompt", "base", "fine_tuned"} <= set(s) for s in samples)
    info = json.loads(run.paths.run_json.read_text())
    assert info["adapters"] is True and info["max_new_tokens"] >= 16


@pytest.mark.integration
def test_full_fine_tuning_trains_every_weight(tmp_path: Path, model_dir: Path) -> None:
    raw = _raw(tmp_path, model_dir, epochs=1)
    raw["model"]["lora"] = None
    raw["data"].pop("test")
    run = train(load_config(raw))
    best = load_file(str(run.paths.weights("best")))
    assert any("embed_tokens" in k for k in best) and not any("lora_" in k for k in best)
    assert run.test_metrics is None


@pytest.mark.integration
def test_bad_generative_input_is_refused_before_the_run_directory_is_touched(
    tmp_path: Path, model_dir: Path
) -> None:
    raw = _raw(tmp_path, model_dir)
    no_answer = _write_jsonl(
        tmp_path / "no_answer.jsonl", [_chat("cat", "A pet."), _chat("dog", None)]
    )
    with pytest.raises(DataError, match=r"no_answer\.jsonl:2: .*assistant"):
        train(load_config({**raw, "data": {**raw["data"], "train": str(no_answer)}}))
    role = tmp_path / "role.jsonl"
    role.write_text(
        json.dumps(
            {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}
        )
        + "\n"
    )
    with pytest.raises(DataError, match=r"role\.jsonl:1: .*tool"):
        train(load_config({**raw, "data": {**raw["data"], "train": str(role)}}))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "What is a cat?", "completion": ""}) + "\n")
    with pytest.raises(DataError, match=r"empty\.jsonl:1: .*completion"):
        train(load_config({**raw, "data": {**raw["data"], "train": str(empty)}}))
    long = _write_jsonl(tmp_path / "long.jsonl", [_chat("cat " * 80, "A pet.")] * 4)
    with pytest.raises(DataError, match=r"long\.jsonl:\d+: prompt is \d+ tokens"):
        train(load_config({**raw, "data": {**raw["data"], "train": str(long)}}))
    no_reference = _write_jsonl(tmp_path / "noref.jsonl", [_chat("cat", None)])
    with pytest.raises(DataError, match=r"noref\.jsonl:1: no reference"):
        train(load_config({**raw, "data": {**raw["data"], "test": str(no_reference)}}))
    with pytest.raises(ConfigError, match="positions"):
        train(load_config({**raw, "tokenizer": {"max_length": 4096}}))
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_killed_generative_run_resumes_to_identical_adapters(
    tmp_path: Path, model_dir: Path
) -> None:
    raw = _raw(tmp_path, model_dir, checkpoint_every_steps=2)
    raw["name"] = "crashed"
    raw["model"]["lora"]["dropout"] = 0.2  # the RNG state matters
    raw["data"].pop("test")
    crashed = load_config(raw)
    reference = crashed.model_copy(update={"name": "reference"})
    config_file = tmp_path / "crashed.yaml"
    config_file.write_text(dump_config(crashed))
    train_until_killed(config_file, tmp_path)
    state = load_state(crashed.run_dir / "checkpoints" / "last.state.pt")
    assert state["progress"]["epoch"] == 1 and state["progress"]["step_in_epoch"] > 0
    resumed = train(load_config(crashed.run_dir / "config.yaml"), resume=True)
    uninterrupted = train(reference)
    for which in ("last", "best"):
        a = load_file(str(resumed.paths.weights(which)))
        b = load_file(str(uninterrupted.paths.weights(which)))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    strip = ("epoch_time_s", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in resumed.history] == [
        {k: v for k, v in r.items() if k not in strip} for r in uninterrupted.history
    ]


# ----------------------------------------------------------------------------------- CLI
@pytest.mark.integration
def test_cli_trains_generates_and_evaluates_a_generative_run(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = _raw(tmp_path, model_dir, epochs=1)
    config_file = tmp_path / "gen.yaml"
    config_file.write_text(dump_config(load_config(raw)))
    assert main(["train", str(config_file)]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "gen"
    assert f"run: {run_dir}" in out and "report: " in out
    page = (run_dir / "report.html").read_text()
    assert "base, before fine-tuning" in page and "A loyal pet that barks." in page

    # a question alone, and one with its reference answer (ignored: the user turn is answered)
    inputs = _write_jsonl(tmp_path / "ask.jsonl", [_chat("cat", None), _chat("dog", "ref")])
    answers = tmp_path / "answers.jsonl"
    args = ["generate", str(run_dir), "--input", str(inputs), "--output", str(answers)]
    assert main(args) == 0
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2]
    assert all(isinstance(r["generated"], str) for r in records)
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", "What is a cat?"]) == 0
    assert capsys.readouterr().out.strip() == records[0]["generated"]  # greedy: the same answer

    assert main(["evaluate", str(run_dir), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"fine-tuned", "base"}
    assert main(["generate", str(run_dir)]) == 2
    assert "one of the two" in capsys.readouterr().err

    # predict is for runs that score texts
    (tmp_path / "texts.txt").write_text("What is a cat?\n")
    predict = ["predict", str(run_dir), "--input", str(tmp_path / "texts.txt"), "--output", "-"]
    assert main(predict) == 2
    assert "modelyard generate" in capsys.readouterr().err

    # the classifiers' variants say where a generation run goes instead of failing on the way
    # (its GGUF variants, `modelyard run` on it and `export --format gguf`: test_gguf_bundle.py)
    assert main(["compress", str(run_dir), "--quantize", "int8-dynamic"]) == 2
    err = capsys.readouterr().err
    assert "compress.gguf (f16, q8_0, q4_0)" in err and "--merged DIR" in err
    assert main(["run", str(config_file)]) == 2
    assert "already holds a trained run" in capsys.readouterr().err

    # export: the merged model as a Hugging Face directory, answering as the run does
    assert main(["export", str(run_dir), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "export it as gguf" in err and "--merged DIR" in err
    merged = tmp_path / "merged"
    assert main(["export", str(run_dir), "--merged", str(merged)]) == 0
    capsys.readouterr()
    import transformers

    lm = transformers.AutoModelForCausalLM.from_pretrained(str(merged))
    tok = transformers.AutoTokenizer.from_pretrained(str(merged))
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is a cat?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    budget = json.loads((run_dir / "run.json").read_text())["max_new_tokens"]
    out = lm.generate(ids, max_new_tokens=budget, do_sample=False, eos_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert text == records[0]["generated"]
    assert main(["generate", str(tmp_path), "--prompt", "hi"]) == 2
    assert "not a generative run" in capsys.readouterr().err
