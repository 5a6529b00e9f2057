"""Reading a prompt bank file: the clinical prompts an admin gives several annotators through their queues.

Two formats, one prompt per record:

- ``.jsonl``: ``{"prompt": "...", "history": [{"role": ..., "content": ...}, ...], "tags": [...],
  "split": "train" | "heldout"}``
- ``.csv`` with a header row: the same columns; ``tags`` is a ``;``-separated string and ``history``
  a JSON list in its cell.

``prompt`` may be called ``text``; ``history`` (or ``messages``) is the conversation so far, ending
before the prompt, as ``{role, content}`` messages or as Alpaca's ``[[question, answer], ...]``; ``tags``
and ``history`` are optional and ``split`` defaults to ``train``. Other fields are ignored. A record that
does not fit is reported as ``FILE:LINE: reason`` and left out; the rest of the file is still read.
Reading writes nothing: :meth:`~preference_store.repository.PreferenceStore.import_bank` stores the
result in one transaction.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from preference_store.records import SPLITS

BANK_FORMATS = (".jsonl", ".csv")
HISTORY_ROLES = ("system", "user", "assistant")


class MalformedPrompt(ValueError):
    """A bank record that does not fit the format (reported as FILE:LINE and left out)."""


@dataclass(frozen=True)
class ParsedPrompt:
    """One well-formed bank record: the conversation with the prompt last, ready to store."""

    messages: list[dict]
    tags: list[str]
    split: str
    source: str  # FILE:LINE
    content_sha256: str  # of the messages: the same conversation is one bank prompt


def prompt_hash(messages: list[dict]) -> str:
    """The identity of a bank prompt: its whole conversation, so one question after different histories differs."""
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def read_bank(path: str | Path, max_chars: int) -> tuple[list[ParsedPrompt], list[str]]:
    """The well-formed prompts of a bank file in file order, and "FILE:LINE: reason" for every malformed one.

    A missing or unreadable file, or one that is neither ``.jsonl`` nor ``.csv``, is a one-line
    :class:`UserError` (nothing of it is read).
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in BANK_FORMATS:
        raise UserError(f"{path}: a prompt bank is a .jsonl or .csv file, not {suffix or 'a file without extension'!r}")
    if not path.is_file():
        raise UserError(f"{path}: no such bank file (check the path)")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the bank file ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (save the bank file as UTF-8)") from None

    prompts, errors = [], []
    records = _csv_records(text, path, errors) if suffix == ".csv" else _jsonl_records(text, path, errors)
    for line, record in records:
        where = f"{path}:{line}"
        try:
            prompts.append(parse_bank_record(record, where, max_chars))
        except MalformedPrompt as err:
            errors.append(f"{where}: {err}")
    return prompts, errors


def _jsonl_records(text: str, path: Path, errors: list[str]) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(record, dict):
            errors.append(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            continue
        yield number, record


def _csv_records(text: str, path: Path, errors: list[str]) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise UserError(f"{path}:1: unreadable CSV header ({err})") from None
    if not header:
        return
    header = [h.strip().lower() for h in header]
    if not {"prompt", "text"} & set(header):
        raise UserError(f"{path}:1: the CSV header needs a 'prompt' (or 'text') column; it has {', '.join(header)}")
    while True:
        start = reader.line_num + 1  # a quoted cell may span lines: report where the row starts
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            errors.append(f"{path}:{start}: unreadable CSV row ({err})")
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            errors.append(f"{path}:{start}: {len(row)} fields, the header has {len(header)}")
            continue
        record = dict(zip(header, row))
        if record.get("history", "").strip():
            try:
                record["history"] = json.loads(record["history"])
            except json.JSONDecodeError as err:
                errors.append(f"{path}:{start}: history is not a JSON list ({err.msg})")
                continue
        else:
            record.pop("history", None)
        if not record.get("split", "").strip():
            record.pop("split", None)
        yield start, record


def parse_bank_record(record: dict, where: str, max_chars: int) -> ParsedPrompt:
    """One record -> a :class:`ParsedPrompt`; :class:`MalformedPrompt` says what is wrong."""
    prompt = record.get("prompt", record.get("text"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise MalformedPrompt("no prompt: give the question in a 'prompt' (or 'text') field")
    prompt = prompt.strip()
    if len(prompt) > max_chars:
        raise MalformedPrompt(
            f"the prompt has {len(prompt)} characters, over the limit of {max_chars} (store.max_text_chars)"
        )
    history = record.get("history", record.get("messages")) or []
    messages = _history_messages(history, max_chars) + [{"role": "user", "content": prompt}]

    tags = record.get("tags") or []
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(";")]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise MalformedPrompt(f"tags must be a list of strings (in CSV: 'a;b'), got {tags!r}")
    tags = [t.strip() for t in tags if t.strip()]

    split = record.get("split", "train")
    split = split.strip().lower() if isinstance(split, str) else split
    if split not in SPLITS:
        raise MalformedPrompt(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return ParsedPrompt(messages=messages, tags=tags, split=split, source=where, content_sha256=prompt_hash(messages))


def _history_messages(history, max_chars: int) -> list[dict]:
    """The conversation before the prompt as {role, content} messages (Alpaca [[q, a], ...] accepted too)."""
    if not isinstance(history, list):
        raise MalformedPrompt(f"history must be a list of {{role, content}} messages, got {type(history).__name__}")
    messages = []
    for i, turn in enumerate(history):
        if isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn):
            messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
            continue
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            raise MalformedPrompt(f"history message {i} must be {{'role': ..., 'content': ...}}, got {turn!r}")
        if turn["role"] not in HISTORY_ROLES:
            raise MalformedPrompt(
                f"history message {i} has role {turn['role']!r}: use one of {', '.join(HISTORY_ROLES)}"
            )
        if not isinstance(turn["content"], str):
            raise MalformedPrompt(f"history message {i} must have text content, got {type(turn['content']).__name__}")
        messages.append({"role": turn["role"], "content": turn["content"]})
    for i, message in enumerate(messages):
        if message["role"] != "assistant" and not message["content"].strip():
            raise MalformedPrompt(f"history message {i} ({message['role']}) is empty")
        if len(message["content"]) > max_chars:
            raise MalformedPrompt(
                f"history message {i} has {len(message['content'])} characters, over the limit "
                f"of {max_chars} (store.max_text_chars)"
            )
    if messages and messages[-1]["role"] == "user":
        raise MalformedPrompt(
            "the history ends with a user message: it must end before the prompt "
            "(with the assistant's answer), the prompt is the next user message"
        )
    return messages
