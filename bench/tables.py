"""Tables declared once: a section lists its `Column`s and `Table`s; one renderer makes the Markdown.

A column is a header, the row's key (or a function of the row for derived values such as a percentage)
and a formatter; a table is an optional intro paragraph, its columns, where its rows come from in the
section's result, and notes printed under it. Missing values print as "-".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimes.fileio import atomic_write_json

Row = dict[str, Any]
Result = dict[str, Any]


def fmt_number(value: Any) -> str:
    """Numbers for people: thousands grouped, 2 decimals, 3 significant digits below 1."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if 0 < abs(value) < 1:
            return f"{value:.3g}"
        return f"{value:.2f}"
    return str(value)


@dataclass(frozen=True)
class Column:
    """One table column: `key` names a row field, or computes the cell from the row."""

    header: str
    key: str | Callable[[Row], Any]
    fmt: Callable[[Any], str] = fmt_number

    def value(self, row: Row) -> Any:
        return self.key(row) if callable(self.key) else row.get(self.key)


def _rows(result: Result) -> list[Row]:
    return list(result["rows"])


@dataclass(frozen=True)
class Table:
    """One Markdown table of a section's result.

    `columns` may depend on the result (e.g. one column per measured batch size); `title` and `notes`
    are computed from the result too, since they quote its figures.
    """

    columns: Sequence[Column] | Callable[[Result], Sequence[Column]]
    title: Callable[[Result], str] | None = None
    notes: Callable[[Result], Sequence[str]] | None = None
    rows: Callable[[Result], list[Row]] = _rows


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], fmts: Sequence[Callable] = ()
) -> str:
    """A GitHub Markdown table; columns whose cells are all numbers (or missing) right-aligned."""
    formats = list(fmts) or [fmt_number] * len(headers)
    numeric = [all(not isinstance(row[i], str) or row[i] == "-" for row in rows) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
    ]
    lines += [
        "| " + " | ".join(fmt(cell) for fmt, cell in zip(formats, row, strict=True)) + " |" for row in rows
    ]
    return "\n".join(lines)


def render_table(table: Table, result: Result) -> str:
    """Intro paragraph, the table, then the notes as a bullet list."""
    columns = table.columns(result) if callable(table.columns) else table.columns
    body = markdown_table(
        [c.header for c in columns],
        [[c.value(row) for c in columns] for row in table.rows(result)],
        [c.fmt for c in columns],
    )
    parts = [table.title(result)] if table.title else []
    parts.append(body)
    notes = table.notes(result) if table.notes else ()
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes))
    return "\n\n".join(parts)


def render_section(number: int, heading: str, tables: Sequence[Table], result: Result) -> str:
    """`### N. heading` followed by each of the section's tables."""
    return "\n\n".join([f"### {number}. {heading}", *(render_table(t, result) for t in tables)])


def print_and_write(rendered: str, result: Result, out: str | Path | None) -> None:
    """A standalone bench's ending: print its tables and, where `out` is given, write its JSON there
    (atomically, parent folders made)."""
    print(rendered)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, result)
        print(f"wrote {path}")
