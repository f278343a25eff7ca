"""The handover as a PDF (fpdf2): the same sections and sentences as the Markdown, on A4, with a Unicode font.

Imported only by what exports a PDF (``shift report --format pdf``, the dashboard's download), never by the service.
"""

from __future__ import annotations

from pathlib import Path

from fpdf import FPDF

from factory_copilot.records import Handover
from factory_copilot.shift.document import acknowledgements, cite, sections, subtitle, title

# DejaVu Sans (Debian's fonts-dejavu-core) has every character a handover uses (dashes, ≤, ·, accents)
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))


def _font(pdf: FPDF) -> str:
    for d in FONT_DIRS:
        regular, bold = d / "DejaVuSans.ttf", d / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            pdf.add_font("DejaVu", "", str(regular))
            pdf.add_font("DejaVu", "B", str(bold))
            return "DejaVu"
    return "Helvetica"  # latin-1 only: other characters are replaced below


def _text(font: str, text: str) -> str:
    return text if font != "Helvetica" else text.encode("latin-1", "replace").decode("latin-1")


def handover_pdf(h: Handover) -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_title(title(h))
    pdf.set_creator("Factory Copilot")
    font = _font(pdf)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    pdf.set_font(font, "B", 15)
    pdf.multi_cell(width, 8, _text(font, title(h)), new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.set_font(font, "", 9)
    pdf.set_text_color(90, 90, 90)
    pdf.multi_cell(width, 5, _text(font, subtitle(h)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    for heading, found in sections(h) + [("Acknowledged by the incoming shift",
                                         [{"text": a, "refs": []} for a in acknowledgements(h)]
                                         or [{"text": "Not acknowledged yet.", "refs": []}])]:
        pdf.ln(3)
        pdf.set_font(font, "B", 11.5)
        pdf.multi_cell(width, 7, _text(font, heading), new_x="LMARGIN", new_y="NEXT")
        for s in found:
            pdf.set_font(font, "", 9.5)
            pdf.set_x(pdf.l_margin)
            pdf.multi_cell(width, 5, _text(font, "• " + s["text"]), new_x="LMARGIN", new_y="NEXT", align="L")
            if s.get("refs"):
                pdf.set_font(font, "", 7.5)
                pdf.set_text_color(110, 110, 110)
                pdf.set_x(pdf.l_margin + 4)
                pdf.multi_cell(width - 4, 4, _text(font, "[" + cite(s["refs"]) + "]"), new_x="LMARGIN", new_y="NEXT")
                pdf.set_text_color(0, 0, 0)
    return bytes(pdf.output())
