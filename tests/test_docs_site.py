"""The website, built offline from the notebooks and opened in headless Chromium.

Chromium is found as `chromium` (Debian) or `chromium-browser`/`google-chrome` on PATH. Without it the
tests skip with the reason, unless OPT_LAB_REQUIRE_BROWSER=1 (set by .ci/run), where they fail.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from functools import partial
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "_docs"
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--virtual-time-budget=10000"]  # the page's scripts (KaTeX's auto-render among them) run before the dump
ARTEFACTS = ROOT / "_artefacts"  # screenshots kept from the run (not committed)

if BROWSER is None:
    if os.environ.get("OPT_LAB_REQUIRE_BROWSER") == "1":
        raise RuntimeError("OPT_LAB_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install -y chromium)")
    pytestmark = pytest.mark.skip(reason="no Chromium on PATH: install the Debian package `chromium` to run the browser check")


class _Dom(HTMLParser):
    "Ids, image sources, the text of <pre> blocks, the prose a reader sees, and KaTeX's output of an HTML document."
    _UNSEEN = {"script", "style", "pre", "code", "annotation"}  # not prose: code, and the TeX source KaTeX keeps

    def __init__(self):
        super().__init__()
        self.ids, self.img_srcs, self.pre_texts, self.h1, self._pre_depth, self._in_h1 = set(), [], [], "", 0, False
        self.prose, self.formulas, self.formula_errors, self.loads, self._unseen = "", 0, 0, [], []
        self.img_shown, self.search_hits, self.requests = [], -1, []  # set by the served fixture

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs: self.ids.add(attrs["id"])
        classes = (attrs.get("class") or "").split()
        self.formulas += "katex" in classes
        self.formula_errors += "katex-error" in classes
        if tag == "img":
            self.img_srcs.append(attrs.get("src") or "")
            self.img_shown.append(float(attrs.get("data-shown-width") or "nan"))
        if tag == "body": self.search_hits = int(attrs.get("data-search-hits") or -1)
        if tag in ("script", "img", "iframe") and attrs.get("src"): self.loads.append(attrs["src"])
        if tag == "link" and attrs.get("href") and set((attrs.get("rel") or "").split()) & {"stylesheet", "icon", "preload", "modulepreload"}:
            self.loads.append(attrs["href"])
        if tag == "h1": self._in_h1 = True
        if tag in self._UNSEEN: self._unseen.append(tag)
        if tag == "pre":
            self._pre_depth += 1
            self.pre_texts.append("")

    def handle_endtag(self, tag):
        if tag == "pre": self._pre_depth -= 1
        if tag == "h1": self._in_h1 = False
        if tag in self._UNSEEN and tag in self._unseen: del self._unseen[len(self._unseen) - 1 - self._unseen[::-1].index(tag)]

    def handle_data(self, data):
        if self._pre_depth: self.pre_texts[-1] += data
        if self._in_h1: self.h1 += data
        if not self._unseen: self.prose += data


def _chromium(tmp_path, *args):
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    res = subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={profile}", *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.fixture(scope="module")
def site():
    "Build the site once, offline, exactly as `opt_lab docs --engine offline` does."
    run_cli = "import sys; from opt_lab.cli import main; sys.exit(main(sys.argv[1:]))"
    res = subprocess.run([sys.executable, "-c", run_cli, "docs", "--engine", "offline"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    index = Path(res.stdout.strip().splitlines()[-1])
    assert index == (DOCS / "index.html").resolve() and index.exists()
    assert "offline renderer" in res.stdout
    return DOCS


def _sidebar_pages():
    "Notebook names listed in nbs/sidebar.yml, as Quarto names their pages."
    def walk(items):
        for it in items:
            if isinstance(it, str): yield it
            elif isinstance(it, dict):
                if "href" in it: yield it["href"]
                yield from walk(it.get("contents", []))
    side = yaml.safe_load((ROOT / "nbs" / "sidebar.yml").read_text())
    return [re.sub(r"^\d+[a-zA-Z0-9]*_", "", Path(p).stem) + ".html" for p in walk(side["website"]["sidebar"]["contents"])]


# Appended to every page the test server sends: records each image's width on screen and, with ?probe-search=…,
# types the query into the search box and records how many results appear.
_PROBE = """<script>addEventListener('load', () => {
  for (const img of document.images) img.dataset.shownWidth = img.getBoundingClientRect().width.toFixed(1);
  const query = new URLSearchParams(location.search).get('probe-search'), box = document.querySelector('.smalldocs-search input');
  if (query && box) {
    box.value = query; box.dispatchEvent(new Event('input', {bubbles: true}));
    setTimeout(() => { document.body.dataset.searchHits = document.querySelectorAll('.search-result').length; }, 2000);
  }
});</script>"""
WINDOW = "--window-size=1280,1000"  # a laptop's browser window


@pytest.fixture(scope="module")
def served(site):
    "The site on 127.0.0.1 through `serve_site` (what `opt_lab docs --serve` runs); every request is logged with its status."
    from opt_lab.cli import serve_site
    server, answered = serve_site(site, port=0), []
    quiet = server.RequestHandlerClass

    class Probed(quiet.func):
        def log_request(self, code="-", size="-"): answered.append((self.path, int(getattr(code, "value", code))))

        def do_GET(self):
            page = Path(self.translate_path(self.path))
            if page.suffix != ".html" or not page.is_file(): return super().do_GET()
            body = page.read_text().replace("</body>", _PROBE + "</body>").encode()
            self.send_response(200); self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)

    server.RequestHandlerClass = partial(Probed, *quiet.args, **quiet.keywords)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", answered
    server.shutdown()


def _page_requests(netlog: Path, origin: str) -> list[str]:
    "URLs the page itself asked for: its own load and what it initiated (Chromium's own service requests excluded)."
    log = json.loads(netlog.read_text())
    kinds = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    return [e["params"]["url"] for e in log["events"] if kinds[e["type"]] == "URL_REQUEST_START_JOB" and "url" in e.get("params", {})
            and (e["params"].get("initiator") == origin or e["params"].get("request_type") == "main frame")]


def _load(served, tmp, page: str) -> _Dom:
    "Open a served page (external hosts unresolvable), parse its rendered DOM, attach the requests it made with their statuses."
    base, answered = served
    answered.clear()
    netlog = tmp / f"net-{page}.json"
    dom = _Dom()
    dom.feed(_chromium(tmp, WINDOW, f"--log-net-log={netlog}", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                       "--dump-dom", base + page))
    statuses = dict(answered)
    dom.requests = [(url, statuses.get("/" + url[len(base):], None)) for url in _page_requests(netlog, base.rstrip("/"))]
    return dom


@pytest.fixture(scope="module")
def doms(site, served, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chromium")
    out = {}
    for page in _sidebar_pages():
        assert (site / page).exists(), f"sidebar page {page} was not rendered"
        out[page] = _load(served, tmp, page)
    return out


def test_sidebar_pages_render(doms):
    from execnb.nbio import read_nb
    assert "index.html" in doms and "core.html" in doms
    for nb in (ROOT / "nbs").glob("*.ipynb"):
        page = re.sub(r"^\d+[a-zA-Z0-9]*_", "", nb.stem) + ".html"
        assert page in doms, f"{nb.name} is not in nbs/sidebar.yml"
        title = read_nb(nb).cells[0].source.splitlines()[0].lstrip("# ").strip()
        assert doms[page].h1.strip() == title.replace("`", ""), f"{page}: title {doms[page].h1!r}, expected {title!r}"


def test_every_public_symbol_has_its_anchor(doms):
    from opt_lab._modidx import d
    missing = []
    for module, syms in d["syms"].items():
        for name, (link, _) in syms.items():
            if any(part.startswith("_") for part in name.split(".")[2:]): continue
            page, anchor = link.split("#")
            if page not in doms: missing.append(f"{name}: page {page} not in the sidebar"); continue
            if anchor not in doms[page].ids: missing.append(f"{name}: no #{anchor} on {page}")
    assert not missing, "\n".join(missing)


def _visible_png_outputs(nb_path):
    "Number of code cells whose saved outputs hold a PNG and that a reader sees."
    from nbdev.process import extract_directives
    from execnb.nbio import read_nb
    count = 0
    for cell in read_nb(nb_path).cells:
        if cell.cell_type != "code": continue
        opts = {k.rstrip(":"): v for k, v in extract_directives(cell, remove=False).items()}
        if "hide" in opts or opts.get("include") == ["false"] or opts.get("output") == ["false"]: continue
        count += sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
    return count


def test_every_figure_is_an_image(doms):
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        page = re.sub(r"^\d+[a-zA-Z0-9]*_", "", nb.stem) + ".html"
        if page not in doms: continue
        pngs = [s for s in doms[page].img_srcs if s.startswith("data:image/png") or s.endswith(".png")]
        assert len(pngs) >= _visible_png_outputs(nb), f"{page}: {len(pngs)} PNG images for {_visible_png_outputs(nb)} figures"
    assert any(s.startswith("data:image/png") or s.endswith(".png") for s in doms["display.html"].img_srcs)


def test_no_directive_leaks(doms):
    for page, dom in doms.items():
        leaked = [line for text in dom.pre_texts for line in text.splitlines() if line.lstrip().startswith("#|")]
        assert not leaked, f"{page} shows nbdev directives: {leaked[:3]}"




_RAW_TEX = re.compile(r"\\\(|\\\[|\$[^$\s][^$]*\\[A-Za-z]+[^$]*\$")  # \( or \[ left, or $…\cmd…$ never rendered


def test_every_formula_renders_offline(doms):
    "Every page's mathematics is rendered by the bundled KaTeX: no raw TeX left in the prose, no KaTeX error."
    figures = {}
    for page, dom in doms.items():
        raw = _RAW_TEX.findall(dom.prose)
        assert not raw, f"{page}: {len(raw)} formulas left as raw TeX, e.g. {raw[:3]}"
        assert dom.formula_errors == 0, f"{page}: {dom.formula_errors} KaTeX errors"
        figures[page] = dom.formulas
    assert figures["mice_theory.html"] > 50 and figures["em_expfam.html"] > 20, figures
    print("formulas rendered per page:", json.dumps(figures))


def test_no_page_loads_anything_from_the_network(doms, site):
    "Scripts, styles, icons and images come from the site itself (links to other sites are fine: they are not loaded)."
    for page, dom in doms.items():
        external = [u for u in dom.loads if re.match(r"^(https?:)?//", u)]
        assert not external, f"{page} loads {external[:3]}"
        assert "opt-lab.github.io" not in " ".join(dom.loads), page
    for css in site.rglob("*.css"):
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", css.read_text(errors="replace")), f"{css} loads from the network"


def test_every_request_stays_on_the_machine_and_succeeds(doms, served):
    "What the browser itself requested, page by page: only the local server, and every request answered 200."
    base, _ = served
    counts = {}
    for page, dom in doms.items():
        assert dom.requests and dom.requests[0][0] == base + page, f"{page}: the page's own load was not seen"
        external = [u for u, _ in dom.requests if not u.startswith(base)]
        assert not external, f"{page} requested {external[:3]}"
        failed = [(u, code) for u, code in dom.requests if code != 200]
        assert not failed, f"{page}: failed requests {failed[:3]}"
        counts[page] = len(dom.requests)
    print("requests per page (all local, all 200):", json.dumps(counts))


def test_search_finds_pages_when_served(served, tmp_path):
    dom = _load(served, tmp_path, "index.html?probe-search=Polyak")
    assert dom.search_hits > 0, "search returned no result for 'Polyak'"
    assert any(u.endswith("/search.json") and code == 200 for u, code in dom.requests), dom.requests


def _figure_widths(nb_path) -> dict[str, float]:
    "The width (CSS pixels) each visible PNG figure was drawn at, keyed by the end of its base64 text."
    from nbdev.process import extract_directives
    from execnb.nbio import read_nb
    import base64, struct
    widths = {}
    for cell in read_nb(nb_path).cells:
        if cell.cell_type != "code": continue
        opts = {k.rstrip(":"): v for k, v in extract_directives(cell, remove=False).items()}
        if "hide" in opts or opts.get("include") == ["false"] or opts.get("output") == ["false"]: continue
        for out in cell.get("outputs", []):
            data = "".join(out.get("data", {}).get("image/png", "")).replace("\n", "").strip()
            if not data: continue
            pixels = struct.unpack(">I", base64.b64decode(data[:32])[16:20])[0]
            widths[data[-64:]] = float(out.get("metadata", {}).get("image/png", {}).get("width", pixels))
    return widths


def test_figures_are_shown_at_the_size_they_were_drawn(doms):
    "In a 1280-pixel window no figure is shrunk below 85 % of its drawn width (wide figures take the page column)."
    checked = 0
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        page = re.sub(r"^\d+[a-zA-Z0-9]*_", "", nb.stem) + ".html"
        if page not in doms: continue
        shown = {src.replace("\n", "")[-64:]: width for src, width in zip(doms[page].img_srcs, doms[page].img_shown)
                 if src.startswith("data:image/png")}
        for key, drawn in _figure_widths(nb).items():
            assert key in shown, f"{page}: a figure of {nb.name} is not on the page"
            assert shown[key] >= 0.85 * drawn, f"{page}: a figure drawn {drawn:.0f} px wide is shown at {shown[key]:.0f} px"
            checked += 1
    assert checked > 20, checked


def test_api_links_stay_in_the_preview(site):
    leaving = [p.name for p in site.glob("*.html") if "https://opt-lab.github.io/opt_lab/" in p.read_text()]
    assert not leaving, f"pages linking to the published site instead of the local page: {leaving[:5]}"


def test_screenshots_of_three_pages_are_kept(site, tmp_path):
    ARTEFACTS.mkdir(exist_ok=True)
    for page in ("index", "mice_theory", "from_mice"):
        shot = ARTEFACTS / f"{page}.png"
        _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", (site / f"{page}.html").as_uri())
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, page
        print(f"screenshot: {shot}")


def test_signatures_are_real_and_fields_documented(doms):
    "No `VAR_POSITIONAL`, `VAR_KEYWORD` or `NoneType` in any signature; every documented NamedTuple field reaches its page."
    import importlib
    from opt_lab._modidx import d
    from opt_lab.book.apidoc import _fields
    for page, dom in doms.items():
        if page == "apidoc.html": continue  # the renderer's own chapter names the artefacts it removes
        bad = [w for w in ("VAR_POSITIONAL", "VAR_KEYWORD", "NoneType") if any(w in text for text in dom.pre_texts)]
        assert not bad, f"{page} shows {bad} in a signature"
    checked = 0
    for module, syms in d["syms"].items():
        if module.startswith("opt_lab.compat"): continue  # the compatibility modules re-export the chapters' classes
        mod = importlib.import_module(module)
        for name, (link, _) in syms.items():
            obj = getattr(mod, name.split(".")[-1], None) if name.count(".") == module.count(".") + 1 else None
            if not (isinstance(obj, type) and hasattr(obj, "_fields")) or name.split(".")[-1].startswith("_"): continue
            page = link.split("#")[0]
            for field, _, comment in _fields(obj):
                if comment and not set(comment) & set("$`\\*_["):  # plain text survives rendering as written
                    prose = doms[page].prose.translate(str.maketrans("’‘“”", "''\"\""))  # typographic quotes as typed
                    assert comment in prose, f"{name}.{field}: {comment!r} is not on {page}"
                    checked += 1
    assert checked > 20, checked
