"""A real headless Chromium for browser tests (Debian's ``chromium`` package, driven by Playwright).

Playwright's own browser download cannot work on machines without general network
access, so the tests launch the system Chromium (``/usr/bin/chromium``, or
``$EAC_CHROMIUM``). ``.ci/run`` installs it with apt-get; where neither the
browser nor the ``playwright`` package is present the browser tests are skipped
with the reason.

Usage::

    def test_page(chromium):
        page, console_errors = chromium.new_page()
        page.goto(url)
        ...
        assert console_errors == []
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

#: Where Debian's chromium package puts the browser.
DEFAULT_CHROMIUM = "/usr/bin/chromium"
#: Flags for a root, headless, offline browser: no sandbox (root in a container), no GPU, and none of
#: Chromium's background connections, which this machine's closed network refuses.
CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium_path() -> str | None:
    """The Chromium executable to use, or None when there is none."""
    path = os.environ.get("EAC_CHROMIUM", DEFAULT_CHROMIUM)
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else shutil.which("chromium")


@dataclass
class Browser:
    """A launched Chromium; ``new_page()`` returns a page and the list its console errors go to."""

    browser: Any
    pages: list[Any] = field(default_factory=list)

    def new_page(self, **options: Any) -> tuple[Any, list[str]]:
        page = self.browser.new_page(**options)
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        self.pages.append(page)
        return page, errors


@contextmanager
def launch() -> Iterator[Browser]:
    """Launch headless Chromium with a fresh profile; skips the test when it cannot."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (dev extra)")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium (apt-get install chromium chromium-driver)")
    with tempfile.TemporaryDirectory(prefix="eac-chromium-") as profile, sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=path, headless=True,
                                                       args=list(CHROMIUM_FLAGS))
        try:
            yield Browser(context)
        finally:
            context.close()
