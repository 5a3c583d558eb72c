"""``eac report OUT``: a static HTML report of a run (``OUT/report.html`` and ``OUT/report_files/``)."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from .options import non_negative_int, positive_int
from .report import plural


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one static HTML page about a run: counts, failures, overlays per class, "
                                      "the most influential concepts, a sortable table")
    p.add_argument("out", help="the --out folder of `eac explain` (a Parquet run, or one folder per image)")
    p.add_argument("--top-k", type=non_negative_int, default=5, help="concepts drawn on each overlay (default 5)")
    p.add_argument("--page-rows", type=positive_int, default=100, help="table rows per page (default 100)")
    p.add_argument("--gallery", type=non_negative_int, default=48,
                   help="thumbnails shown per class; the table has every row (default 48)")
    p.add_argument("--concepts", type=non_negative_int, default=24,
                   help="cut-outs of the most influential concepts (default 24)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    bars: list[tqdm] = []  # made at the first row, so an error before any work prints no empty bar

    def progress(done: int, total: int) -> None:
        if args.no_progress:
            return
        if not bars:
            bars.append(tqdm(total=total, desc="report", unit="row", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        summary = write_report(args.out, top_k=args.top_k, page_rows=args.page_rows,
                               gallery_per_class=args.gallery, concepts=args.concepts, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    extra = "".join([f", {summary.failed} failed" if summary.failed else "",
                     f", {summary.problems} images not shown (see the page)" if summary.problems else ""])
    print(f"wrote {summary.page} ({plural(summary.images, 'image')}, {plural(summary.rows, 'row')}{extra}); "
          "it opens offline")
    return 0
