"""The package's self-contained HTML pages (report.html, review.html, prognosis.html): one
page skeleton, one table and embedded PNG figures.

Cells and bodies passed in are HTML already: text is escaped (``html.escape``) where it is
written, so a cell may also hold markup (a link, an image, ``&ndash;``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape


def page(title: str, body: str, css: str) -> str:
    """A whole page: doctype, UTF-8, ``title`` (escaped), the style sheet and ``body``."""
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{css}</style></head><body>{body}</body></html>\n")


def table(head: Sequence[str], rows: Iterable[Sequence[str]], classes: Sequence[str] = ()) -> str:
    """A header row and ``rows`` of HTML cells; column i gets ``class="classes[i]"`` where
    that is given and not empty."""
    attrs = [f' class="{c}"' if c else "" for c in classes]

    def row(tag: str, values: Sequence[str]) -> str:
        return "<tr>" + "".join(f"<{tag}{attrs[i] if i < len(attrs) else ''}>{v}</{tag}>"
                                for i, v in enumerate(values)) + "</tr>"

    return "<table>" + row("th", head) + "".join(row("td", r) for r in rows) + "</table>"


def png_image(png: bytes, alt: str) -> str:
    """An ``<img>`` holding ``png`` as a base64 data URI (the page needs no other file)."""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
