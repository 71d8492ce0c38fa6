"""Reading a labelled-text file as a user hands it over: TSV, CSV or JSONL, with or without a header row.

What a user's file looks like is detected, never assumed: a header row is recognised by its column names, a headerless
file's label column by its few distinct values and its text column by its length. When the file does not say (a
header of unknown names, a first row that could be either), the error names the file, what was found and the flag that
settles it, in one or two lines: a data problem is the user's to fix, so it must read as such, not as a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TEXT_COLUMNS = ("sentence", "text", "content", "review", "document", "body")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "y")
MAX_LABEL_VALUES = 100  # a headerless column with more distinct values than this is not a label column
PREVIEW = 60  # characters of a row shown in an error


def add_column_options(p: argparse.ArgumentParser) -> None:
    """The flags that settle what detection cannot (every command that reads a user's file takes the same ones)."""
    p.add_argument("--text-column", help="text column: a header name, or an index without a header (default: detected)")
    p.add_argument(
        "--label-column", help="label column (integers or class names): a name or an index (default: detected)"
    )
    p.add_argument(
        "--no-header",
        dest="header",
        action="store_false",
        default=None,
        help="the file's first row is data, not column names (default: detected)",
    )


class DataError(ValueError):
    """A data file that cannot be read as labelled text; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class LabelledRows:
    """The file's texts and raw label values (strings, or what JSON held), each with its line number."""

    texts: list[str]
    labels: list[tuple[int, object]]


def read_labelled(
    path: Path,
    text_column: str | None = None,
    label_column: str | None = None,
    header: bool | None = None,
    classes: Sequence[str] = (),
) -> LabelledRows:
    """The (text, label) rows of ``path``. Columns are names or, in a file without a header, 0-based indices;
    ``header`` None detects it. ``classes`` (an artifact's class names) help the detection: a column of them is the
    label column, and a first row holding one is data."""
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _from_objects(path, _read_jsonl(path), text_column, label_column)
    if suffix not in (".tsv", ".csv", ".txt"):
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .tsv, .csv or .jsonl)")
    rows = _read_delimited(path, "," if suffix == ".csv" else "\t")
    if not rows:
        raise DataError(f"{path}: empty file (expected one labelled text per line: TEXT<TAB>LABEL or LABEL<TAB>TEXT)")
    if header is None:
        header = _has_header(path, rows, text_column, label_column, classes)
    if header:
        names = [h.strip() for h in rows[0][1]]
        objects = [(line, _as_object(path, line, names, values)) for line, values in rows[1:]]
        return _from_objects(path, objects, text_column, label_column, found=names)
    return _headerless(path, rows, text_column, label_column, classes)


def _read_delimited(path: Path, delimiter: str) -> list[tuple[int, list[str]]]:
    """Non-blank rows with their line numbers. CSV quotes fields ("a, b"); TSV does not (GLUE's files hold bare
    quotes inside sentences)."""
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            rows = []
            for values in reader:
                if values and any(v.strip() for v in values):
                    rows.append((reader.line_num, values))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: {exc}") from None
    return rows


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: invalid JSON ({exc.msg}); expected one object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object per line, found {type(obj).__name__}")
            rows.append((line_no, obj))
    if not rows:
        raise DataError(f"{path}: empty file (expected one JSON object per line)")
    return rows


def _preview(values: Sequence[str]) -> str:
    shown = [v if len(v) <= PREVIEW else v[:PREVIEW] + "…" for v in values]
    return repr(shown)


def _has_header(
    path: Path,
    rows: list[tuple[int, list[str]]],
    text_column: str | None,
    label_column: str | None,
    classes: Sequence[str],
) -> bool:
    first = [v.strip() for v in rows[0][1]]
    named = [c for c in (text_column, label_column) if c is not None and not c.isdigit()]
    if named or any(v.lower() in TEXT_COLUMNS + LABEL_COLUMNS for v in first):
        return True
    if any(c is not None and c.isdigit() for c in (text_column, label_column)):
        return False
    if _class_index(rows[:1], classes) is not None:
        return False  # the first row holds one of the known classes: it is data
    label = _label_index(rows[1:]) if len(rows) > 1 else None
    if (
        label is not None
        and label < len(first)
        and any(values[label].strip() == first[label] for _, values in rows[1:])
    ):
        return False  # the first row's label value is one the others use: it is data
    raise DataError(
        f"{path}: cannot tell whether the first row {_preview(first)} is a header; "
        "pass --no-header (columns by index: --text-column 0 --label-column 1) or name the columns in the header"
    )


def _label_index(rows: list[tuple[int, list[str]]]) -> int | None:
    """The column of a headerless file with the fewest distinct values (the shorter on a tie), if its values repeat
    and are few enough to be classes."""
    width = min(len(values) for _, values in rows)
    if width < 2:
        return None
    distinct = [len({values[i].strip() for _, values in rows}) for i in range(width)]
    length = [sum(len(values[i]) for _, values in rows) for i in range(width)]
    best = min(range(width), key=lambda i: (distinct[i], length[i]))
    if distinct[best] > MAX_LABEL_VALUES or distinct[best] >= len(rows):
        return None
    return best


def _class_index(rows: list[tuple[int, list[str]]], classes: Sequence[str]) -> int | None:
    """The column in which most of ``rows`` hold one of the known ``classes`` (None when no column does)."""
    if not classes:
        return None
    known = set(classes)
    width = min(len(values) for _, values in rows)
    hits = [sum(values[i].strip() in known for _, values in rows) for i in range(width)]
    best = max(range(width), key=lambda i: hits[i], default=None)
    return best if best is not None and hits[best] * 2 > len(rows) else None


def _headerless(
    path: Path,
    rows: list[tuple[int, list[str]]],
    text_column: str | None,
    label_column: str | None,
    classes: Sequence[str],
) -> LabelledRows:
    width = max(len(values) for _, values in rows)
    if label_column:
        label = _index(path, label_column, width, "--label-column")
    else:
        label = _class_index(rows, classes)
        label = _label_index(rows) if label is None else label
    if label is None:
        raise DataError(
            f"{path}: no label column found in the first row {_preview(rows[0][1])} (no column has few distinct "
            "values); name it with --label-column INDEX"
        )
    if text_column is not None:
        text = _index(path, text_column, width, "--text-column")
    else:
        others = [i for i in range(width) if i != label]
        text = max(others, key=lambda i: sum(len(v[i]) for _, v in rows if i < len(v)), default=None)
        if text is None:
            raise DataError(f"{path}: one column only, expected a text and a label per line")
    texts, labels = [], []
    for line, values in rows:
        if max(text, label) >= len(values):
            raise DataError(f"{path}:{line}: expected {width} fields, found {len(values)}: {_preview(values)}")
        texts.append(_text(path, line, values[text], f"column {text}"))
        labels.append((line, values[label]))
    return LabelledRows(texts, labels)


def _index(path: Path, column: str, width: int, flag: str) -> int:
    if not column.isdigit() or int(column) >= width:
        raise DataError(f"{path}: {flag} {column!r} in a file without a header must be a column index 0..{width - 1}")
    return int(column)


def _as_object(path: Path, line: int, names: list[str], values: list[str]) -> dict:
    if len(values) != len(names):
        raise DataError(
            f"{path}:{line}: expected {len(names)} fields like the header {_preview(names)}, found {len(values)}"
            + (' (a comma inside a text must be quoted: "a, b")' if path.suffix.lower() == ".csv" else "")
        )
    return dict(zip(names, values, strict=True))


def _from_objects(
    path: Path,
    rows: list[tuple[int, dict]],
    text_column: str | None,
    label_column: str | None,
    found: Sequence[str] | None = None,
) -> LabelledRows:
    texts, labels = [], []
    for line, row in rows:
        keys = found if found is not None else list(row)
        text_col = text_column or next((c for c in keys if c.lower() in TEXT_COLUMNS), None)
        label_col = label_column or next((c for c in keys if c.lower() in LABEL_COLUMNS), None)
        if text_col is None or text_col not in row:
            raise DataError(
                f"{path}:{line}: no text column among {_preview(list(keys))}; name it with --text-column"
                + ("" if text_col is None else f" (asked for {text_col!r})")
            )
        if label_col is None or label_col not in row:
            raise DataError(
                f"{path}:{line}: no label column among {_preview(list(keys))}; name it with --label-column"
                + ("" if label_col is None else f" (asked for {label_col!r})")
            )
        texts.append(_text(path, line, row[text_col], f"column {text_col!r}"))
        labels.append((line, row[label_col]))
    if not texts:
        raise DataError(f"{path}: a header and no examples")
    return LabelledRows(texts, labels)


def _text(path: Path, line: int, value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}:{line}: empty or non-text value in {where}")
    return value.strip()
