"""Read a history file (Parquet, CSV or JSON Lines) in bounded chunks of typed columns.

Columns are named as the API's record fields. A file whose columns the API would never accept (an
unknown name, an ``id`` stored as integers, a time without a time zone) is refused before anything
is written: a schema error is the file's defect, not one row's, and naming it once beats rejecting
ten million rows one by one. What a row holds is checked later, row by row (``bulk.checks``).

Every chunk is a ``Chunk``: the file's row numbers (1-based, as a person counts data rows) and one
``Column`` per field given, in a small set of canonical forms so the checks need not know the format.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as default
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

__all__ = [
    "CHUNK_ROWS",
    "LABEL_FIELDS",
    "PREDICTION_FIELDS",
    "Chunk",
    "Column",
    "ImportInputError",
    "Source",
    "is_record_chunk",
    "open_source",
    "unreadable_reason",
]

CHUNK_ROWS = 100_000  # rows per chunk and per transaction: memory stays bounded whatever the file size

PREDICTION_FIELDS = ("model", "id", "segment", "ts", "confidence", "probs", "logits", "token_logprobs",
                     "predicted")  # fmt: skip
LABEL_FIELDS = ("model", "id", "correct", "label", "labelled_at")
REQUIRED = {"predictions": ("model", "id", "ts"), "labels": ("model", "id", "labelled_at")}
NAMES = ("model", "id", "segment")
TIMES = ("ts", "labelled_at")
VECTORS = ("probs", "logits", "token_logprobs")
LABELS = ("predicted", "label")

Kind = Literal["predictions", "labels"]


class ImportInputError(ValueError):
    """The file cannot be imported at all (format, columns or their types); nothing was written."""


@dataclass(slots=True)
class Column:
    """One field of a chunk.

    ``form`` says how ``values`` hold it: ``text`` (list of str or None), ``number`` (float64 array,
    NaN where null; ``bad`` marks texts that were not numbers, kept in ``raw``), ``integer`` (list
    of int or None: a label given as a number), ``boolean`` (list of bool or None), ``vector``
    (list of lists or None), ``other`` (Python values to be judged row by row).
    """

    form: str
    values: Any
    arrow: Any = None  # the Arrow array behind a ``text`` column: checked vectorised
    nulls: np.ndarray | None = None  # number columns: where no value was given (NaN is a value)
    raw: list[Any] | None = None  # CSV texts behind a number column, for messages
    bad: np.ndarray | None = None  # where a CSV text was not a number

    def value(self, row: int) -> Any:
        """The value the API would have received for this row (None: the field was not given)."""
        if self.form == "number":
            if self.nulls is not None and self.nulls[row]:
                return None
            if self.bad is not None and self.bad[row]:
                return self.raw[row] if self.raw is not None else None
            return float(self.values[row])
        return self.values[row]

    def absent(self) -> np.ndarray:
        if self.form == "number":
            return self.nulls if self.nulls is not None else np.zeros(len(self.values), dtype=bool)
        return np.array([v is None for v in self.values], dtype=bool)


@dataclass(slots=True)
class Chunk:
    rows: np.ndarray  # int64, 1-based row numbers in the file
    columns: dict[str, Column]
    unreadable: list[tuple[int, str]] = default(default_factory=list)  # rows read but not parsed: why

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, row: int) -> dict[str, Any]:
        """Row ``row`` of the chunk as the API record it stands for (absent fields left out)."""
        record = {}
        for name, column in self.columns.items():
            value = column.value(row)
            if value is not None:
                record[name] = value
        return record


@dataclass
class Source:
    path: Path
    kind: Kind
    total_rows: int | None  # known up front for Parquet; None: progress is shown in bytes
    total_bytes: int
    chunks: Iterator[tuple[Chunk, int]]  # each chunk with the bytes read so far


def open_source(path: Path, kind: Kind, chunk_rows: int = CHUNK_ROWS) -> Source:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ImportInputError(f"{path}: no such file")
    size = path.stat().st_size
    if suffix == ".parquet":
        return _parquet(path, kind, chunk_rows, size)
    if suffix == ".csv":
        return Source(path, kind, None, size, _csv(path, kind, chunk_rows))
    if suffix in (".jsonl", ".ndjson"):
        return Source(path, kind, None, size, _jsonl(path, kind, chunk_rows))
    raise ImportInputError(f"{path}: unknown format {suffix!r}; use .parquet, .csv or .jsonl")


def _check_names(path: Path, kind: Kind, names: list[str]) -> None:
    allowed = PREDICTION_FIELDS if kind == "predictions" else LABEL_FIELDS
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ImportInputError(
            f"{path}: unknown column {unknown[0]!r}; {kind} take {', '.join(allowed)} "
            "(drop or rename the others)"
        )
    missing = [name for name in REQUIRED[kind] if name not in names]
    if missing:
        raise ImportInputError(
            f"{path}: missing column {missing[0]!r}; {kind} need {', '.join(REQUIRED[kind])}"
        )
    if kind == "labels" and "correct" not in names and "label" not in names:
        raise ImportInputError(f"{path}: labels need a 'correct' or a 'label' column")
    if len(set(names)) != len(names):
        raise ImportInputError(f"{path}: a column name appears twice")


# ------------------------------------------------------------------------------------------- Parquet
def _parquet(path: Path, kind: Kind, chunk_rows: int, size: int) -> Source:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise ImportInputError("reading Parquet needs pyarrow") from None
    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for a damaged file
        raise ImportInputError(f"{path}: not a readable Parquet file ({exc})") from None
    schema = handle.schema_arrow
    _check_names(path, kind, list(schema.names))
    for field in schema:
        _arrow_type_ok(path, field.name, field.type)
    total = handle.metadata.num_rows

    def chunks() -> Iterator[tuple[Chunk, int]]:
        start = 1
        done = 0
        for batch in handle.iter_batches(batch_size=chunk_rows):
            rows = np.arange(start, start + batch.num_rows, dtype=np.int64)
            start += batch.num_rows
            done += batch.num_rows
            columns = {name: _arrow_column(name, batch.column(name)) for name in batch.schema.names}
            yield Chunk(rows, columns), int(size * done / max(total, 1))

    return Source(path, kind, total, size, chunks())


def _arrow_type_ok(path: Path, name: str, kind: Any) -> None:
    import pyarrow as pa

    t = pa.types
    if t.is_dictionary(kind):
        kind = kind.value_type
    text = t.is_string(kind) or t.is_large_string(kind)
    number = t.is_integer(kind) or t.is_floating(kind)
    if name in NAMES:
        ok, want = text, "strings"
    elif name in TIMES:
        if t.is_timestamp(kind) and kind.tz is None:
            raise ImportInputError(
                f"{path}: column {name!r} is a timestamp without a time zone; "
                "store it with one (e.g. timestamp[us, tz=UTC]) or as epoch seconds"
            )
        ok, want = text or number or t.is_timestamp(kind), "epoch seconds, RFC 3339 strings or timestamps"
    elif name == "confidence":
        ok, want = number, "numbers"
    elif name in VECTORS:
        ok = (t.is_list(kind) or t.is_large_list(kind)) and (
            t.is_floating(kind.value_type) or t.is_integer(kind.value_type)
        )
        want = "lists of numbers"
    elif name in LABELS:
        ok, want = text or t.is_integer(kind), "strings or integers"
    else:  # correct
        ok, want = t.is_boolean(kind), "booleans"
    if not ok and not t.is_null(kind):
        raise ImportInputError(f"{path}: column {name!r} holds {kind}; the API takes {want}")


def _arrow_column(name: str, array: Any) -> Column:
    import pyarrow as pa
    import pyarrow.compute as pc

    t = pa.types
    kind = array.type
    if t.is_dictionary(kind):
        array = array.dictionary_decode()
        kind = array.type
    if t.is_null(kind):
        return Column("other", [None] * len(array))
    nulls = _nulls(array)
    if name in TIMES and t.is_timestamp(kind):
        seconds = pc.divide(pc.cast(array.cast(pa.timestamp("us", tz=kind.tz)), pa.int64()), 1_000_000.0)
        return Column("number", seconds.to_numpy(zero_copy_only=False).astype(np.float64), nulls=nulls)
    if t.is_integer(kind) and name in LABELS:
        return Column("integer", array.to_pylist())
    if t.is_integer(kind) or t.is_floating(kind):
        values = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
        return Column("number", np.asarray(values, dtype=np.float64), nulls=nulls)
    if t.is_string(kind) or t.is_large_string(kind):
        return Column("text", array.to_pylist(), arrow=array)
    if t.is_boolean(kind):
        return Column("boolean", array.to_pylist())
    if name in VECTORS:
        return Column("vector", array.to_pylist())
    return Column("other", array.to_pylist())  # pragma: no cover - types are checked up front


def _nulls(array: Any) -> np.ndarray | None:
    if array.null_count == 0:
        return None
    return np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)


# ----------------------------------------------------------------------------------------------- CSV
def _csv(path: Path, kind: Kind, chunk_rows: int) -> Iterator[tuple[Chunk, int]]:
    """CSV holds only text: every cell is read as text, an empty cell is a field not given (``""``
    is an empty text); numbers, booleans and vectors (JSON arrays) are parsed here so that the
    checks see what a JSON client would send."""
    try:
        with path.open("rb") as probe:
            header = probe.readline().decode("utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportInputError(f"{path}: cannot read the header line ({exc})") from None
    names = [n.strip().strip('"') for n in header.split(",")] if header else []
    _check_names(path, kind, names)  # here, before the first chunk: nothing is written for a bad file
    return _csv_chunks(path, names, chunk_rows)


def _csv_chunks(path: Path, names: list[str], chunk_rows: int) -> Iterator[tuple[Chunk, int]]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    bad = _BadRows(chunk_rows)
    with path.open("rb") as handle:
        pending: Any = None  # rows read but not yet handed out (less than a chunk)
        try:
            reader = pcsv.open_csv(  # reads the first block already
                handle,
                # one parsing thread: pyarrow numbers the rows it hands to ``bad`` only then
                read_options=pcsv.ReadOptions(block_size=4 << 20, use_threads=False),
                parse_options=pcsv.ParseOptions(invalid_row_handler=bad),
                convert_options=pcsv.ConvertOptions(
                    column_types={name: pa.string() for name in names}, strings_can_be_null=True,
                    null_values=[""], quoted_strings_can_be_null=False,
                ),
            )  # fmt: skip
            for batch in reader:
                table = pa.Table.from_batches([batch])
                pending = table if pending is None else pa.concat_tables([pending, table])
                while pending.num_rows >= chunk_rows:
                    yield bad.chunk(pending.slice(0, chunk_rows)), handle.tell()
                    pending = pending.slice(chunk_rows)
        except pa.ArrowInvalid as exc:
            raise ImportInputError(
                f"{path}: not readable as CSV after data row {bad.next_row - 1}: {bad.overflow or exc}; the "
                "rows before it were imported: fix the file and run the import again (rows already "
                "stored are skipped)"
            ) from None
        if pending is None and bad.found:
            pending = pa.table({name: pa.array([], pa.string()) for name in names})
        if pending is not None and (pending.num_rows or bad.found):
            yield bad.chunk(pending), handle.tell()


class _BadRows:
    """pyarrow's handler for rows it cannot split into the header's fields: each becomes a rejected
    row (its number and text) and the file reads on. It also numbers the good rows around them.
    Bounded: more than ``limit`` such rows before the next chunk of good ones stops the import."""

    def __init__(self, limit: int):
        self.limit = limit
        self.found: list[tuple[int, str]] = []  # since the last chunk handed out
        self.skipped: deque[int] = deque()  # their data row numbers, not yet passed by the numbering
        self.next_row = 1  # the next data row number a good row may take
        self.overflow = ""

    def __call__(self, row: Any) -> str:
        if row.number is None or len(self.found) >= self.limit:
            self.overflow = f"more than {self.limit:,} rows in a row do not split into the header's fields"
            return "error"
        number = row.number - 1  # pyarrow counts the header line as row 1
        text = row.text if len(row.text) <= 200 else row.text[:200] + "..."
        self.found.append(
            (number, f"not a CSV row of the header's {row.expected_columns} fields "
                     f"(found {row.actual_columns}): {text!r}")
        )  # fmt: skip
        self.skipped.append(number)
        return "skip"

    def chunk(self, table: Any) -> Chunk:
        """The good rows of ``table``, numbered around the bad ones, with the bad ones found so far."""
        rows = np.empty(table.num_rows, dtype=np.int64)
        done = 0
        while done < table.num_rows:
            if self.skipped and self.skipped[0] == self.next_row:
                self.skipped.popleft()
                self.next_row += 1
                continue
            run = table.num_rows - done
            if self.skipped:
                run = min(run, self.skipped[0] - self.next_row)
            rows[done : done + run] = np.arange(self.next_row, self.next_row + run)
            done += run
            self.next_row += run
        chunk = _csv_chunk(table, rows)
        chunk.unreadable, self.found = self.found, []
        return chunk


def _csv_chunk(table: Any, rows: np.ndarray) -> Chunk:
    columns: dict[str, Column] = {}
    for name in table.column_names:
        texts: list[str | None] = table.column(name).to_pylist()
        if name in TIMES or name == "confidence":
            columns[name] = _csv_number(name, texts)
        elif name == "correct":
            columns[name] = Column("other", [_csv_bool(v) for v in texts])
        elif name in VECTORS:
            columns[name] = Column("other", [_csv_vector(v) for v in texts])
        else:
            columns[name] = Column("text", texts, arrow=table.column(name))
    return Chunk(rows, columns)


def _csv_number(name: str, texts: list[str | None]) -> Column:
    import pandas as pd

    numbers = np.array(pd.to_numeric(pd.Series(texts, dtype=object), errors="coerce"), dtype=np.float64)
    nulls = np.array([v is None for v in texts], dtype=bool)
    bad = ~nulls & np.isnan(numbers)
    for i in np.flatnonzero(bad).tolist():
        try:  # "nan", "inf": numbers the API refuses by name, as it refuses NaN in JSON
            numbers[i] = float(texts[i])  # type: ignore[arg-type]
            bad[i] = False
        except ValueError:
            pass  # not a number (an RFC 3339 time, or a defect the checks name)
    return Column("number", numbers, nulls=nulls if nulls.any() else None, raw=texts,
                  bad=bad if bad.any() else None)  # fmt: skip


_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def _csv_bool(text: str | None) -> Any:
    if text is None:
        return None
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return text  # the checks reject it, naming the field


def _csv_vector(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # the checks reject it, naming the field


# --------------------------------------------------------------------------------------- JSON Lines
def _jsonl(path: Path, kind: Kind, chunk_rows: int) -> Iterator[tuple[Chunk, int]]:
    """JSON Lines carry the API's own types: each line is one record exactly as a client sends it."""
    records: list[Any] = []
    start = 1
    number = 0
    read_bytes = 0
    with path.open("rb") as handle:
        for line in handle:
            read_bytes += len(line)
            if not line.strip():
                continue
            number += 1
            records.append(_json_line(line))
            if len(records) >= chunk_rows:
                yield _records_chunk(records, start), read_bytes
                start += len(records)
                records = []
    if records:
        yield _records_chunk(records, start), read_bytes


def _json_line(line: bytes) -> Any:
    """One record; NaN and Infinity are read as the API reads them (leniently, to name the field)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:
        return _Unreadable(f"not JSON ({exc})")


@dataclass(frozen=True, slots=True)
class _Unreadable:
    reason: str


def _records_chunk(records: list[Any], start: int) -> Chunk:
    rows = np.arange(start, start + len(records), dtype=np.int64)
    return Chunk(rows, {"__record__": Column("other", records)})


def is_record_chunk(chunk: Chunk) -> bool:
    return "__record__" in chunk.columns


def unreadable_reason(value: Any) -> str | None:
    return value.reason if isinstance(value, _Unreadable) else None
