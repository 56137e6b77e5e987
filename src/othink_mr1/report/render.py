"""How the report's tables are written out: Markdown (tables.md and what the report prints), CSV (one file
per table) and LaTeX (tables.tex).

A Table holds text only: its title, columns, rows of cell text, the cells marked best and notes. What goes
into it (which runs, the means over seeds, relative changes, the paper's numbers) is computed in
report/tables.py and report/frontier.py; this module decides only how a finished Table looks. Best cells
are bold in Markdown and LaTeX and end in " *" in CSV.
"""

from __future__ import annotations

import csv as csv_module
import io
from dataclasses import dataclass, field
from typing import Iterable

# Characters LaTeX reads otherwise -> what renders them, in the order they are replaced (the backslash first).
LATEX_ESCAPES = (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("→", r"$\rightarrow$"), ("Δ", r"$\Delta$"), ("—", "---"), ("−", "-"))


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    best: set[tuple[int, int]] = field(default_factory=set)  # (row, column) marked best
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        return markdown(self)

    def csv(self) -> str:
        return csv_text(self)

    def latex(self) -> str:
        return latex(self)


def markdown(table: Table) -> str:
    """A `### title` heading, a pipe table (best cells in bold) and the notes in italics."""
    def cell(i: int, j: int, text: str) -> str:
        return f"**{text}**" if (i, j) in table.best else text

    lines = [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |",
             "|" + "|".join(" --- " for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(i, j, t) for j, t in enumerate(row)) + " |" for i, row in enumerate(table.rows)]
    lines += [""] + [f"_{note}_" for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def csv_text(table: Table) -> str:
    """The columns and rows as CSV (best cells end in " *"); no title, no notes."""
    out = io.StringIO()
    writer = csv_module.writer(out, lineterminator="\n")
    writer.writerow(table.columns)
    for i, row in enumerate(table.rows):
        writer.writerow([f"{t} *" if (i, j) in table.best else t for j, t in enumerate(row)])
    return out.getvalue()


def latex_escape(text: str) -> str:
    for a, b in LATEX_ESCAPES:
        text = text.replace(a, b)
    return text


def latex(table: Table) -> str:
    """A booktabs table environment with the title as caption (best cells in bold); no notes."""
    def cell(i: int, j: int, text: str) -> str:
        return rf"\textbf{{{latex_escape(text)}}}" if (i, j) in table.best else latex_escape(text)

    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.title)}}}",
             r"\begin{tabular}{" + "l" * len(table.columns) + "}", r"\toprule",
             " & ".join(latex_escape(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(i, j, t) for j, t in enumerate(row)) + r" \\" for i, row in enumerate(table.rows)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def markdown_document(tables: Iterable[Table]) -> str:
    """tables.md (and what the report prints): the tables in order, a blank line between them."""
    return "\n".join(markdown(t) for t in tables)


def latex_document(tables: Iterable[Table]) -> str:
    """tables.tex: the tables' environments in order, a blank line between them."""
    return "\n".join(latex(t) for t in tables)
