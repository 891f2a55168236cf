"""The explorer in a real browser (``python -m reproduce.browser``): runs where Chromium,
chromedriver and selenium are installed, and says why it is skipped elsewhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from reproduce import browser  # noqa: E402


@pytest.mark.skipif(bool(browser.missing_tools()),
                    reason=f"browser check needs {', '.join(browser.missing_tools())} "
                           "(apt-get install chromium chromium-driver; pip install selenium)")
def test_explorer_in_headless_chromium(tmp_path):
    status = browser.main(["--profile", "smoke", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "browser_check.json").read_text())
    assert status == 0, result
    assert result["checks"] == {"alpha_slider": True, "style_dropdown": True, "no_widget_error": True,
                                "first_picture": True}
