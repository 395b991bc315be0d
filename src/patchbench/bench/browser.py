"""Check that a report renders in a real browser: headless Chromium (Debian's ``chromium``).

:func:`check_report` loads a page the way a reader's browser does, in a 1400-px wide window, and
returns what it saw: the console messages and script errors, the resources that failed to load,
the tables, the images (each decoded, or broken) with the plots' natural widths, and whether the
page is wider than the window. :func:`assert_renders` turns that into one assertion with every
problem listed; the report tests and the demo's test call it on their pages.

How: a copy of the page, with a ``<base href>`` to its folder (relative image files resolve as
they would) and a small probe script first in ``<head>``, is loaded with ``chromium --headless
--dump-dom``. The probe records ``error`` events (script errors and failed ``<img>`` / ``<link>``
loads) and ``console.error`` / ``console.warn`` calls; on ``load`` it measures the page and writes
its findings into the DOM, which Chromium prints. Chromium's own ``CONSOLE`` log lines (stderr,
``--enable-logging=stderr``) are collected too. The page itself is never modified.
"""
from __future__ import annotations

import html as _html
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from .._validation import check_path, check_positive_int

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
            "headless_shell")
ENV = "PATCHBENCH_CHROMIUM"     # a browser binary to use instead of the first found on PATH

_PROBE = """<script>(function(){var E=[];
window.addEventListener('error',function(e){var t=e.target;
if(t&&t!==window&&t.tagName){E.push('failed to load: <'+t.tagName.toLowerCase()+'> '+
String(t.currentSrc||t.src||t.href||'').slice(0,100));}
else{E.push('script error: '+e.message);}},true);
['error','warn'].forEach(function(k){var o=console[k];console[k]=function(){
E.push('console.'+k+': '+Array.prototype.join.call(arguments,' '));return o.apply(console,arguments);};});
window.addEventListener('load',function(){var imgs=[].slice.call(document.images).map(function(i){
var f=i.closest('figure.plot');return {src:String(i.getAttribute('src')||'').slice(0,60),
ok:i.complete&&i.naturalWidth>0,w:i.naturalWidth,h:i.naturalHeight,shown:Math.round(
i.getBoundingClientRect().width),plot:!!f};});
var tables=[].slice.call(document.querySelectorAll('table')).map(function(t){var c=t.querySelector('caption');
return {caption:c?c.textContent.slice(0,80):'',rows:t.querySelectorAll('tr').length,
cells:t.querySelectorAll('td').length,width:t.scrollWidth,box:t.clientWidth};});
var r={errors:E,images:imgs,tables:tables,svgs:document.querySelectorAll('svg').length,
page_width:document.documentElement.scrollWidth,window_width:window.innerWidth,
title:document.title,headline:!!document.querySelector('div.headline'),
first:(function(){var h=document.querySelector('div.headline'),t=document.querySelector('table');
if(!h||!t)return null;return !!(h.compareDocumentPosition(t)&Node.DOCUMENT_POSITION_FOLLOWING);})()};
var p=document.createElement('pre');p.id='pb-probe';p.textContent=JSON.stringify(r);
document.body.appendChild(p);});})();</script>"""


def find_chromium() -> Optional[str]:
    """The headless browser to use: ``$PATCHBENCH_CHROMIUM``, else the first of :data:`BINARIES`
    on PATH; ``None`` when there is none (``apt-get install chromium``)."""
    own = os.environ.get(ENV)
    if own:
        return own if Path(own).is_file() or shutil.which(own) else None
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class BrowserCheck:
    """What the browser saw on one page (:func:`check_report`)."""

    path: Path
    bytes: int
    errors: List[str] = field(default_factory=list)      # script errors, failed loads, console
    console: List[str] = field(default_factory=list)     # Chromium's CONSOLE log lines
    images: List[dict] = field(default_factory=list)     # src (prefix), ok, w, h, shown, plot
    tables: List[dict] = field(default_factory=list)     # caption, rows, cells, width, box
    svgs: int = 0
    page_width: int = 0
    window_width: int = 0
    headline: bool = False
    headline_first: Optional[bool] = None

    @property
    def broken_images(self) -> List[dict]:
        return [i for i in self.images if not i["ok"]]

    @property
    def plots(self) -> List[dict]:
        return [i for i in self.images if i["plot"]]

    @property
    def scrolled_tables(self) -> List[dict]:
        """Tables wider than their box (they scroll sideways: they do not fit the window)."""
        return [t for t in self.tables if t["width"] > t["box"] + 1]

    def problems(self, min_tables: int = 1, min_plots: int = 1, max_bytes: int = 1_000_000,
                 min_plot_width: int = 1000, fit_tables: bool = True) -> List[str]:
        """Every way the page falls short, as sentences (``[]``: it renders as it should)."""
        out = [f"error: {e}" for e in self.errors] + [f"console: {c}" for c in self.console]
        out += [f"broken image {i['src']!r}…" for i in self.broken_images]
        if self.bytes > max_bytes:
            out.append(f"the page is {self.bytes} bytes, over {max_bytes}")
        full = [t for t in self.tables if t["cells"]]
        if len(full) < min_tables:
            out.append(f"{len(full)} table(s) with cells shown, expected at least {min_tables}")
        shown = [p for p in self.plots if p["ok"]] + [None] * self.svgs
        if len(shown) < min_plots:
            out.append(f"{len(shown)} plot(s) shown, expected at least {min_plots}")
        out += [f"plot {p['src']!r}… is {p['w']} px wide, expected at least {min_plot_width}"
                for p in self.plots if p["ok"] and p["w"] < min_plot_width]
        if self.page_width > self.window_width:
            out.append(f"the page is {self.page_width} px wide in a {self.window_width}-px window")
        if fit_tables:
            out += [f"table {t['caption']!r} is {t['width']} px wide in a {t['box']}-px box "
                    f"(it scrolls)" for t in self.scrolled_tables]
        if self.headline and self.headline_first is False:
            out.append("the key-numbers box comes after a table")
        return out


def check_report(path, width: int = 1400, timeout: int = 120,
                 chromium: Optional[str] = None) -> BrowserCheck:
    """Load the page ``path`` (an ``index.html`` or its folder) in headless Chromium, ``width``
    px wide, and return what it saw (module doc).

    Raises:
        FileNotFoundError: no page at ``path``, or no browser (``chromium=None`` and none found).
        RuntimeError: the browser failed or printed no probe result within ``timeout`` s.
    """
    if isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
        path = Path(path) / "index.html"
    path = check_path(path, "path")
    if path.is_dir():
        path = path / "index.html"
    width = check_positive_int(width, "width")
    timeout = check_positive_int(timeout, "timeout")
    if chromium is not None and not (Path(chromium).is_file() or shutil.which(chromium)):
        raise FileNotFoundError(f"chromium: {chromium!r} is not an executable browser")
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium: no headless browser found (apt-get install -y chromium, "
                                f"or set ${ENV})")
    text = path.read_text(encoding="utf-8")
    base = f"<base href='{_html.escape(path.parent.resolve().as_uri() + '/')}'>"
    m = re.search(r"<head[^>]*>", text, re.I)
    probe = base + _PROBE
    text = text[:m.end()] + probe + text[m.end():] if m else probe + text
    with tempfile.TemporaryDirectory(prefix="pb-browser-") as tmp:
        copy = Path(tmp) / "page.html"
        copy.write_text(text, encoding="utf-8")
        cmd = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
               "--v=0", f"--window-size={width},1000", "--hide-scrollbars",
               "--allow-file-access-from-files", f"--user-data-dir={Path(tmp) / 'profile'}",
               "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  errors="replace")
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"chromium: no result within {timeout} s for {path}") from None
    found = re.search(r'<pre id="pb-probe">(.*?)</pre>', done.stdout, re.S)
    if not found:
        tail = "\n".join(done.stderr.splitlines()[-5:])
        raise RuntimeError(f"chromium: the page {path} gave no probe result (exit {done.returncode})"
                           f"; stderr ends:\n{tail}")
    r = json.loads(_html.unescape(found.group(1)))
    console = [ln.split("] ", 1)[-1] for ln in done.stderr.splitlines() if ":CONSOLE" in ln]
    return BrowserCheck(path=path, bytes=path.stat().st_size, errors=list(r["errors"]),
                        console=console, images=r["images"], tables=r["tables"], svgs=r["svgs"],
                        page_width=r["page_width"], window_width=r["window_width"],
                        headline=r["headline"], headline_first=r["first"])


def assert_renders(path, min_tables: int = 1, min_plots: int = 1, max_bytes: int = 1_000_000,
                   min_plot_width: int = 1000, fit_tables: bool = True, width: int = 1400,
                   chromium: Optional[str] = None) -> BrowserCheck:
    """:func:`check_report`, then ``AssertionError`` listing every problem
    (:meth:`BrowserCheck.problems`) when there is one; returns the check."""
    chk = check_report(path, width=width, chromium=chromium)
    problems = chk.problems(min_tables, min_plots, max_bytes, min_plot_width, fit_tables)
    if problems:
        raise AssertionError(f"{chk.path} does not render cleanly in headless Chromium:\n- "
                             + "\n- ".join(problems))
    return chk


__all__ = ["find_chromium", "check_report", "assert_renders", "BrowserCheck"]
