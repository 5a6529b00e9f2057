"""Reading and writing the builder's files: canonical JSON lines, atomic writes, content hashes.

Every output is written to a temporary file and renamed into place, and serialized the same way
every time (UTF-8, no ASCII escaping, keys in construction order, ``\\n`` line ends), so the same
config and seed give byte-identical files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.errors import UserError


def dump_line(record: dict) -> str:
    """One record as one canonical JSON line (without the newline)."""
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` through ``.<name>.tmp`` and a rename, so no reader ever sees half a file. The file
    is always a new one, never rewritten in place: a stage reused from another run holds hard links of
    that run's files, and an in-place write would change that run too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file (ChiMed splits and eval sets); a one-line error naming a missing file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: build the data with ./launch.sh build-data")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl_atomic(path: Path, records: list[dict]) -> None:
    """Write records as JSON lines, atomically."""
    write_text_atomic(path, "".join(dump_line(r) + "\n" for r in records))


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write one JSON document (indented, for people to read), atomically."""
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=2) + "\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(payload) -> str:
    """SHA-256 of a JSON-serializable value, independent of dict order (fingerprints, cache keys)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that, unlike ``hash()``, is the same in every process."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def directory_written_atomically(out: Path, force: bool) -> Iterator[Path]:
    """``with directory_written_atomically(out, force) as partial:`` fill ``partial`` (beside ``out``); it is
    renamed to ``out`` when the block ends without an error, else removed. With ``force`` an existing ``out`` is
    set aside first and deleted only after the rename, so ``out`` is always the old directory or the new one;
    without it an existing ``out`` is a one-line error."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as err:
        raise UserError(
            f"cannot write beside --out {out} ({err.strerror}): choose a directory you can write to"
        ) from None
    try:
        partial.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; a checkpoint gets the usual mode
        yield partial
        old = None
        if out.exists() or out.is_symlink():
            if not force:  # it appeared while this one was being written
                raise UserError(f"--out {out} already exists: choose another directory, or pass --force to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent)) / out.name
            os.rename(out, old)
        os.rename(partial, out)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)  # (a symlink set aside is removed, not followed)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already when it was renamed into place
