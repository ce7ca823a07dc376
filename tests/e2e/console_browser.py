"""The browser side of the console's tests: Debian's Chromium driven by Playwright, axe-core injected
into every page, a Content-Security-Policy violation listener on every page, and screenshots kept under
``tests/artifacts/console/<test>/``. ``browser_or_skip`` says why when the browser or axe-core is missing
(``deploy/install.sh`` installs both)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / "var" / "node" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
BLOCKING_IMPACTS = ("serious", "critical")

# Runs in every page before its own scripts (and outside its CSP): each violation is reported back.
_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.reportCspViolation({page: location.href, directive: e.violatedDirective, blocked: e.blockedURI,
                             sample: e.sample});
});
"""
_AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
                                         nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" "))}));
}"""


def browser_or_skip() -> Any:
    """Playwright's sync API, or a skip that names what is missing."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); deploy/install.sh installs it")
    if not AXE.exists():
        pytest.skip(f"axe-core is not installed ({AXE.relative_to(ROOT)}); deploy/install.sh installs it from npm")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed; deploy/install.sh installs it")
    return sync_playwright


@dataclass
class Journey:
    """One browser context with its listeners, and what they recorded."""

    page: Any
    shots_dir: Path
    csp_violations: list[dict[str, str]] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    shots: int = 0

    def check(self, name: str) -> list[dict[str, Any]]:
        """Screenshot the page and run axe-core on it; the serious and critical violations."""
        self.page.wait_for_load_state("load")
        self.shots += 1
        self.page.screenshot(path=str(self.shots_dir / f"{self.shots:02d}-{name}.png"), full_page=True)
        self.page.evaluate(AXE.read_text())
        violations = self.page.evaluate(_AXE_RUN)
        return [v for v in violations if v["impact"] in BLOCKING_IMPACTS]

    def assert_accessible(self, name: str) -> None:
        blocking = self.check(name)
        assert not blocking, f"axe-core on {name} ({self.page.url}):\n{json.dumps(blocking, indent=2)}"


def journey(base_url: str, name: str) -> Iterator[Journey]:
    """A fresh browser context (no cookies) with the listeners installed; screenshots go to ``name``."""
    sync_playwright = browser_or_skip()
    shots = ARTIFACTS / name
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        context = browser.new_context(base_url=base_url, accept_downloads=True, viewport={"width": 1280, "height": 900},
                                      locale="en-GB", timezone_id="Europe/London")
        recorded = Journey(page=None, shots_dir=shots)
        context.expose_function("reportCspViolation", lambda violation: recorded.csp_violations.append(violation))
        context.add_init_script(_CSP_LISTENER)
        page = context.new_page()
        page.on("console", lambda m: recorded.console_errors.append(m.text) if m.type == "error" else None)
        recorded.page = page
        try:
            yield recorded
        finally:
            context.close()
            browser.close()
