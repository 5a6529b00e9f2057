"""Importers for the files users already have, in the public formats of docs/design.md.

- pretraining text: ``.txt`` (one document per line) or JSON lines with ``text``
- Alpaca: ``instruction``, ``input``, ``output``, optional ``system``, ``history`` [[q, a], ...]
- ShareGPT: ``conversations`` [{``from``: human|gpt|system, ``value``}], optional ``system``
- preference pairs: MedicalGPT (``conversations`` + ``chosen`` + ``rejected``), ``question`` /
  ``response_chosen`` / ``response_rejected``, or Alpaca style ``instruction``, ``input``, ``chosen``,
  ``rejected``
- exams: C-Eval (``question``, ``A``..``D``, ``answer``, ``explanation``) and CMExam (``Question``,
  ``Options`` with one "A 选项" per line, ``Answer``, ``Explanation``)
- QA, Huatuo style: ``question``/``questions``, ``answer``/``answers``
- collected pairs (``export-prefs``): the dpo.jsonl format plus ``split`` and ``provenance``

Structured files may be JSON lines (``.jsonl``), a JSON array (``.json``) or CSV with a header row
(``.csv``). A malformed record is reported as ``FILE:LINE: what is wrong``; by default it is skipped
and counted (:class:`LineErrors`), in strict mode the build stops with that message.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from core.errors import UserError
from training.data.dialogue import assistant, user

SHOWN_PROBLEMS = 20  # malformed lines printed one by one; the rest are only counted
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
OPTION_LINE = re.compile(r"^\s*([A-Ha-h])\s*[\.．、:：)）]?\s*(.+?)\s*$")


class Malformed(ValueError):
    """A record that does not fit its format (reported with file and line, skipped or fatal)."""


class Unsupported(ValueError):
    """A well-formed record this builder does not use (e.g. a multiple-answer exam question): counted only."""


class LineErrors:
    """Collects malformed input lines: reported with file and line, skipped and counted, or fatal when strict."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.problems: list[str] = []  # "FILE:LINE: reason", in reading order
        self.by_file: Counter = Counter()
        self.unsupported: Counter = Counter()  # reason -> records left out on purpose

    def malformed(self, path: Path | str, where: str, reason: str) -> None:
        message = f"{path}:{where}: {reason}"
        if self.strict:
            raise UserError(f"{message} (strict mode stops at the first malformed line: fix or remove it)")
        self.problems.append(message)
        self.by_file[str(path)] += 1
        if len(self.problems) <= SHOWN_PROBLEMS:
            print(f"warning: skipped {message}", file=sys.stderr)

    def summary(self) -> dict:
        return {
            "skipped": len(self.problems),
            "by_file": dict(sorted(self.by_file.items())),
            "first": self.problems[:SHOWN_PROBLEMS],
            "unsupported": dict(sorted(self.unsupported.items())),
        }


def require_file(path: str | Path, setting: str) -> Path:
    """The path of a configured input file; a one-line error naming it when it does not exist."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise UserError(f"{setting}: {path} does not exist (fix the path or remove it from the config)")
    return resolved


# --- reading records with their line numbers -----------------------------------------------------


def _lines(path: Path, errors: LineErrors) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines; lines that are not UTF-8 are reported."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                errors.malformed(path, str(number), "not UTF-8 text")
                continue
            if text.strip():
                yield number, text.rstrip("\r\n")


def read_records(path: Path, errors: LineErrors) -> Iterator[tuple[str, dict]]:
    """(where, record) for every object in a ``.jsonl``, ``.json`` or ``.csv`` file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_records(path, errors)
    elif suffix == ".json":
        yield from _json_array_records(path, errors)
    else:
        for number, text in _lines(path, errors):
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                errors.malformed(path, str(number), f"not valid JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(record, dict):
                errors.malformed(path, str(number), f"expected a JSON object, got {type(record).__name__}")
                continue
            yield str(number), record


def _csv_records(path: Path, errors: LineErrors) -> Iterator[tuple[str, dict]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (save the CSV file as UTF-8)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        return
    header = [h.strip() for h in header]
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            errors.malformed(path, str(start), f"unreadable CSV row ({err})")
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            errors.malformed(path, str(start), f"{len(row)} fields, the header has {len(header)}")
            continue
        yield str(start), dict(zip(header, row))


def _json_array_records(path: Path, errors: LineErrors) -> Iterator[tuple[str, dict]]:
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a valid UTF-8 JSON file ({err}); use JSON lines to skip bad records") from None
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a JSON array of records (or use .jsonl, one record a line)")
    for index, record in enumerate(items, start=1):
        if isinstance(record, dict):
            yield f"item {index}", record
        else:
            errors.malformed(path, f"item {index}", f"expected a JSON object, got {type(record).__name__}")


def _convert(path: Path, errors: LineErrors, convert) -> list:
    """``convert(record, where)`` over every record; malformed ones reported, unsupported ones counted."""
    out = []
    for where, record in read_records(path, errors):
        try:
            out.append(convert(record, where))
        except Malformed as problem:
            errors.malformed(path, where, str(problem))
        except Unsupported as reason:
            errors.unsupported[str(reason)] += 1
    return out


# --- field checks --------------------------------------------------------------------------------


def text_field(record: dict, *names: str, required: bool = True) -> str:
    """The first of ``names`` present in ``record``, as stripped text."""
    for name in names:
        if name in record and record[name] is not None:
            value = record[name]
            if not isinstance(value, str):
                raise Malformed(f"field {name!r} must be text, got {type(value).__name__}")
            if value.strip() or not required:
                return value.strip()
            raise Malformed(f"field {name!r} is empty")
    if required:
        raise Malformed(f"missing field {' or '.join(repr(n) for n in names)}")
    return ""


def first_text(value, name: str) -> str:
    """Huatuo files give ``questions`` / ``answers`` as text, a list, or a list of lists: the first text."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        for item in value:
            found = first_text(item, name)
            if found:
                return found
        return ""
    raise Malformed(f"field {name!r} must be text or a list of texts, got {type(value).__name__}")


def check_messages(messages, name: str, last_role: str | None = None) -> list[dict]:
    """A list of {"role", "content"} messages with known roles and non-empty text."""
    if not isinstance(messages, list) or not messages:
        raise Malformed(f"{name!r} must be a non-empty list of messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise Malformed(f"{name}[{i}] must be an object with a text 'content'")
        if message.get("role") not in ("system", "user", "assistant"):
            raise Malformed(f"{name}[{i}] has role {message.get('role')!r} (system, user or assistant)")
        if not message["content"].strip():
            raise Malformed(f"{name}[{i}] is empty")
        out.append({"role": message["role"], "content": message["content"].strip()})
    if last_role and out[-1]["role"] != last_role:
        raise Malformed(f"{name!r} must end with a {last_role} message")
    return out


def alternating(messages: list[dict], name: str, ends_with: str) -> list[dict]:
    """Checks that turns alternate user/assistant (after an optional system message)."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    expected = "user"
    for i, message in enumerate(turns):
        if message["role"] != expected:
            raise Malformed(
                f"{name}: turn {i + 1} is {message['role']!r}, expected {expected!r} "
                "(turns alternate user/assistant, starting with the user)"
            )
        expected = "assistant" if expected == "user" else "user"
    if not turns or turns[-1]["role"] != ends_with:
        raise Malformed(f"{name} must end with a {ends_with} turn")
    return messages


def _sharegpt_messages(record: dict, ends_with: str) -> list[dict]:
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise Malformed("'conversations' must be a non-empty list of {from, value}")
    messages = []
    system = text_field(record, "system", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise Malformed(f"conversations[{i}] must be an object with a text 'value'")
        role = SHAREGPT_ROLES.get(turn.get("from"))
        if role is None:
            raise Malformed(f"conversations[{i}] has from={turn.get('from')!r} (human, gpt or system)")
        if not turn["value"].strip():
            raise Malformed(f"conversations[{i}] is empty")
        messages.append({"role": role, "content": turn["value"].strip()})
    return alternating(messages, "conversations", ends_with)


def _alpaca_prompt(record: dict) -> list[dict]:
    instruction = text_field(record, "instruction")
    extra = text_field(record, "input", required=False)
    messages = []
    system = text_field(record, "system", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise Malformed("'history' must be a list of [question, answer] pairs")
    for i, turn in enumerate(history):
        if (
            not isinstance(turn, (list, tuple))
            or len(turn) != 2
            or not all(isinstance(t, str) and t.strip() for t in turn)
        ):
            raise Malformed(f"history[{i}] must be a [question, answer] pair of non-empty texts")
        messages += [user(turn[0].strip()), assistant(turn[1].strip())]
    messages.append(user(f"{instruction}\n{extra}" if extra else instruction))
    return messages


def pair_id(prefix: str, prompt: list[dict], chosen: str, rejected: str) -> str:
    """A content-derived id, the same in every build."""
    payload = json.dumps([prompt, chosen, rejected], ensure_ascii=False, sort_keys=True)
    return f"{prefix}-{hashlib.sha256(payload.encode('utf-8')).hexdigest()[:16]}"


def dpo_record(prompt: list[dict], chosen: str, rejected: str, source: str, pid: str) -> dict:
    if chosen == rejected:
        raise Malformed("chosen and rejected are the same answer")
    return {
        "prompt": prompt,
        "chosen": [assistant(chosen)],
        "rejected": [assistant(rejected)],
        "source": source,
        "pair_id": pid,
    }


# --- the importers -------------------------------------------------------------------------------


def read_pretraining_text(path: Path, errors: LineErrors, source: str = "user_text") -> list[dict]:
    """``.txt``: one document per non-empty line; otherwise records with a ``text`` field."""
    if path.suffix.lower() == ".txt":
        return [{"text": text.strip(), "source": source} for _, text in _lines(path, errors)]
    return _convert(path, errors, lambda r, _: {"text": text_field(r, "text"), "source": source})


def read_alpaca(path: Path, errors: LineErrors, source: str = "alpaca") -> list[dict]:
    """Alpaca records -> ``{"messages", "source"}`` (history turns first, ``input`` after the instruction)."""

    def convert(record: dict, _):
        return {"messages": _alpaca_prompt(record) + [assistant(text_field(record, "output"))], "source": source}

    return _convert(path, errors, convert)


def read_sharegpt(path: Path, errors: LineErrors, source: str = "sharegpt") -> list[dict]:
    """ShareGPT records -> ``{"messages", "source"}``; turns must alternate and end with ``gpt``."""
    return _convert(path, errors, lambda r, _: {"messages": _sharegpt_messages(r, "assistant"), "source": source})


def read_preference_pairs(path: Path, errors: LineErrors, source: str = "imported") -> list[dict]:
    """Preference records in any of the three published styles -> dpo.jsonl records."""

    def convert(record: dict, _):
        if "conversations" in record:
            prompt = _sharegpt_messages(record, "user")
            chosen, rejected = text_field(record, "chosen"), text_field(record, "rejected")
        elif "question" in record:
            prompt = [user(text_field(record, "question"))]
            chosen, rejected = text_field(record, "response_chosen"), text_field(record, "response_rejected")
        elif "instruction" in record:
            prompt = _alpaca_prompt(record)
            chosen, rejected = text_field(record, "chosen"), text_field(record, "rejected")
        else:
            raise Malformed(
                "not a preference record: expected 'conversations', 'question' or 'instruction' "
                "with chosen/rejected answers"
            )
        return dpo_record(prompt, chosen, rejected, source, pair_id("imp", prompt, chosen, rejected))

    return _convert(path, errors, convert)


def read_exam(path: Path, errors: LineErrors) -> list[dict]:
    """C-Eval or CMExam style questions -> exam.jsonl records (subject: the file's, else its name)."""
    stem = path.stem

    def convert(record: dict, where: str):
        if "Question" in record or "Options" in record:  # CMExam
            question = text_field(record, "Question")
            options = parse_options(text_field(record, "Options"))
            answer = text_field(record, "Answer").upper().replace(" ", "")
            subject = str(record.get("Medical Discipline") or record.get("subject") or stem).strip()
        else:  # C-Eval
            question = text_field(record, "question")
            options = {}
            for letter in "ABCDEFGH":
                if letter in record and str(record[letter]).strip():
                    options[letter] = str(record[letter]).strip()
            if len(options) < 2:
                raise Malformed("an exam question needs at least the options 'A' and 'B'")
            answer = text_field(record, "answer").upper().strip()
            subject = str(record.get("subject") or stem).strip()
        if len(answer) > 1 and all(a in options for a in answer):
            raise Unsupported("multiple-answer exam questions")
        if answer not in options:
            raise Malformed(f"answer {answer!r} is not one of the options {''.join(options)}")
        qid = str(record.get("id") or record.get("ID") or where.replace("item ", "")).strip()
        return {"id": f"{stem}-{qid}", "question": question, "options": options, "answer": answer, "subject": subject}

    return _convert(path, errors, convert)


def parse_options(text: str) -> dict[str, str]:
    """CMExam ``Options``: one "A 选项" per line -> {"A": "选项", ...}."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        match = OPTION_LINE.match(line)
        if not match:
            raise Malformed(f"option line {line.strip()!r} does not start with a letter (A 选项)")
        letter = match.group(1).upper()
        if letter in options:
            raise Malformed(f"option {letter} appears twice")
        options[letter] = match.group(2)
    if len(options) < 2:
        raise Malformed("'Options' needs at least two lines (A 选项 / B 选项)")
    return options


def read_qa(path: Path, errors: LineErrors) -> list[dict]:
    """Huatuo-style QA -> qa.jsonl records (``id``, one user message, ``reference``)."""
    stem = path.stem

    def convert(record: dict, where: str):
        question = _either(record, "question", "questions")
        reference = _either(record, "answer", "answers")
        qid = str(record.get("id") or where.replace("item ", "")).strip()
        return {"id": f"{stem}-{qid}", "messages": [user(question)], "reference": reference}

    return _convert(path, errors, convert)


def _either(record: dict, singular: str, plural: str) -> str:
    for name in (singular, plural):
        if name in record:
            value = first_text(record[name], name)
            if not value:
                raise Malformed(f"field {name!r} is empty")
            return value
    raise Malformed(f"missing field {singular!r} or {plural!r}")


def read_collected_pairs(path: Path, errors: LineErrors) -> list[tuple[str, dict]]:
    """(split, dpo record) of an ``export-prefs`` file; ``source``, ``pair_id``, ``provenance`` and the pair's
    ``weight`` (where the export measured one: ``align.pair_weights``) are kept."""

    def convert(record: dict, _):
        split = record.get("split")
        if split not in ("train", "heldout"):
            raise Malformed(f"'split' must be 'train' or 'heldout', got {split!r}")
        prompt = check_messages(record.get("prompt"), "prompt", last_role="user")
        chosen = check_messages(record.get("chosen"), "chosen", last_role="assistant")
        rejected = check_messages(record.get("rejected"), "rejected", last_role="assistant")
        pid = text_field(record, "pair_id")
        out = dpo_record(
            prompt, chosen[-1]["content"], rejected[-1]["content"], str(record.get("source") or "clinician"), pid
        )
        if isinstance(record.get("provenance"), dict):
            out["provenance"] = record["provenance"]
        weight = record.get("weight")  # since 2026-12-07; absent in older files, null where none was measured
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= weight <= 1.0:
                raise Malformed(f"'weight' must be a number from 0 to 1 or null, got {weight!r}")
            out["weight"] = float(weight)
        return split, out

    return _convert(path, errors, convert)
