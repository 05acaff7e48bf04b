"""The rendered book in a real browser (headless Chromium driven over the W3C WebDriver protocol).

The test builds a small book: every chapter in ``_toc.yml`` executed with its ``ftm.smoke`` parameters (the
session's shared ``smoke_run`` fixture, so chapters run once per test session), copied into a temporary book
with its parameters table, plus the generated exercise versions and the BibTeX files ``_config.yml`` names;
``jupyter-book build -W -n`` must pass. It serves ``_build/html`` on 127.0.0.1 and visits every page with the
browser cut off from every other host (as a reader offline is): figures load, no cell shows a traceback or a
stderr block, every internal link and cross-reference resolves (page and anchor), every citation links to its entry
on the References page, every chapter's downloads (executed notebook, results.json, figures) are served, no page
loads anything from another host, formulas are typeset (MathJax is bundled, not fetched from a CDN), chapter
titles carry their numbers on the page and in the sidebar, each chapter's headline figure fills the text column
with fonts of at least 10 pt, the attention widget responds to a hover, the search page finds a chapter.

Chromium and chromedriver come from the Debian packages ``chromium`` and ``chromium-driver`` (``make test``
installs them when missing and root; this test tries the same). It is skipped only if they cannot be
installed. No Python browser library is needed: the WebDriver protocol is plain JSON over HTTP.

Environment: ``FTM_BOOK_HTML=<dir>`` checks an existing build (e.g. ``_build/html`` after ``make book``)
instead of building one; ``FTM_BROWSER_CHAPTERS=00_model_organisms,01_amplification`` builds a book of only
those chapters (for debugging one chapter); ``FTM_BROWSER_SHOTS=<dir>`` saves a screenshot of each chapter page's
top there (to look at).
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from lib.book import plotting, runner
from lib.book.cli import HEADLINE_FIGURE_TAG
from lib.organisms.seeding import REPO_ROOT

pytestmark = pytest.mark.browser

# Offline: every host name fails to resolve, so a page that needs a CDN (MathJax, fonts) shows it. The server is
# reached by its address, 127.0.0.1. A 1280-px window gives the narrowest desktop text column (676 px).
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-dev-shm-usage", "--window-size=1280,1000",
               "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


# --------------------------------------------------------------------------- chromium


def _find_chromium() -> tuple[str, str] | None:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chrome, driver) if chrome and driver else None


def _install_chromium() -> str:
    """Try ``apt-get install chromium chromium-driver`` (root only); return what happened."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
    try:
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                return r.stderr.strip()[-300:]
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    return "installed"


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    found = _find_chromium()
    if found is None:
        why = _install_chromium()
        found = _find_chromium()
        if found is None:
            pytest.skip(f"chromium/chromedriver not installed and could not be installed ({why})")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PAGE_STATE = ("return {url: location.href, ready: document.readyState, title: document.title, "
              "main: !!document.querySelector('main')};")


class WebDriver:
    """The few W3C WebDriver commands this test needs, spoken to chromedriver over HTTP."""

    def __init__(self, chrome: str, driver: str, log: Path):
        self.port = _free_port()
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([driver, f"--port={self.port}"], stdout=self._log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except (OSError, urllib.error.URLError):
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"chromedriver did not start (see {log})")
            time.sleep(0.2)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": chrome, "args": CHROME_ARGS}}}}
        self.session = self._call("POST", "/session", caps, timeout=90)["sessionId"]
        self._call("POST", f"/session/{self.session}/timeouts", {"pageLoad": 60_000, "script": 30_000})

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 60):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"webdriver {method} {path}: {e.read().decode()[:500]}") from None

    def get(self, url: str, wait: float = 30.0) -> None:
        """Open ``url`` and return once the browser shows it, fully loaded, with its ``main`` element. WebDriver's
        own wait (the load event) has twice answered early in CI on a loaded 2-core runner (both times on chapter
        2's page, the largest): the next read found no title or figure in a page the served HTML has."""
        self._call("POST", f"/session/{self.session}/url", {"url": url}, timeout=90)
        want = url.split("#")[0]
        deadline = time.monotonic() + wait
        while True:
            state = self.js(PAGE_STATE)
            if (state["ready"] == "complete" and state["url"].split("#")[0] == want and state["main"]) \
                    or time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def js(self, script: str, *args):
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": list(args)})

    def elements(self, css: str) -> list[dict]:
        """WebDriver references of the elements matching ``css`` (pass one to ``js`` as an argument)."""
        return self._call("POST", f"/session/{self.session}/elements", {"using": "css selector", "value": css})

    def hover(self, element: dict) -> None:
        """Move the mouse pointer onto ``element`` (a real pointer move: the page gets mouseover, mouseleave, ...)."""
        self.js("arguments[0].scrollIntoView({block: 'center'});", element)
        move = {"type": "pointerMove", "duration": 0, "origin": element, "x": 0, "y": 0}
        self._call("POST", f"/session/{self.session}/actions", {"actions": [
            {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [move]}]})

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot")))

    def close(self) -> None:
        try:
            if getattr(self, "session", None):
                self._call("DELETE", f"/session/{self.session}", timeout=20)
        except (OSError, RuntimeError, urllib.error.URLError):
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


# --------------------------------------------------------------------------- the book


def _selected_chapters() -> list[str]:
    chosen = os.environ.get("FTM_BROWSER_CHAPTERS")
    stems = runner.chapters()
    if not chosen:
        return stems
    picked = [runner.resolve(c.strip()) for c in chosen.split(",") if c.strip()]
    return [s for s in stems if s in picked]


SMOKE_STEMS = _selected_chapters()  # the smoke runs this module needs (conftest smoke_run)


def _filter_toc(node, keep: set[str]):
    """``_toc.yml`` without the chapter entries not in ``keep`` (and without parts left empty)."""
    if isinstance(node, list):
        out = [_filter_toc(v, keep) for v in node]
        return [v for v in out if v is not None]
    if isinstance(node, dict):
        f = str(node.get("file", ""))
        if f.startswith(runner.CHAPTER_PREFIX) and f[len(runner.CHAPTER_PREFIX):] not in keep:
            return None
        out = {k: _filter_toc(v, keep) if isinstance(v, (list, dict)) else v for k, v in node.items()}
        if "chapters" in out and not out["chapters"] and "file" not in out:
            return None
        return out
    return node


def build_small_book(root: Path, stems: list[str], executed: dict[str, Path]) -> Path:
    """A copy of the book's sources in ``root`` with ``stems`` executed; returns ``root/_build/html``."""
    from lib.book.citations import bib_files
    from lib.book.cli import book_copy
    from lib.book.teach import write_exercises

    shutil.copy(REPO_ROOT / "_config.yml", root / "_config.yml")
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    (root / "_toc.yml").write_text(yaml.safe_dump(_filter_toc(toc, set(stems)), sort_keys=False))
    for bib in bib_files():  # the BibTeX files _config.yml names (references.bib), where it expects them
        dest = root / bib.relative_to(REPO_ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bib, dest)
    shutil.copytree(REPO_ROOT / "book", root / "book", ignore=shutil.ignore_patterns("chapters", "exercises"))
    (root / "book" / "chapters").mkdir()
    for stem in stems:
        book_copy(stem, executed[stem], root / "book" / "chapters" / f"{stem}.ipynb")
    write_exercises(root / "book" / "exercises", stems)
    jb = "import sys; from jupyter_book.cli.main import main; sys.argv[0] = 'jupyter-book'; sys.exit(main())"
    cmd = [sys.executable, "-c", jb, "build", str(root), "--builder", "html", "-W", "-n", "--keep-going"]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"jupyter-book build failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    return root / "_build" / "html"


@pytest.fixture(scope="module")
def book_html(chromium, smoke_run, build_once) -> tuple[Path, list[str], dict[str, Path]]:
    """``(html, stems, run_dirs)``: the built site, its chapters, and the folder each chapter ran in (its figures)."""
    if os.environ.get("FTM_BOOK_HTML"):
        html = Path(os.environ["FTM_BOOK_HTML"]).resolve()
        assert (html / "index.html").exists(), f"FTM_BOOK_HTML={html} has no index.html"
        stems = [s for s in _selected_chapters() if (html / "book" / "chapters" / f"{s}.html").exists()]
        return html, stems, {s: html.parent / "results" / s for s in stems}  # `make book` runs in _build/results
    stems = _selected_chapters()
    executed = {}
    for stem in stems:
        _, out = smoke_run(stem)
        executed[stem] = out / f"{stem}.ipynb"
    root = build_once("small_book", lambda d: build_small_book(d, stems, executed))  # once for all workers
    html = root / "_build" / "html"
    return html, stems, {s: p.parent for s, p in executed.items()}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site(book_html):
    html, stems, _ = book_html
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", html, stems
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    d = WebDriver(*chromium, log=tmp_path_factory.mktemp("chromedriver") / "chromedriver.log")
    yield d
    d.close()


# --------------------------------------------------------------------------- the checks

PAGE_REPORT = r"""
const main = document.querySelector('main') || document.body;
const imgs = [...main.querySelectorAll('img')].map(i => ({src: i.currentSrc || i.src,
    ok: i.complete && i.naturalWidth > 0}));
const traces = [...main.querySelectorAll('.output.traceback, .output.error, .traceback')]
    .map(e => e.textContent.slice(0, 400));
const stderr = [...main.querySelectorAll('.output.stderr')].map(e => e.textContent.slice(0, 400));
const unresolved = [...main.querySelectorAll('.xref')].filter(e => !e.closest('a')).map(e => e.textContent);
const links = [...main.querySelectorAll('a.reference.internal, a.internal')].map(a => a.href);
const local = u => !u || u.startsWith(location.origin + '/') || u.startsWith('data:') || u.startsWith('blob:');
const fetched = [...document.querySelectorAll('script[src], img[src], iframe[src], source[src], video[src], '
    + 'audio[src]')].map(e => e.src).concat([...document.querySelectorAll('link[href]')]
    .filter(l => !['canonical', 'alternate'].includes(l.rel)).map(l => l.href))
    .concat(performance.getEntriesByType('resource').map(e => e.name));
const external = [...new Set(fetched.filter(u => !local(u)))];
return {title: document.title, imgs, traces, stderr, unresolved, links, external,
        text_traceback: main.innerText.includes('Traceback (most recent call last)'),
        h1: (main.querySelector('h1') || {}).textContent || ''};
"""


def _pages(html: Path) -> list[str]:
    """Every page of the book (paths relative to the site root)."""
    return sorted(str(p.relative_to(html)) for p in (html / "book").rglob("*.html"))


@functools.lru_cache(maxsize=None)
def _fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_every_page_renders_cleanly(site, browser):
    base, html, stems = site
    pages = _pages(html)
    for stem in stems:
        assert f"book/chapters/{stem}.html" in pages, f"chapter {stem} was not rendered"
    assert any(p.startswith("book/exercises/") for p in pages), "no exercise page was rendered"
    assert "book/teaching.html" in pages
    problems: list[str] = []
    links: dict[str, str] = {}
    for page in pages:
        browser.get(f"{base}/{page}")
        rep = browser.js(PAGE_REPORT)
        for _ in range(20):  # on a loaded machine the theme's scripts may still be rewriting the page: wait for it
            if rep["h1"].strip():
                break
            time.sleep(0.5)
            rep = browser.js(PAGE_REPORT)
        if "404" in rep["title"] or not rep["h1"].strip():
            problems.append(f"{page}: did not render (title {rep['title']!r})")
        bad = [i["src"] for i in rep["imgs"] if not i["ok"]]
        if bad:
            problems.append(f"{page}: images failed to load: {bad}")
        if page.startswith("book/chapters/") and not rep["imgs"]:
            problems.append(f"{page}: a chapter with no figure")
        if rep["traces"] or rep["text_traceback"]:
            problems.append(f"{page}: a cell shows a traceback: {rep['traces'][:1]}")
        if rep["stderr"]:
            problems.append(f"{page}: a cell shows a stderr block: {rep['stderr'][:2]}")
        if rep["unresolved"]:
            problems.append(f"{page}: unresolved cross-references: {rep['unresolved']}")
        if rep["external"]:
            problems.append(f"{page}: loads from other hosts (it needs a network): {rep['external'][:5]}")
        if os.environ.get("FTM_BROWSER_SHOTS") and page.startswith("book/chapters/"):
            shots = Path(os.environ["FTM_BROWSER_SHOTS"])
            shots.mkdir(parents=True, exist_ok=True)
            browser.screenshot(shots / f"{Path(page).stem}.png")
        for href in rep["links"]:
            links.setdefault(href, page)
    for stem in stems:  # the tables the build inserts: re-run command, and each finding over seeds
        _, text = _fetch(f"{base}/book/chapters/{stem}.html")
        for title in ("Parameters of this chapter", "Findings across seeds"):
            if title not in text:
                problems.append(f"{stem}: no {title!r} box")
    for href, page in links.items():
        url, _, frag = href.partition("#")
        if not url.startswith(base):
            continue
        status, text = _fetch(url)
        if status != 200:
            problems.append(f"{page}: link {href} -> HTTP {status}")
        elif frag and not re.search(r'id=["\']' + re.escape(urllib.parse.unquote(frag)) + r'["\']', text):
            problems.append(f"{page}: link {href} -> no anchor #{frag}")
    assert not problems, "\n".join(problems)


def test_cross_references_link_chapters_and_exercises(site, browser):
    base, html, stems = site
    browser.get(f"{base}/book/teaching.html")
    hrefs = browser.js("return [...document.querySelectorAll('main a.reference.internal')].map(a => a.href);")
    for stem in stems:
        assert any(h.split("#")[0].endswith(f"chapters/{stem}.html") for h in hrefs), f"teaching page lacks {stem}"
    ex = sorted((html / "book" / "exercises").glob("*.html"))
    assert ex
    browser.get(f"{base}/book/exercises/{ex[0].name}")
    hrefs = browser.js("return [...document.querySelectorAll('a.reference.internal')].map(a => a.href);")
    assert any(h.split("#")[0].endswith(f"chapters/{ex[0].stem}.html") for h in hrefs), \
        "an exercise page does not link back to its chapter"
    text = browser.js("return document.querySelector('main').innerText;")
    assert "NotImplementedError" in text and "check(" in text
    # Each exercise: the line with difficulty, importance and time, and the hint and expected output, folded.
    assert "Difficulty" in text and "Importance" in text and "Time about" in text
    folds = browser.js("return [...document.querySelectorAll('main details')].map(d => "
                       "({summary: d.querySelector('summary').innerText.trim(), open: d.open}));")
    summaries = [f["summary"] for f in folds]
    assert "Hint" in summaries and "Expected output" in summaries, f"exercise page folds: {summaries}"
    assert not any(f["open"] for f in folds if f["summary"] in ("Hint", "Expected output")), "a fold opens by itself"
    browser.get(f"{base}/book/teaching.html")
    text = browser.js("return document.querySelector('main').innerText;")
    assert "all chapters" in text and "🔴" in text, "the teaching page lacks the list of exercises"


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[{}]", "", text).lower().split())


def test_citations_link_to_the_references_page(site, browser):
    """Each paper the intro and the built chapters cite is a link to its entry on the References page
    (``book/references.html#cite-<key>``, the anchor ``bibtex_cite_id`` makes), and the entry there gives its title."""
    from lib.book.citations import bib_entries, cited_keys, prose_sources

    base, html, stems = site
    assert (html / "book" / "references.html").exists(), "no References page was rendered"
    entries, sources = bib_entries(), prose_sources()
    pages = {"book/intro.html": "book/intro.md"}
    pages.update({f"book/chapters/{s}.html": f"notebooks/{s}.md" for s in stems})
    checked = []
    for page, source in pages.items():
        keys = sorted(set(cited_keys(sources[source]["prose"])))
        if not keys:
            continue
        browser.get(f"{base}/{page}")
        hrefs = browser.js("return [...document.querySelectorAll('main a.reference.internal')].map(a => a.href);")
        for key in keys:
            target = f"{base}/book/references.html#cite-{key}"
            assert target in hrefs, f"{page}: the citation of {key!r} does not link to {target}"
            browser.get(target)
            text = browser.js("const e = document.getElementById(arguments[0]); return e && e.innerText;",
                              f"cite-{key}")
            assert text, f"references.html has no entry #cite-{key}"
            title = _norm(entries[key].fields["title"])
            assert title in _norm(text), f"the entry #cite-{key} does not give the title {title!r}: {text[:300]!r}"
            checked.append((page, key))
    assert checked, "no page of this book cites anything"
    browser.get(f"{base}/book/intro.html")  # the licences, in the footer of every page (_config.yml html.extra_footer)
    text = browser.js("return document.body.innerText;")
    assert "MIT License" in text and "CC BY 4.0" in text, "the footer does not state the licences"


def test_chapter_pages_offer_their_downloads(site, browser):
    """Each chapter page's Downloads box links the executed notebook, results.json and its figures, and the
    local server returns each of them (the files Sphinx copied into the site, not a 404)."""
    base, html, stems = site
    for stem in stems:
        browser.get(f"{base}/book/chapters/{stem}.html")
        hrefs = browser.js("return [...document.querySelectorAll('main a.reference.download')].map(a => a.href);")
        names = {urllib.parse.unquote(h.rsplit("/", 1)[-1]): h for h in hrefs}
        assert f"{stem}.ipynb" in names and "results.json" in names, f"{stem}: downloads {sorted(names)}"
        figures = [n for n in names if n.endswith(".png")]
        assert figures, f"{stem}: no figure among the downloads {sorted(names)}"
        got = {}
        for name in (f"{stem}.ipynb", "results.json", figures[0]):
            with urllib.request.urlopen(names[name], timeout=30) as r:
                assert r.status == 200, f"{stem}: {names[name]} -> HTTP {r.status}"
                got[name] = r.read()
        assert "provenance" in json.loads(got["results.json"])
        nb = json.loads(got[f"{stem}.ipynb"])
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])  # papermill's run
        assert got[figures[0]].startswith(b"\x89PNG")


def test_search_finds_a_chapter(site, browser):
    base, html, stems = site
    stem = stems[0]
    words = [w for w in re.findall(r"[A-Za-z]{6,}", stem)]
    query = words[-1] if words else stem
    browser.get(f"{base}/search.html?q={urllib.parse.quote(query)}")
    found: list[str] = []
    deadline = time.time() + 45
    while time.time() < deadline:
        found = browser.js("return [...document.querySelectorAll('#search-results li a, ul.search li a')]"
                           ".map(a => a.href);")
        if any(f"chapters/{stem}.html" in h for h in found):  # results arrive page by page: wait for ours
            break
        time.sleep(0.5)
    assert any(f"chapters/{stem}.html" in h for h in found), f"search for {query!r} found {found[:10]}"


WIDGET_STATE = r"""
const w = document.querySelector('main .ftm-attn');
if (!w) return null;
const toks = [...w.querySelectorAll('.ftm-attn-tok')];
return {words: toks.map(t => t.textContent), n_cells: w.querySelectorAll('.ftm-attn-cell').length,
        n_buttons: w.querySelectorAll('.ftm-attn-head').length,
        bg: toks.map(t => getComputedStyle(t).backgroundColor),
        focus: toks.findIndex(t => t.classList.contains('ftm-attn-focus')),
        readout: w.querySelector('.ftm-attn-readout').textContent,
        grid: [...w.querySelectorAll('.ftm-attn-cell')].map(c => c.style.backgroundColor).join('|')};
"""


def _alpha(css_colour: str) -> float:
    """The alpha of a computed ``rgb(...)`` / ``rgba(...)`` colour (1 for ``rgb``)."""
    parts = re.findall(r"[\d.]+", css_colour)
    return float(parts[3]) if len(parts) == 4 else 1.0


def test_attention_widget_responds_to_hover(site, browser):
    """Chapter 0's interactive attention pattern: drawn from inline data (no network), and a mouse over a word
    recolours the words by that word's attention (causal: nothing after it), a head button redraws the grid, and
    leaving the words returns to END."""
    base, html, stems = site
    if "00_model_organisms" not in stems:
        pytest.skip("chapter 0 is not in this book (FTM_BROWSER_CHAPTERS)")
    browser.get(f"{base}/book/chapters/00_model_organisms.html")
    before = browser.js(WIDGET_STATE)
    assert before is not None, "chapter 0 shows no attention widget (.ftm-attn)"
    words, n = before["words"], len(before["words"])
    assert n > 5 and words[0] == "<bos>" and all(w.strip() for w in words), words
    assert before["n_cells"] == n * n, "the pattern grid was not drawn (did the inline script run?)"
    assert before["focus"] == n - 1 and words[-1] in before["readout"], "the view should open on END"
    assert sum(_alpha(c) for c in before["bg"]) > 0.5, f"END's attention is not shown: {before['bg']}"
    i = 2
    browser.hover(browser.elements("main .ftm-attn .ftm-attn-tok")[i])
    after = browser.js(WIDGET_STATE)
    assert after["focus"] == i and after["readout"] != before["readout"]
    assert after["bg"] != before["bg"], "hovering a word changed no colour"
    assert all(_alpha(c) == 0 for c in after["bg"][i + 1:]), f"attention to later words: {after['bg']}"
    assert sum(_alpha(c) for c in after["bg"][:i + 1]) > 0.5
    browser.hover(browser.elements("main .ftm-attn .ftm-attn-readout")[0])
    assert browser.js(WIDGET_STATE)["focus"] == n - 1, "leaving the words did not return to END"
    if before["n_buttons"] > 1:
        browser.js("document.querySelectorAll('main .ftm-attn .ftm-attn-head')[1].click();")
        other = browser.js(WIDGET_STATE)
        assert other["grid"] != before["grid"], "another head's button did not redraw the grid"

MATH_REPORT = r"""
const main = document.querySelector('main') || document.body;
const math = [...main.querySelectorAll('.math')];
const clone = main.cloneNode(true);  // the page's text without code and typeset formulas: raw TeX must be gone
clone.querySelectorAll('pre, code, script, style, mjx-container').forEach(e => e.remove());
const raw = clone.textContent.match(/\\\(|\\\[/g) || [];
const i = clone.textContent.search(/\\\(|\\\[/);
return {n_math: math.length, typeset: math.filter(e => e.querySelector('mjx-container')).length,
        raw: raw.length, sample: i < 0 ? '' : clone.textContent.slice(i, i + 80),
        mathjax: [...document.scripts].map(s => s.src).filter(s => s.includes('mathjax'))};
"""


def test_formulas_are_typeset_without_a_network(site, browser):
    """Every page with math shows typeset formulas, not raw ``\\(...\\)``, with the browser offline: MathJax comes
    with the book (``sphinx-mathjax-offline``), from the local server."""
    base, html, stems = site
    checked: dict[str, int] = {}
    problems: list[str] = []
    for page in _pages(html):
        browser.get(f"{base}/{page}")
        rep = browser.js(MATH_REPORT)
        for _ in range(60):  # MathJax typesets after the page loads
            if rep["typeset"] >= rep["n_math"]:
                break
            time.sleep(0.5)
            rep = browser.js(MATH_REPORT)
        if not rep["n_math"]:
            continue
        checked[page] = rep["n_math"]
        if rep["typeset"] < rep["n_math"] or rep["raw"]:
            problems.append(f"{page}: {rep['typeset']} of {rep['n_math']} formulas typeset, {rep['raw']} raw TeX "
                            f"delimiters in the text ({rep['sample']!r}); MathJax from {rep['mathjax']}")
        if not rep["mathjax"] or not all(s.startswith(base + "/") for s in rep["mathjax"]):
            problems.append(f"{page}: MathJax is not served by the book itself: {rep['mathjax']}")
    if "06_objective_leakage" in stems:  # chapter 6 opens with two formulas
        assert checked.get("book/chapters/06_objective_leakage.html", 0) >= 2, f"math found only on {checked}"
    if not checked:
        pytest.skip("no page of this book has math")
    assert not problems, "\n".join(problems)


CHAPTER_TITLES = r"""
const h1 = (document.querySelector('main h1') || {}).textContent || '';
const nav = [...document.querySelectorAll('nav.bd-links a, .bd-sidenav a')].map(a => [a.href, a.textContent.trim()]);
return {h1: h1.replace(/[#¶]\s*$/, '').trim(), nav};
"""




def _page_title(browser, wait: float = 15.0) -> tuple[str, dict]:
    """The page's title heading, read once the page has one: a page can answer the WebDriver before its DOM is
    complete (seen once in CI, on a loaded 2-core runner, as an empty title), so read until the heading is there or
    ``wait`` seconds pass, and return the page's state with it so that a real failure says what the browser saw."""
    deadline = time.monotonic() + wait
    while True:
        h1 = browser.js(CHAPTER_TITLES)["h1"]
        if h1 or time.monotonic() > deadline:
            return h1, browser.js(PAGE_STATE)
        time.sleep(0.25)


def test_chapter_titles_are_numbered_on_the_page_and_in_the_sidebar(site, browser):
    base, html, stems = site
    browser.get(f"{base}/book/intro.html")
    _page_title(browser)  # the sidebar is read once the page is complete
    nav = {urllib.parse.urlparse(href).path: text for href, text in browser.js(CHAPTER_TITLES)["nav"]}
    for stem in stems:
        n = int(stem[:2])
        browser.get(f"{base}/book/chapters/{stem}.html")
        h1, state = _page_title(browser)
        assert re.match(rf"{n}\. \S", h1), f"{stem}: page title {h1!r} lacks its number {n} (page state: {state})."
        side = nav.get(f"/book/chapters/{stem}.html")
        assert side is not None, f"{stem} is not in the sidebar ({sorted(nav)})"
        assert side == h1, f"{stem}: the sidebar says {side!r}, the page {h1!r}"


HEADLINE_FIGURE = r"""
const img = document.querySelector('main .tag_%s img');
if (!img) return null;
const box = img.closest('.cell_output') || img.parentElement;
return {width: img.getBoundingClientRect().width, natural: img.naturalWidth, column: box.clientWidth};
""" % HEADLINE_FIGURE_TAG


def test_headline_figures_fill_the_column_with_readable_fonts(site, browser, book_html):
    """Each chapter opens with its headline figure as wide as the text column, and its smallest font, at that size,
    is at least ``plotting.MIN_FONT`` (10 pt): the figure's saved PNG records its width and smallest font
    (``plotting.savefig``), and the page shows the same figure (the notebook's inline copy)."""
    base, html, stems = site
    run_dirs = book_html[2]
    inline_dpi = plotting.plt.rcParams["figure.dpi"]  # the kernel's inline figures (the house style sets it)
    problems = []
    for stem in stems:
        browser.get(f"{base}/book/chapters/{stem}.html")
        fig = browser.js(HEADLINE_FIGURE)
        if fig is None:
            problems.append(f"{stem}: no headline figure on the page")
            continue
        if fig["width"] < 0.98 * fig["column"]:
            problems.append(f"{stem}: the headline figure is {fig['width']:.0f} px wide in a {fig['column']} px column")
        png = run_dirs[stem] / f"{runner.notebook_meta(stem)['headline']['figure']}.png"
        if not png.exists():
            if os.environ.get("FTM_BOOK_HTML"):
                continue  # a build from elsewhere: its figures are not at hand
            problems.append(f"{stem}: {png} was not saved")
            continue
        info = plotting.png_font_info(png)
        if abs(fig["natural"] / inline_dpi - info["width_in"]) > 0.2:
            problems.append(f"{stem}: the page's figure ({fig['natural'] / inline_dpi:.2f} in) is not {png.name} "
                            f"({info['width_in']:.2f} in)")
        shown = info["smallest_font_pt"] * (fig["width"] / 96) / info["width_in"]
        if shown < plotting.MIN_FONT - 0.05:
            problems.append(f"{stem}: smallest font {info['smallest_font_pt']:g} pt in a {info['width_in']:.1f}-inch "
                            f"figure shown {fig['width'] / 96:.1f} inches wide reads at {shown:.1f} pt")
    assert not problems, "\n".join(problems)
