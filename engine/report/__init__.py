"""``eac report``: one self-contained static HTML page about a whole run (no server, no CDN; opens offline).

- :mod:`~eac.engine.report.source` — :func:`read_run`: a Parquet dataset run or explanation folders, as rows;
- :mod:`~eac.engine.report.page` — the page: counts, failures, galleries per class, the most influential
  concepts, a sortable, paged table;
- :mod:`~eac.engine.report.build` — :func:`write_report`: the pictures and the page, written atomically.
"""

from .build import FILES_NAME, REPORT_NAME, ReportSummary, write_report
from .source import ReportRow, Run, read_run

__all__ = ["FILES_NAME", "REPORT_NAME", "ReportRow", "ReportSummary", "Run", "read_run", "write_report"]
