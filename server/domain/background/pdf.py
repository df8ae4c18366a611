"""PDF layout with fpdf2: a :class:`Sheet` (plain data) in, the bytes of a PDF out.

No I/O and no database here, so the layout is tested on its own and the same sheet
always gives the same bytes (the creation date is the document's own time). The core
fonts cover Latin-1; other characters are folded to their base letter or shown as ``?``.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass, field

from fpdf import FPDF
from fpdf.fonts import FontFace


@dataclass
class Sheet:
    """One document: a heading block, a table, totals and notes."""

    company: str
    title: str  # "Invoice", "Receipt", "Customer statement", ...
    created_at: int  # ms; printed and used as the PDF's creation date
    meta: list[tuple[str, str]] = field(default_factory=list)  # ("Invoice no.", "INV-000001"), ...
    party: list[str] = field(default_factory=list)  # bill-to block
    columns: list[str] = field(default_factory=list)
    widths: list[float] = field(default_factory=list)  # relative; numbers are right-aligned from `numeric_from`
    rows: list[list[str]] = field(default_factory=list)
    numeric_from: int = 2  # columns at or after this index are right-aligned
    totals: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def latin1(text: str) -> str:
    """What the core PDF fonts can draw: Latin-1 as is, accents folded, the rest ``?``."""
    out = []
    for char in text:
        if ord(char) < 256:
            out.append(char)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        out.append(base if base and all(ord(c) < 256 for c in base) else "?")
    return "".join(out)


def _when(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)


def render(sheet: Sheet) -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_creation_date(_when(sheet.created_at))
    pdf.set_title(latin1(f"{sheet.title} {sheet.meta[0][1] if sheet.meta else ''}".strip()))
    pdf.set_author(latin1(sheet.company))
    pdf.set_creator("fieldsync")
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.add_page()
    _heading(pdf, sheet)
    _table(pdf, sheet)
    _totals(pdf, sheet)
    for note in sheet.notes:
        pdf.set_font("Helvetica", size=9)
        pdf.multi_cell(0, 5, latin1(note), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _heading(pdf: FPDF, sheet: Sheet) -> None:
    pdf.set_font("Helvetica", style="B", size=16)
    pdf.cell(0, 9, latin1(sheet.company), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=13)
    pdf.cell(0, 8, latin1(sheet.title), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", size=10)
    for label, value in sheet.meta:
        pdf.cell(35, 5.5, latin1(label))
        pdf.cell(0, 5.5, latin1(value), new_x="LMARGIN", new_y="NEXT")
    if sheet.party:
        pdf.ln(3)
        pdf.set_font("Helvetica", style="B", size=10)
        pdf.cell(0, 5.5, latin1(sheet.party[0]), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=10)
        for line in sheet.party[1:]:
            pdf.cell(0, 5.5, latin1(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(5)


def _table(pdf: FPDF, sheet: Sheet) -> None:
    if not sheet.columns:
        return
    pdf.set_font("Helvetica", size=9)
    align = ["LEFT" if i < sheet.numeric_from else "RIGHT" for i in range(len(sheet.columns))]
    heading = FontFace(emphasis="BOLD", fill_color=(230, 230, 230))
    with pdf.table(col_widths=sheet.widths or None, text_align=align, headings_style=heading,
                   line_height=5.5, borders_layout="HORIZONTAL_LINES") as table:
        row = table.row()
        for name in sheet.columns:
            row.cell(latin1(name))
        for values in sheet.rows or [["(none)"] + [""] * (len(sheet.columns) - 1)]:
            row = table.row()
            for value in values:
                row.cell(latin1(value))
    pdf.ln(3)


def _totals(pdf: FPDF, sheet: Sheet) -> None:
    for index, (label, value) in enumerate(sheet.totals):
        last = index == len(sheet.totals) - 1
        pdf.set_font("Helvetica", style="B" if last else "", size=11 if last else 10)
        pdf.cell(pdf.epw - 45, 6.5, latin1(label), align="R")
        pdf.cell(45, 6.5, latin1(value), align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
