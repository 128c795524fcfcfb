"""The built site in a real browser: every page of a Jupyter Book build opened in headless Chromium.

`python tests/site_check.py SITE [--screenshots DIR]` (`make site-check`) serves SITE (e.g. `_build/html`) on
127.0.0.1 and, per page, asserts: no request leaves the machine (each is blocked and counted), no JavaScript error,
MathJax typeset every formula, every image loaded, every hidden code cell's toggle opens it, and every widget
snapshot rendered. It saves one screenshot per page. Without Chromium or Playwright it prints "skipped" and why.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# the probe's flags: without the background-networking ones Chromium calls Google's hosts at every start
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
WIDGET_VIEW = 'script[type="application/vnd.jupyter.widget-view+json"]'
WIDGET_STATE = 'script[type="application/vnd.jupyter.widget-state+json"]'
RENDER_WAIT_MS = 20_000  # MathJax and the widget manager render after the load event

# In the page: how many formulas MathJax left untypeset or in error, and the images that did not load.
MATH_AND_IMAGES = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const math = [...document.querySelectorAll('.math')];
  return {math: math.length,
          untypeset: math.filter(m => !m.querySelector('mjx-container')).length,
          math_errors: document.querySelectorAll('mjx-merror').length,
          images: document.images.length,
          broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)};
}"""
# Each widget snapshot (a view script) is rendered by the widget manager into the element inserted before it.
WIDGETS_RENDERED = f"""() => [...document.querySelectorAll('{WIDGET_VIEW}')].every(
  s => s.previousElementSibling && s.previousElementSibling.querySelector('.jupyter-widgets, .widget-inline-hbox, '
       + '.widget-box, .widget-image, .jupyter-matplotlib, img'))"""


@dataclass
class PageReport:
    """What one page did in the browser: counts, and the failures (empty when the page passed)."""

    path: str
    images: int = 0
    math: int = 0
    toggles: int = 0
    widgets: int = 0
    blocked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line: ok or FAIL, the page, its counts and its failures."""
        counts = (f"images {self.images}, formulas {self.math}, code toggles {self.toggles}, "
                  f"widget snapshots {self.widgets}, outside requests blocked {len(self.blocked)}")
        status = "FAIL" if self.failures else "ok  "
        return f"{status} {self.path} ({counts})" + "".join(f"\n       - {f}" for f in self.failures)


def find_chromium() -> str | None:
    """The path of a Chromium on PATH, or None."""
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def site_pages(site: Path) -> list[Path]:
    """Every HTML page of a build, relative to it, leaving out Sphinx's copied sources and static files."""
    return sorted(p.relative_to(site) for p in site.rglob("*.html")
                  if not {"_sources", "_static", "_images"} & set(p.relative_to(site).parts))


@contextmanager
def served(site: Path) -> Iterator[str]:
    """Serve `site` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def check_page(context, base: str, path: Path, screenshot: Path | None) -> PageReport:
    """Open one page and check it (see the module docstring); a screenshot of the whole page when asked."""
    report = PageReport(str(path))
    page = context.new_page()
    page.on("console", lambda message: message.type == "error" and report.failures.append(
        f"console error: {message.text}"))
    page.on("pageerror", lambda error: report.failures.append(f"JavaScript error: {error}"))
    page.on("requestfailed", lambda request: request.url.startswith(base) and report.failures.append(
        f"failed to load {request.url[len(base):]}: {request.failure}"))
    page.on("response", lambda response: response.url.startswith(base) and response.status >= 400 and
            report.failures.append(f"HTTP {response.status} for {response.url[len(base):]}"))
    page.route("**/*", lambda route: _local_only(route, base, report))
    page.goto(base + path.as_posix(), wait_until="load")
    page.wait_for_load_state("networkidle")
    _check_math_and_images(page, report)
    _check_toggles(page, report)
    _check_widgets(page, report)
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return report


def _local_only(route, base: str, report: PageReport) -> None:
    if route.request.url.startswith(base):
        route.continue_()
    else:  # the site must work offline: nothing may leave the machine
        report.blocked.append(route.request.url)
        report.failures.append(f"request leaving the machine (blocked): {route.request.url}")
        route.abort()


def _check_math_and_images(page, report: PageReport) -> None:
    found = page.evaluate(MATH_AND_IMAGES)
    report.images, report.math = found["images"], found["math"]
    if found["untypeset"]:
        report.failures.append(f"MathJax did not typeset {found['untypeset']} of {found['math']} formulas")
    if found["math_errors"]:
        report.failures.append(f"MathJax reported {found['math_errors']} formula errors")
    report.failures.extend(f"image did not load: {src}" for src in found["broken"])


def _check_toggles(page, report: PageReport) -> None:
    """Each hidden code cell (myst-nb's <details class="hide">) opens when its summary is clicked."""
    toggles = page.locator("details.hide")
    report.toggles = toggles.count()
    for index in range(report.toggles):
        details = toggles.nth(index)
        details.locator("summary").first.click()
        opened = details.evaluate("d => d.open && [...d.children].some(c => c.tagName !== 'SUMMARY' && "
                                  "c.getBoundingClientRect().height > 0)")
        if not opened:
            report.failures.append(f"code toggle {index + 1} of {report.toggles} did not open its cell")


def _check_widgets(page, report: PageReport) -> None:
    report.widgets = page.locator(WIDGET_VIEW).count()
    if not report.widgets:
        return
    if not page.locator(WIDGET_STATE).count():
        report.failures.append(f"{report.widgets} widget views but no embedded widget state")
        return
    try:
        page.wait_for_function(WIDGETS_RENDERED, timeout=RENDER_WAIT_MS)
    except Exception:  # playwright's TimeoutError: say which check, not a traceback
        report.failures.append(f"widget snapshots not rendered within {RENDER_WAIT_MS // 1000} s")


def check_site(site: Path, screenshots: Path | None, chromium: str) -> list[PageReport]:
    """Open every page of `site` in headless Chromium; one report per page."""
    from playwright.sync_api import sync_playwright

    pages = site_pages(site)
    if not pages:
        raise FileNotFoundError(f"{site}: no HTML pages (build the book first)")
    with served(site) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            return [check_page(context, base, path, _screenshot_path(screenshots, path)) for path in pages]
        finally:
            browser.close()


def _screenshot_path(screenshots: Path | None, page: Path) -> Path | None:
    return None if screenshots is None else screenshots / page.with_suffix(".png")


def main(argv: list[str] | None = None) -> int:
    """Command line: check a built site; exit 1 when a page fails, 0 when every page passed or the check is skipped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="a built site, e.g. _build/html")
    parser.add_argument("--screenshots", type=Path, help="folder for one screenshot per page "
                        "(default: SITE/../screenshots)")
    args = parser.parse_args(argv)
    chromium = find_chromium()
    try:
        import playwright  # noqa: F401
    except ImportError:
        chromium, reason = None, "the Python package playwright is not installed (pip install -e '.[test]')"
    else:
        reason = f"no Chromium on PATH ({', '.join(CHROMIUM_NAMES)}); as root: apt-get install chromium"
    if chromium is None:
        print(f"site-check: SKIPPED, not passed: {reason}")
        return 0
    screenshots = args.screenshots or args.site.parent / "screenshots"
    reports = check_site(args.site, screenshots, chromium)
    for report in reports:
        print(report.line())
    failed = [r for r in reports if r.failures]
    print(f"site-check: {len(reports) - len(failed)} of {len(reports)} pages passed in {chromium}; "
          f"screenshots in {screenshots}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
