"""Load every page of a built book in a real headless browser with the network blocked.

Debian's ``chromium`` (``make system-deps``) driven by Playwright: every request that leaves the
built site (anything but ``file://``) is aborted and recorded. A page passes when it finishes
loading, requested nothing outside the site, logged no JavaScript error, every image on it has
loaded and its mathematics (if any) was typeset by the offline MathJax. Used by the tests and
runnable on any built book::

    .venv/bin/python tests/site_check.py _build/html --screenshots _build/screenshots
"""

from __future__ import annotations

import argparse
import html as _html
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

# what a reader sees first: the pages the note compares before → after
SCREENSHOTS = {
    "index": "index.html",
    "results": "book/results.html",
    "analysis": "book/generated/analysis.html",
    "statistics": "book/statistics.html",
}
TEXT_SUFFIXES = (".html", ".js", ".json", ".txt", ".ipynb", ".md", ".css", ".inv")


def chromium() -> str | None:
    """Debian's chromium, or None where it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def why_no_browser() -> str | None:
    """One sentence saying why the browser check cannot run here, or None when it can."""
    if chromium() is None:
        return "Debian's chromium is not installed here (make system-deps installs it where apt-get works as root)."
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (make setup installs it with the dev extra)."
    return None


@dataclass
class Page:
    path: str  # relative to the site root
    images: int = 0
    math: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Report:
    pages: list[Page]
    external: list[str]  # URLs outside the site that a page tried to load
    screenshots: dict[str, Path]

    @property
    def problems(self) -> list[str]:
        out = [f"{p.path}: {msg}" for p in self.pages for msg in p.problems]
        return out + [f"request outside the site: {u}" for u in self.external]


def check_site(site: str | Path, *, screenshots: str | Path | None = None, timeout_ms: int = 30_000) -> Report:
    """Load every ``*.html`` page under ``site`` offline; see the module docstring."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    site = Path(site).resolve()
    paths = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if "_static" not in p.parts)
    external: list[str] = []
    pages: list[Page] = []
    shots: dict[str, Path] = {}

    def route(r):
        if r.request.url.startswith(("file://", "data:", "blob:", "about:")):
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort("internetdisconnected")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True,
                                     args=["--host-resolver-rules=MAP * ~NOTFOUND"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
        context.route("**/*", route)
        try:
            for rel in paths:
                page = context.new_page()
                result = Page(rel)
                page.on("pageerror", lambda exc, r=result: r.problems.append(f"JavaScript error: {exc}"))
                page.on("console", lambda msg, r=result: msg.type == "error" and r.problems.append(f"console error: {msg.text}"))
                page.on("requestfailed", lambda req, r=result: req.url.startswith("file://")
                        and r.problems.append(f"missing file {req.url.split(site.as_uri(), 1)[-1]}"))
                try:
                    page.goto((site / rel).as_uri(), wait_until="load", timeout=timeout_ms)
                    redirect = re.search(r'http-equiv="refresh"[^>]*url=([^"]+)"', (site / rel).read_text(encoding="utf-8"), re.I)
                    if redirect:  # index.html sends the reader to the first chapter
                        target = ((site / rel).parent / redirect.group(1)).resolve().as_uri()
                        page.wait_for_url(target, wait_until="load", timeout=timeout_ms)
                    images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
                    result.images = len(images)
                    result.problems += [f"image {src} did not load" for src, ok in images if not ok]
                    # formulas a reader sees (those in folded solutions are typeset when unfolded)
                    visible_math = "Array.from(document.querySelectorAll('.math')).filter(e => e.offsetParent !== null)"
                    result.math = page.evaluate(f"{visible_math}.length")
                    if result.math:
                        try:
                            page.wait_for_function(f"{visible_math}.every(e => e.querySelector('mjx-container'))", timeout=timeout_ms)
                        except PlaywrightError:
                            result.problems.append(f"{result.math} formula(s) not typeset (MathJax did not run)")
                    name = next((k for k, v in SCREENSHOTS.items() if v == rel), None)
                    if screenshots is not None and name:
                        out = Path(screenshots) / f"{name}.png"
                        out.parent.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=str(out))
                        shots[name] = out
                except PlaywrightError as exc:
                    result.problems.append(f"did not finish loading ({str(exc).splitlines()[0]})")
                finally:
                    page.close()
                pages.append(result)
        finally:
            context.close()
            browser.close()
    return Report(pages, sorted(set(external)), shots)


def visible_text(html: str) -> str:
    """The text a reader can see on a page (scripts, styles and tags removed)."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S | re.I)
    return " ".join(_html.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def scan_site(site: str | Path, forbidden: list[str]) -> list[str]:
    """Problems of the built files: an occurrence of any ``forbidden`` string (absolute paths of
    the building machine) in any text file, and a ``NaN`` a reader can see on a page."""
    site = Path(site)
    found = []
    needles = sorted({f.rstrip("/") for f in forbidden if f and f.rstrip("/")}, key=len, reverse=True)
    for p in sorted(site.rglob("*")):
        if not p.is_file() or p.suffix not in TEXT_SUFFIXES:
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        rel = p.relative_to(site).as_posix()
        for n in needles:
            if n in text:
                found.append(f"{rel}: the absolute path {n}")
        if p.suffix == ".html" and re.search(r"\bNaN\b", visible_text(text)):
            found.append(f"{rel}: NaN")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", help="the built book, e.g. _build/html")
    ap.add_argument("--screenshots", help="folder for screenshots of the index, results and statistics pages")
    ap.add_argument("--forbid", action="append", default=[], help="a string no built file may contain (repeatable)")
    args = ap.parse_args(argv)
    reason = why_no_browser()
    if reason:
        print(f"site check: skipped: {reason}")
        return 0
    report = check_site(args.site, screenshots=args.screenshots)
    problems = report.problems + scan_site(args.site, [str(Path.cwd().resolve()), str(Path.home()), *args.forbid])
    print(f"site check: {len(report.pages)} pages, {sum(p.images for p in report.pages)} images, "
          f"{len(problems)} problem(s); screenshots: {', '.join(str(p) for p in report.screenshots.values()) or 'none'}")
    for line in problems:
        print(f"  {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
