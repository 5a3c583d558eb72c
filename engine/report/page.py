"""The report's one HTML page: self-contained (inline CSS and script, relative image links, no CDN).

:func:`page_html` turns a :class:`PageData` into the page. The table holds every
row; its script sorts by any column and shows :attr:`PageData.page_rows` rows at a
time, and images load lazily (``loading="lazy"``, and rows on other pages are
hidden, so their thumbnails are not fetched), so a run of thousands of images
opens at once. Every cell keeps its exact value in ``data-v`` (numbers as
Python's shortest round-trip text), which is what sorting (and a test) reads.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

from .source import ReportRow, Run

#: Table columns: (key, header, type) — "num" columns sort as numbers, empty cells last.
COLUMNS = (
    ("thumb", "", "none"), ("image", "image", "text"), ("class", "class", "text"),
    ("probability", "probability", "num"), ("top_concept", "top concept", "num"), ("top_value", "top value", "num"),
    ("top_stderr", "± (stderr)", "num"), ("evaluations", "evaluations", "num"), ("stop_reason", "stop reason", "text"),
    ("ties", "tied concepts", "num"), ("status", "status", "text"), ("note", "note", "text"),
)
#: Significant digits of numbers shown in the page (``data-v`` keeps them all).
SHOWN_DIGITS = 4
#: Thumbnails' shown width in the table, in CSS pixels.
TABLE_THUMB_PX = 72

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;
  padding:0 20px 40px;color:#111}
h1{font-size:1.6em;margin:.8em 0 .1em}
h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.muted{color:#666}
.counts{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.count{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:90px}
.count b{display:block;font-size:1.5em}
.bad b{color:#b00}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:204px}
figure img{display:block;max-width:200px;max-height:200px;border:1px solid #ccc;background:#f4f4f4}
figcaption{font-size:12px;color:#333;overflow-wrap:anywhere}
.cut img{background:repeating-conic-gradient(#eee 0 25%,#fff 0 50%) 0 0/16px 16px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e4e4e4;padding:3px 6px;text-align:left;vertical-align:middle}
th button{font:inherit;font-weight:600;border:0;background:none;cursor:pointer;padding:0}
th[aria-sort=ascending] button::after{content:" ▲"}
th[aria-sort=descending] button::after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fff3f3}
.pager{margin:8px 0;display:flex;gap:10px;align-items:center}
nav.classes a{margin-right:12px}
"""

SCRIPT = """
(function () {
  var table = document.getElementById("rows");
  if (!table) { return; }
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  var size = parseInt(table.getAttribute("data-page-rows"), 10), page = 0;
  var prev = document.getElementById("prev"), next = document.getElementById("next");
  var label = document.getElementById("page");
  function show() {
    var pages = Math.max(1, Math.ceil(rows.length / size));
    page = Math.min(Math.max(page, 0), pages - 1);
    rows.forEach(function (row, i) { row.hidden = Math.floor(i / size) !== page; });
    label.textContent = "page " + (page + 1) + " of " + pages + " (" + rows.length + " rows)";
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }
  function key(row, c, numeric) {
    var v = row.cells[c].getAttribute("data-v");
    if (!numeric) { return v; }
    return v === "" ? null : parseFloat(v);
  }
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  headers.forEach(function (th, c) {
    var button = th.querySelector("button");
    if (!button) { return; }
    button.addEventListener("click", function () {
      var numeric = th.getAttribute("data-type") === "num";
      var up = th.getAttribute("aria-sort") !== "ascending";
      headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      rows.sort(function (a, b) {
        var x = key(a, c, numeric), y = key(b, c, numeric);
        if (x === y) { return 0; }
        if (x === null) { return 1; }
        if (y === null) { return -1; }
        var d = numeric ? x - y : (x < y ? -1 : 1);
        return up ? d : -d;
      });
      rows.forEach(function (row) { body.appendChild(row); });
      page = 0;
      show();
    });
  });
  prev.addEventListener("click", function () { page -= 1; show(); });
  next.addEventListener("click", function () { page += 1; show(); });
  show();
})();
"""


@dataclass
class Card:
    """One picture in a gallery: thumbnail, the full picture it links to, caption lines."""

    thumb: str
    full: str
    caption: list[str]
    width: int
    height: int


@dataclass
class PageData:
    """Everything the page shows."""

    title: str
    run: Run
    created: str
    version: str
    page_rows: int
    classes: list[tuple[str, list[Card], int]] = field(default_factory=list)
    concepts: list[Card] = field(default_factory=list)
    thumbs: dict[int, Card] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def exact(value: Any) -> str:
    """A cell's ``data-v``: numbers as their shortest round-trip text, None as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def shown(value: Any, signed: bool = False) -> str:
    """A cell's text: numbers with :data:`SHOWN_DIGITS` significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:+.{SHOWN_DIGITS}g}" if signed else f"{value:.{SHOWN_DIGITS}g}"
    return str(value)


def row_cells(row: ReportRow) -> dict[str, Any]:
    """The exact value of each column of a row (what ``data-v`` holds)."""
    return {
        "image": row.image, "class": row.class_name if row.ok else "", "probability": row.probability,
        "top_concept": row.top_concept, "top_value": row.top_value, "top_stderr": row.top_stderr,
        "evaluations": row.num_evaluations, "stop_reason": row.stop_reason, "ties": row.tied,
        "status": row.status, "note": row.error or row.image_problem,
    }


def _card_html(card: Card, css: str = "") -> str:
    caption = "<br>".join(_e(line) for line in card.caption)
    return (f'<figure class="{css}"><a href="{_e(card.full)}"><img src="{_e(card.thumb)}" loading="lazy" '
            f'width="{card.width}" height="{card.height}" alt="{_e(card.caption[0])}"></a>'
            f"<figcaption>{caption}</figcaption></figure>")


def _counts(data: PageData) -> str:
    run = data.run
    ok_images = len({r.image for r in run.rows if r.ok})
    failed_images = len({r.image for r in run.failures})
    items = [("images", run.images, ""), ("explained", ok_images, ""), ("failed", failed_images, "bad" if
             failed_images else ""), ("rows (image × class)", len(run.rows), ""),
             ("classes", len(data.classes), ""), ("image problems", len(data.problems), "bad" if data.problems else "")]
    boxes = "".join(f'<div class="count {css}" id="count-{_e(name.split()[0])}"><b>{_e(value)}</b>{_e(name)}</div>'
                    for name, value, css in items)
    return f'<div class="counts">{boxes}</div>'


def _failures(data: PageData) -> str:
    parts = []
    if data.run.failures:
        rows = "".join(f"<tr><td>{_e(r.image)}</td><td>{_e(r.error)}</td></tr>" for r in data.run.failures)
        parts.append(f'<section id="failures"><h2>Failures ({len(data.run.failures)})</h2>'
                     f'<table id="failure-table"><thead><tr><th>image</th><th>reason</th></tr></thead>'
                     f"<tbody>{rows}</tbody></table></section>")
    if data.problems:
        rows = "".join(f"<tr><td>{_e(image)}</td><td>{_e(problem)}</td></tr>" for image, problem in data.problems)
        parts.append(f'<section id="problems"><h2>Images that could not be shown ({len(data.problems)})</h2>'
                     '<p class="muted">Their concepts are drawn on grey; values and masks come from the run.</p>'
                     f"<table><thead><tr><th>image</th><th>what is missing</th></tr></thead><tbody>{rows}</tbody>"
                     "</table></section>")
    return "".join(parts)


def _classes(data: PageData) -> str:
    if not data.classes:
        return ""
    links = " ".join(f'<a href="#class-{k}">{_e(name)} ({total})</a>' for k, (name, _, total) in
                     enumerate(data.classes))
    parts = [f'<h2 id="classes">Images by explained class</h2><nav class="classes">{links}</nav>']
    for k, (name, cards, total) in enumerate(data.classes):
        more = (f'<p class="muted">and {total - len(cards)} more in the table below</p>' if total > len(cards)
                else "")
        parts.append(f'<h3 id="class-{k}">{_e(name)} <span class="muted">({total})</span></h3>'
                     f'<div class="grid">{"".join(_card_html(c) for c in cards)}</div>{more}')
    return "".join(parts)


def _concepts(data: PageData) -> str:
    if not data.concepts:
        return ""
    return ('<h2 id="concepts">Most influential concepts</h2><p class="muted">The largest values across the run: '
            "each concept raised its class's probability by about this much (value ± standard error).</p>"
            f'<div class="grid">{"".join(_card_html(c, "cut") for c in data.concepts)}</div>')


def _table(data: PageData) -> str:
    head = "".join(f'<th data-type="{kind}" data-key="{key}">' + (f"<button>{_e(title)}</button>" if title else "")
                   + "</th>" for key, title, kind in COLUMNS)
    body = []
    for k, row in enumerate(data.run.rows):
        cells = row_cells(row)
        card = data.thumbs.get(k)
        thumb = (f'<a href="{_e(card.full)}"><img src="{_e(card.thumb)}" loading="lazy" width="{TABLE_THUMB_PX}" '
                 f'alt=""></a>' if card else "")
        tds = [f'<td data-v="">{thumb}</td>']
        for key, _, kind in COLUMNS[1:]:
            value = cells[key]
            text = shown(value, signed=key == "top_value")
            tds.append(f'<td data-v="{_e(exact(value))}"' + (' class="num"' if kind == "num" else "")
                       + f">{_e(text)}</td>")
        body.append(f'<tr class="{_e(row.status)}">' + "".join(tds) + "</tr>")
    pager = ('<div class="pager"><button id="prev">‹ previous</button><span id="page"></span>'
             '<button id="next">next ›</button><span class="muted">click a column to sort</span></div>')
    return (f'<h2 id="table">All rows</h2>{pager}<table id="rows" data-page-rows="{data.page_rows}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def page_html(data: PageData) -> str:
    """The whole page.

    Parameters
    ----------
    data : PageData

    Returns
    -------
    str
        An HTML5 document with no external resource but its own image files.
    """
    run = data.run
    methods = sorted({r.method for r in run.rows if r.method})
    source = "a Parquet dataset run" if run.kind == "parquet" else "explanation folders"
    notes = "".join(f"<li>{_e(n)}</li>" for n in run.notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(data.title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{_e(data.title)}</h1><p class=\"muted\">{_e(source)} in {_e(run.folder)}; method "
        f"{_e(', '.join(methods) or 'n/a')}; made {_e(data.created)} by eac {_e(data.version)}</p>"
        f"{_counts(data)}" + (f"<ul class=\"muted\">{notes}</ul>" if notes else "")
        + _failures(data) + _classes(data) + _concepts(data) + _table(data)
        + f"<script>{SCRIPT}</script></body></html>\n"
    )
