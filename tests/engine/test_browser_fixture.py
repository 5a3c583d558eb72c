"""The browser fixture itself: a real Chromium runs the page's script and reports its errors."""

from __future__ import annotations


def test_chromium_runs_scripts_and_reports_console_errors(chromium):
    page, errors = chromium.new_page()
    page.set_content("<h1 id='x'>before</h1><script>document.getElementById('x').textContent = 'after';</script>")
    assert page.text_content("#x") == "after"
    assert errors == []
    page.evaluate("console.error('deliberate')")
    page.wait_for_timeout(50)
    assert errors == ["deliberate"]
