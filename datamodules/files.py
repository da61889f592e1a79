"""Reading data files with line numbers: text and JSON lines line by line, TSV (quoting off) / CSV / JSON-lines tables,
and `DataFormatError`, the one error for bad input (it names the file, the line or record, and what was expected).
"""
from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


class DataFormatError(ValueError):
    """Bad input data: names the file, the line (or record) and what was expected."""


def undecodable(path: Path, line: int, raw: bytes, encoding: str,
                option: str | None = "data.init_args.encoding") -> DataFormatError:
    """The error for bytes that do not decode; `option` is the setting that names another encoding (None where the
    format fixes it, e.g. JSON)."""
    remedy = (f"set {option} if the file is not {encoding}" if option
              else f"the format requires {encoding}: convert the file")
    return DataFormatError(f"{path}, line {line}: bytes {raw!r} cannot be decoded as {encoding} ({remedy})")


def decode_text_file(path: Path, encoding: str = "utf-8", option: str | None = "data.init_args.encoding") -> str:
    """Read a whole text file; undecodable bytes raise DataFormatError with the line number (see `undecodable`)."""
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise undecodable(path, line, raw[err.start:err.end], encoding, option) from None


def iter_decoded_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, text without its newline) of a file read line by line (memory: one line); lines end at
    b"\n" only (U+2028, U+0085 and lone \r are text: valid inside a JSON string), and undecodable bytes raise
    DataFormatError naming the line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise undecodable(path, number, raw[err.start:err.end], encoding) from None


def iter_json_records(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSON-lines file, read line by line; blank lines are skipped, a UTF-8 byte-order
    mark is dropped, and a line that is not a JSON object raises DataFormatError naming it."""
    for number, line in iter_decoded_lines(path, encoding):
        line = line.removeprefix("\ufeff") if number == 1 else line
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}, line {number}: not a JSON object ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataFormatError(f"{path}, line {number}: expected a JSON object per line, got "
                                  f"{type(record).__name__}")
        yield number, record


# ---- reading tabular files (TSV with quoting off, CSV, JSON lines) with line numbers ---------------------------
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long SQuAD-derived sentences exceed the 128 KiB default

Column = str | int  # a header name / JSON key, or a 0-based index


@dataclass
class Table:
    """A file's rows: `header` (None without one), `rows` as lists (TSV/CSV) or dicts (JSON lines), `line_numbers`."""
    path: Path
    header: list[str] | None
    rows: list
    line_numbers: list[int]
    is_json: bool = False

    def column_reader(self, column: Column, required: bool = True):
        """A function row -> value for `column` (a header name, a 0-based index, or a JSON key); None if absent."""
        if self.is_json:
            if not isinstance(column, str):
                raise DataFormatError(f"{self.path}: JSON lines records are read by key, got column index {column}")
            if not required and self.rows and column not in self.rows[0]:
                return None
            return lambda row: row[column]
        if isinstance(column, str):
            if self.header is None:
                raise DataFormatError(f"{self.path}: column {column!r} given by name but the file is read without a "
                                      f"header line (header: false); give 0-based column indices instead")
            if column not in self.header:
                if not required:
                    return None
                raise DataFormatError(f"{self.path}, line 1: missing column {column!r}; the header has {self.header}"
                                      f"{delimiter_hint(self.header, self.path)}")
            index = self.header.index(column)
        else:
            index = int(column)
            width = len(self.header) if self.header is not None else (len(self.rows[0]) if self.rows else 0)
            if not 0 <= index < width:
                if not required:
                    return None
                raise DataFormatError(f"{self.path}: column index {index} is out of range for rows of {width} columns")
        return lambda row: row[index]

    def values(self, column: Column) -> list:
        """Every row's value of `column`; a JSON record without the key is an error naming its line."""
        read = self.column_reader(column)
        out = []
        for row, line in zip(self.rows, self.line_numbers):
            try:
                out.append(read(row))
            except KeyError:
                raise DataFormatError(f"{self.path}, line {line}: missing key {column!r} in the JSON record") from None
        return out


def file_format(path: Path) -> str:
    """'tsv', 'csv' or 'jsonl' from the file extension."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".txt"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise DataFormatError(f"{path}: cannot tell the format from the extension {suffix!r}; "
                          f"expected .tsv, .csv, .jsonl or .json (JSON lines)")


def delimiter_hint(cells: list[str], path: Path) -> str:
    """A hint when a line read as one column holds another delimiter (a CSV saved as .tsv, or the reverse)."""
    if len(cells) != 1:
        return ""
    expected = "tab" if file_format(path) == "tsv" else "comma"
    for mark, name in (("\t", "tab"), (",", "comma"), (";", "semicolon"), ("|", "pipe")):
        if name != expected and mark in cells[0]:
            return (f" (a single column: the line looks {name}-separated, but {path.suffix} files are read "
                    f"{expected}-separated; rename the file or convert it)")
    return ""


def first_row_width(path: Path, encoding: str = "utf-8") -> int:
    """Columns of the first non-blank row of a TSV/CSV file, reading no further (0 for a file without rows)."""
    quoting = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if file_format(path) == "tsv" else {}
    with open(path, encoding=encoding, errors="replace", newline="") as handle:
        for row in csv.reader(handle, **quoting):
            if row and not (len(row) == 1 and not row[0].strip()):
                return len(row)
    return 0


def read_table(path: Path, header: bool = True, encoding: str = "utf-8") -> Table:
    """Read a TSV (quoting off), CSV or JSON-lines file; every row must have as many columns as the first line.

    A UTF-8 byte-order mark (MRPC) is dropped; blank lines are skipped; errors name the file and line.
    """
    fmt = file_format(path)
    if fmt == "jsonl":
        numbered = list(iter_json_records(path, encoding))
        if not numbered:
            raise DataFormatError(f"{path}: the file is empty; expected one JSON object per line")
        return Table(path, None, [r for _, r in numbered], [n for n, _ in numbered], is_json=True)
    text = decode_text_file(path, encoding).removeprefix("\ufeff")

    if fmt == "tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    kind = "tab-separated" if fmt == "tsv" else "comma-separated"
    table_header, rows, lines, width = None, [], [], None
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if width is None:
                width, first_cells = len(row), row
                if header:
                    table_header = row
                    continue
            if len(row) != width:
                raise DataFormatError(f"{path}, line {reader.line_num}: expected {width} {kind} columns "
                                      f"(as in the {'header' if header else 'first line'}), found {len(row)}"
                                      f"{delimiter_hint(first_cells if width == 1 else row, path)}")
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise DataFormatError(f"{path}, line {reader.line_num}: malformed {fmt.upper()} ({err})") from None
    if width is None:
        raise DataFormatError(f"{path}: the file is empty; expected {'a header line, then ' if header else ''}rows of "
                              f"{kind} columns")
    if not rows:
        raise DataFormatError(f"{path}: only a header line {table_header}, no rows")
    return Table(path, table_header, rows, lines)
