"""Rows in and out of files: JSONL, JSON, CSV and Parquet (docs/api.md, "Files in and out,
CLI, web page, CORS"). Shared by `GET /jobs/{id}/results?format=...` and `synthserve run`.

Writing takes rows in batches, twice: the first pass settles the columns (CSV header) and
the Arrow type of each column (Parquet), the second writes, one batch at a time, so a
result set is never held in memory whole. Nested values stay nested in Parquet (Arrow
lists and structs); a column whose values cannot share one Arrow type (a string in some
rows, a list in others) is written as JSON text, as every nested value is in CSV.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import anyio

# The CLI imports this module: FastAPI only where a response is built, pyarrow only where a
# shape is measured or Parquet read or written (0.1-0.2 s of the CLI's start for JSONL).
if TYPE_CHECKING:
    import pyarrow as pa
    from fastapi.responses import StreamingResponse

Row = dict[str, Any]

ResultsFormat = Literal["jsonl", "csv", "parquet"]
READABLE = (".jsonl", ".json", ".csv", ".parquet")
WRITABLE = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
BATCH = 1000  # rows per Parquet row group, per conversion, per read of a Parquet file
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8",
               "parquet": "application/vnd.apache.parquet"}


class FormatError(ValueError):
    """A file that cannot be read as rows; the message names the line, row or column."""


def output_format(path: str | Path) -> str:
    """`jsonl`, `csv` or `parquet` from a file name; FormatError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITABLE:
        raise FormatError(f"{path}: output must end in {', '.join(WRITABLE)}")
    return WRITABLE[suffix]


# ---- reading ----

def read_rows(path: str | Path) -> list[Row]:
    """Every row of a .jsonl, .json, .csv or .parquet file (see `iter_rows`)."""
    check_readable(str(path))
    try:
        with open(path, "rb") as f:
            return [row for _, row in iter_rows(f, str(path))]
    except OSError as exc:
        raise FormatError(f"{path}: {exc.strerror or exc}") from None


def check_readable(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in READABLE:
        raise FormatError(f"{name}: input must end in {', '.join(READABLE)}")
    return suffix


def iter_rows(f: BinaryIO, name: str) -> Iterator[tuple[str, Row]]:
    """(where, row) for each row of the file `name` open in `f` (binary, seekable for
    Parquet): `where` names its line (JSONL, CSV) or row (JSON, Parquet) for messages.
    .json is a list of objects, or {"rows": [...]}, and is parsed whole; the others are
    read a line or a row group at a time. CSV cells are strings, empty cells None, and a
    cell holding a JSON list or object (as this module writes nested values) is decoded."""
    suffix = check_readable(name)
    if suffix == ".parquet":
        yield from _parquet_rows(f, name)
        return
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    try:
        yield from {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows}[suffix](text, name)
    except UnicodeDecodeError as exc:
        raise FormatError(f"{name}: not UTF-8 text ({exc.reason})") from None
    finally:
        text.detach()  # the caller's file stays open


def _object(value: Any, where: str) -> Row:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _jsonl_rows(f, name: str) -> Iterator[tuple[str, Row]]:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        where = f"{name} line {n}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{where}: invalid JSON ({exc.msg}, column {exc.colno})") from None
        yield where, _object(value, where)


def _json_rows(f, name: str) -> Iterator[tuple[str, Row]]:
    try:
        value = json.load(f)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{name} line {exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno})") from None
    if isinstance(value, dict) and isinstance(value.get("rows"), list):
        value = value["rows"]
    if not isinstance(value, list):
        raise FormatError(f"{name}: expected a JSON list of row objects (or {{\"rows\": [...]}})")
    for i, v in enumerate(value):
        yield f"{name} row {i}", _object(v, f"{name} row {i}")


def _cell(text: str) -> Any:
    if text == "":
        return None
    if text[0] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def _csv_rows(f, name: str) -> Iterator[tuple[str, Row]]:
    reader = csv.reader(f, strict=True)
    try:
        header = next(reader, None)
        if not header or not any(header):
            raise FormatError(f"{name} line 1: no header row")
        if len(set(header)) != len(header):
            raise FormatError(f"{name} line 1: a column name appears twice")
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise FormatError(f"{name} line {reader.line_num}: {len(fields)} fields, the header has {len(header)}")
            yield f"{name} line {reader.line_num}", {column: _cell(v) for column, v in zip(header, fields)}
    except csv.Error as exc:
        raise FormatError(f"{name} line {reader.line_num}: {exc}") from None


def _parquet_rows(f: BinaryIO, name: str) -> Iterator[tuple[str, Row]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(f)
        if not parquet.schema_arrow.names:
            raise FormatError(f"{name}: the Parquet file has no columns")
        n = 0
        for batch in parquet.iter_batches(batch_size=BATCH):
            for row in batch.to_pylist():
                yield f"{name} row {n}", row
                n += 1
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FormatError(f"{name}: not a readable Parquet file ({exc})") from None


# ---- the shape of a result set ----

class Shape:
    """Columns in first-seen order and, per column, one Arrow type for every value seen
    (None: the values disagree, write JSON text)."""

    def __init__(self) -> None:
        self.types: dict[str, pa.DataType | None] = {}

    def add(self, rows: list[Row]) -> None:
        import pyarrow as pa

        columns: dict[str, list] = {}
        for row in rows:
            for name in row:
                columns.setdefault(name, [])
        for name, values in columns.items():
            values.extend(row.get(name) for row in rows)
            known = self.types.get(name, pa.null())
            if name in self.types and known is None:
                continue
            try:
                merged = _unify(known, pa.array(values).type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
                merged = None
            self.types[name] = merged if merged is None or _writable(merged) else None

    def schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.schema([(name, t if t is not None else pa.string()) for name, t in self.types.items()])


def _unify(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    if a == b:
        return a
    import pyarrow as pa

    return pa.unify_schemas([pa.schema([("c", a)]), pa.schema([("c", b)])],
                            promote_options="permissive").field("c").type


def _writable(t: pa.DataType) -> bool:
    """Parquet cannot store a struct without fields (every value `{}`)."""
    import pyarrow as pa

    if pa.types.is_struct(t):
        return t.num_fields > 0 and all(_writable(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _writable(t.value_type)
    return True


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def arrow_table(rows: list[Row], shape: Shape) -> pa.Table:
    import pyarrow as pa

    arrays = []
    for name, t in shape.types.items():
        values = [row.get(name) for row in rows]
        arrays.append(pa.array([_json(v) for v in values], pa.string()) if t is None else pa.array(values, t))
    return pa.Table.from_arrays(arrays, schema=shape.schema())


def csv_text(rows: list[Row], columns: list[str], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if (v := row.get(c)) is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                         for c in columns])
    return out.getvalue()


def jsonl_text(rows: Iterable[Row]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows)


class _Drain(io.RawIOBase):
    """A write-only file whose bytes are taken away as they are written (Parquet's sink)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.parts.append(bytes(b))
        self.size += len(b)
        return len(b)

    def tell(self) -> int:
        return self.size

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


# ---- writing ----

def prepare(fmt: str) -> None:
    """Import what writing `fmt` needs: pyarrow for CSV (the shape) and Parquet, and pandas,
    which pyarrow imports on its first conversion of Python values (~0.3 s with pyarrow.parquet
    under load). The CLI calls it in a thread while rows come, not after the last one."""
    if fmt not in ("csv", "parquet"):
        return
    import pyarrow as pa

    pa.array([0])
    if fmt == "parquet":
        import pyarrow.parquet  # noqa: F401


def write_rows(path: str | Path, rows: list[Row], fmt: str | None = None) -> None:
    """Write rows to `path` in `fmt`, by default the format its extension names."""
    fmt = fmt or output_format(path)
    if fmt == "jsonl":
        Path(path).write_text(jsonl_text(rows), encoding="utf-8")
        return
    shape = Shape()
    for batch in iter_batches(rows):
        shape.add(batch)
    if fmt == "csv":
        Path(path).write_text(csv_text(rows, list(shape.types), header=True), encoding="utf-8", newline="")
        return
    import pyarrow.parquet as pq

    with pq.ParquetWriter(str(path), shape.schema()) as writer:
        for batch in iter_batches(rows):
            writer.write_table(arrow_table(batch, shape))
        if not rows:
            writer.write_table(shape.schema().empty_table())


async def stream(fmt: str, batches: Callable[[], AsyncIterator[list[Row]]]) -> AsyncIterator[bytes]:
    """A result set as a CSV or Parquet body. `batches()` yields the rows in order and is
    called twice; rows that appear only in the second pass (a job still running) are left
    out, so the file matches the shape measured in the first."""
    import pyarrow.parquet as pq

    shape = Shape()
    seen: set[int] = set()
    async for rows in batches():
        await anyio.to_thread.run_sync(shape.add, rows)
        seen.update(row["index"] for row in rows)
    if fmt == "csv":
        yield csv_text([], list(shape.types), header=True).encode()
    drain = _Drain()
    writer = pq.ParquetWriter(drain, shape.schema()) if fmt == "parquet" else None
    async for rows in batches():
        rows = [row for row in rows if row["index"] in seen]
        if not rows:
            continue
        if writer is None:
            yield (await anyio.to_thread.run_sync(lambda: csv_text(rows, list(shape.types), header=False))).encode()
        else:
            table = await anyio.to_thread.run_sync(arrow_table, rows, shape)
            await anyio.to_thread.run_sync(writer.write_table, table)
            yield drain.take()
    if writer is not None:
        if not seen:
            writer.write_table(shape.schema().empty_table())
        writer.close()
        yield drain.take()


def indexed_rows(batch: Iterable[tuple[int, str]]) -> list[Row]:
    """A job store's results batch (index, stored JSON) as rows with `index` first; the
    job's index wins over an `index` column of the row's own (as in the NDJSON results)."""
    out = []
    for index, raw in batch:
        row = json.loads(raw)
        row.pop("index", None)
        out.append({"index": index, **row})
    return out


def iter_batches(rows: list[Row], size: int = BATCH) -> Iterator[list[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def results_response(fmt: str, job_id: str,
                     results: Callable[[], AsyncIterator[list[tuple[int, str]]]]) -> StreamingResponse:
    """A job's results as a CSV or Parquet download; `results()` yields the job store's
    batches of (index, stored row JSON)."""
    from fastapi.responses import StreamingResponse

    async def batches() -> AsyncIterator[list[Row]]:
        async for batch in results():
            yield indexed_rows(batch)

    return StreamingResponse(stream(fmt, batches), media_type=MEDIA_TYPES[fmt],
                             headers={"Content-Disposition": f'attachment; filename="{job_id}.{fmt}"'})
