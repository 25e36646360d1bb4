"""Generative records (``modelyard/data/chat.py``): formats, file:line errors, generation
inputs, the seeded hold-out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelyard.data import random_split, read_conversations, read_generation_inputs
from modelyard.errors import DataError

pytestmark = pytest.mark.unit


def _jsonl(tmp_path: Path, *records: Any, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _chat(*turns: tuple[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def test_reads_chat_records_in_file_order(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path,
        _chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello.")),
        "",  # a blank line is not a record
        {**_chat(("user", "2+2?"), ("assistant", "4")), "id": 7},  # other keys are passed over
    )
    records = read_conversations(path)
    assert [r.line for r in records] == [1, 3]
    assert records[0].format == "chat" and records[0].text is None
    assert records[0].messages[-1] == {"role": "assistant", "content": "Hello."}
    assert records[1].messages == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert records[1].where == f"{path}:3"


def test_prompt_completion_becomes_a_user_and_an_assistant_turn(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, {"prompt": "Capital of France?", "completion": "Paris."})
    (record,) = read_conversations(path)
    assert record.format == "prompt_completion"
    assert record.messages == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]


def test_csv_prompt_completion_with_a_multiline_field(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\nHi,"Hello,\nthere."\nBye,Ciao\n', encoding="utf-8")
    records = read_conversations(path)
    assert [r.line for r in records] == [2, 4]
    assert records[0].messages[1]["content"] == "Hello,\nthere."


def test_plain_text_is_continued_pretraining(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text\nOnce upon a time.\n", encoding="utf-8")
    (record,) = read_conversations(path)
    assert (record.format, record.text, record.messages) == ("text", "Once upon a time.", [])


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ({"id": 1}, "no key 'messages', 'prompt' or 'text'; keys found: id"),
        ({"messages": [], "text": "x"}, "keys of more than one format (messages, text)"),
        ({"messages": "hi"}, "'messages' must be a non-empty list of turns, got str"),
        ({"messages": []}, "got an empty list"),
        ({"messages": ["hi"]}, "message 1: expected an object, got str"),
        (_chat(("user", "a"), ("tool", "b")), 'message 2: unknown role "tool"; valid roles'),
        (_chat(("user", "a"), ("assistant", "")), "message 2: empty content"),
        (_chat(("user", 3), ("assistant", "b")), "message 1: content is not a string (got int"),
        (
            {"messages": [{"role": "user", "content": "a", "weight": 0}]},
            "message 1: unknown key 'weight'",
        ),
        (_chat(("user", "a"), ("assistant", "b"), ("user", "c")), "the last turn is 'user'"),
        ({"prompt": "a", "completion": " "}, "empty completion"),
        ({"prompt": "a"}, "a prompt without a 'completion'"),
        ({"prompt": ["a"], "completion": "b"}, "prompt is not a string (got list"),
        ({"text": None}, "no text"),
    ],
)
def test_a_bad_record_names_its_file_and_line(tmp_path: Path, line: Any, reason: str) -> None:
    # a good first record of the same format, so the bad one is line 2
    good: dict[str, Any] = _chat(("user", "a"), ("assistant", "b"))
    if isinstance(line, dict) and "prompt" in line:
        good = {"prompt": "p", "completion": "c"}
    elif isinstance(line, dict) and set(line) == {"text"}:
        good = {"text": "fine"}
    path = _jsonl(tmp_path, good, line)
    with pytest.raises(DataError) as caught:
        read_conversations(path)
    assert str(caught.value).startswith(f"{path}:2: "), str(caught.value)
    assert reason in str(caught.value)


def test_a_mix_of_formats_in_one_file_is_refused(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, {"prompt": "a", "completion": "b"}, "", {"text": "c"})
    with pytest.raises(
        DataError,
        match=r"d\.jsonl:3: a plain text record in a file whose first "
        r"record \(line 1\) is prompt/completion; keep one format per file",
    ):
        read_conversations(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "the file is empty"),
        ("prompt,text\n", "expected the columns of one format"),
        ("question,answer\n", "columns found: question, answer"),
        ("prompt,completion\n", "no records"),
        ("prompt,completion\na,b,c\n", "d.csv:2: expected 2 fields, found 3"),
        ("prompt,completion\na,\n", "d.csv:2: empty completion"),
    ],
)
def test_csv_problems(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=reason.replace(".", r"\.")):
        read_conversations(path)


def test_files_the_readers_do_not_take(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_conversations(tmp_path / "none.jsonl")
    (tmp_path / "d.txt").write_text("hello\n", encoding="utf-8")
    with pytest.raises(DataError, match="read from jsonl, csv, tsv files, not txt"):
        read_conversations(tmp_path / "d.txt")
    (tmp_path / "b.jsonl").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(DataError, match=r"b\.jsonl"):
        read_conversations(tmp_path / "b.jsonl")


def test_generation_inputs_keep_the_reference_apart(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path,
        _chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello.")),
        _chat(("user", "Hi"), ("assistant", "Hello."), ("user", "Define cat.")),
    )
    first, second = read_generation_inputs(path)
    assert first.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert first.reference == "Hello."
    assert second.messages[-1] == {"role": "user", "content": "Define cat."}
    assert second.reference is None


def test_generation_inputs_from_prompts_with_or_without_completions(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("prompt,completion\nDefine cat.,A small pet.\nDefine dog.,\n", encoding="utf-8")
    first, second = read_generation_inputs(path)
    assert first.messages == [{"role": "user", "content": "Define cat."}]
    assert (first.reference, second.reference) == ("A small pet.", None)
    only = _jsonl(tmp_path, {"prompt": "Define cow."}, {"text": "x"}, name="p.jsonl")
    with pytest.raises(DataError, match=r"p\.jsonl:2: a plain text record"):
        read_generation_inputs(only)
    text = _jsonl(tmp_path, {"text": "Once upon"}, name="t.jsonl")
    assert read_generation_inputs(text)[0].text == "Once upon"


def test_a_generation_input_needs_a_user_turn_to_answer(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, _chat(("system", "Be brief."), ("assistant", "Hello.")))
    with pytest.raises(
        DataError,
        match=r"d\.jsonl:1: no user turn to answer: the turns end "
        r"with 'system'",
    ):
        read_generation_inputs(path)


def test_random_split_is_seeded_and_keeps_a_training_row() -> None:
    split = random_split(10, 0.2, seed=3)
    again = random_split(10, 0.2, seed=3)
    assert split.validation.tolist() == again.validation.tolist()
    assert len(split.validation) == 2 and len(split.train) == 8
    assert sorted([*split.train, *split.validation]) == list(range(10))
    assert len(random_split(1, 0.5, seed=0).train) == 1
    assert len(random_split(5, 0.0, seed=0).validation) == 0
