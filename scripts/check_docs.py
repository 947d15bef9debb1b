"""Check the built HTML documentation for what a reader would see broken.

Usage: ``python scripts/check_docs.py [BUILD_DIR] [--list-external]`` after ``make docs`` (default
``docs/_build/html``); exits 1 and lists the problems if any check fails:

- every public name of gpkern is documented on its API page, and every estimator's page
  documents ``fit`` and ``predict`` (``transform`` for transformers) and its other public
  scikit-learn methods, inherited ones included;
- no page shows a merge-conflict marker, an unexpanded placeholder (an ALL_CAPS_NAME that is
  not a documented gpkern constant, ``{{ ... }}``, TODO) or unrendered math (``\\[``, ``\\(``, ``$$`` or ``:math:``
  outside math markup), and math is typeset by a MathJax served with the site;
- the "Section Navigation" sidebar of every user-guide page lists pages;
- every user-guide page says when to use its model and has a code snippet, "Key parameters"
  and "Pitfalls" sections, and links to a gallery example and to the API reference;
- no two pages share a title (the benchmark reports are told apart by their titles);
- every relative link and image resolves to a file of the build, and every ``#anchor`` to an
  element of its page;
- every external link is a well-formed ``http(s)`` or ``mailto`` URL (listed with
  ``--list-external``; nothing is fetched), and every intersphinx inventory configured in
  ``docs/conf.py`` is a local, readable Sphinx inventory whose base URL and object URLs are
  well-formed and which holds every object ``scripts/make_intersphinx_inventories.py`` lists;
- no page loads a script or a stylesheet from another host (the site works offline);
- once the gallery has been executed, every example has a thumbnail of its own.
"""

from __future__ import annotations

import hashlib
import html
import re
import runpy
import sys
import zlib
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
MATH_CLASSES = {"math"}
SKIPPED_TEXT_TAGS = {"script", "style", "pre", "code", "kbd", "samp"}
PLACEHOLDER = re.compile(r"<{7}|>{7}|\b[A-Z]{2,}(?:_[A-Z0-9]{2,})+\b|\{\{.*?\}\}|\bTODO\b|\bFIXME\b")
# Documented on an estimator's page when it has them (fit and predict always; transformers
# have transform instead of predict).
ESTIMATOR_METHODS = ("fit", "predict", "predict_proba", "transform", "score")
RAW_MATH = re.compile(r"\\\[|\\\(|\$\$|:math:`")
# Sections every user-guide page must have: section id -> what the reader misses without it.
GUIDE_SECTIONS = {"key-parameters": "a Key parameters section", "pitfalls": "a Pitfalls section"}
HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?::\d+)?$")
URL_CHARS = re.compile(r"^[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+$")


class Page(HTMLParser):
    """Links, ids, visible text outside code and math, and the section navigation of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.stylesheets: list[str] = []
        self.nav_links = 0
        self.has_math = False
        self.title = ""
        self.code_blocks = 0
        self._in_title = False
        self._skip: list[str] = []  # stack of tags whose text is not checked
        self._nav_depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        classes = set((attrs.get("class") or "").split())
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
            if self._nav_depth and "reference" in classes:
                self.nav_links += 1
        if tag in ("img", "script") and attrs.get("src"):
            self.links.append(attrs["src"])
            if tag == "script":
                self.scripts.append(attrs["src"])
        if tag == "link" and attrs.get("href") and attrs.get("rel") in ("stylesheet", "icon"):
            self.links.append(attrs["href"])
            if attrs.get("rel") == "stylesheet":
                self.stylesheets.append(attrs["href"])
        if tag == "nav" and "bd-docs-nav" in classes:
            self._nav_depth = 1
        elif tag == "nav" and self._nav_depth:
            self._nav_depth += 1
        if classes & MATH_CLASSES:
            self.has_math = True
        if tag == "title":
            self._in_title = True
        if tag == "div" and any(c.startswith("highlight-") for c in classes):
            self.code_blocks += 1
        if tag in SKIPPED_TEXT_TAGS or classes & MATH_CLASSES or self._skip:
            if tag not in ("br", "img", "meta", "link", "input", "hr"):
                self._skip.append(tag)

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag == "nav" and self._nav_depth:
            self._nav_depth -= 1
        if self._skip and self._skip[-1] == tag:
            self._skip.pop()

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if not self._skip:
            self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def documented_names(build: Path) -> set[str]:
    """Last components of every object in the build's own inventory (constants included)."""
    data = (build / "objects.inv").read_bytes()
    body = zlib.decompress(data.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0].rsplit(".", 1)[-1] for line in body.splitlines() if line}


def check_links(build: Path, pages: dict[Path, Page]) -> list[str]:
    problems = []
    for path, page in pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:")):
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if parts.path.endswith("/"):
                target = target / "index.html"
            if not target.exists():
                problems.append(f"{path.relative_to(build)}: broken link {link}")
                continue
            if parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse(target).ids
                if unquote(parts.fragment) not in ids:
                    problems.append(f"{path.relative_to(build)}: missing anchor {link}")
    return problems


def check_text(build: Path, pages: dict[Path, Page]) -> list[str]:
    problems = []
    constants = documented_names(build)
    for path, page in pages.items():
        rel = path.relative_to(build)
        if rel.parts[0] in ("_modules", "_sources", "benchmarks"):
            continue  # source listings, and the benchmark reports' raw Markdown
        text = html.unescape(" ".join(page.text))
        for match in PLACEHOLDER.finditer(text):
            before, after = text[match.start() - 1 : match.start()], text[match.end() : match.end() + 1]
            quoted = before in ("'", '"') and after == before
            if match.group(0) not in constants and not quoted:  # quoted: a string's value
                problems.append(f"{rel}: placeholder-like text {match.group(0)!r}")
        for match in RAW_MATH.finditer(text):
            context = text[max(0, match.start() - 30) : match.end() + 30].replace("\n", " ")
            problems.append(f"{rel}: unrendered math {context!r}")
        if page.has_math:
            mathjax = [s for s in page.scripts if "mathjax" in s.lower()]
            if not mathjax:
                problems.append(f"{rel}: math but no MathJax script")
            remote = [s for s in mathjax if urlsplit(s).scheme]
            if remote:
                problems.append(f"{rel}: MathJax loaded from the network ({remote[0]})")
    return problems


def check_offline(build: Path, pages: dict[Path, Page]) -> list[str]:
    """No page loads a script or a stylesheet from another host: the site works offline."""
    problems = []
    for path, page in pages.items():
        for src in page.scripts + page.stylesheets:
            if urlsplit(src).scheme or src.startswith("//"):
                problems.append(f"{path.relative_to(build)}: loads {src} from the network")
    return problems


def check_api(build: Path, pages: dict[Path, Page]) -> list[str]:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    import api_pages

    import gpkern.estimators

    problems = []
    for name in api_pages.collect()[1]:
        page = build / "api" / "generated" / f"{name}.html"
        if page not in pages or name not in pages[page].ids:
            problems.append(f"public name {name} is not documented on its API page")
    for name in gpkern.estimators.__all__:
        page = build / "api" / "generated" / f"gpkern.estimators.{name}.html"
        if page not in pages:
            problems.append(f"no API page for gpkern.estimators.{name}")
            continue
        estimator = getattr(gpkern.estimators, name)
        for method in ESTIMATOR_METHODS:
            if method not in ("fit", "predict") and not hasattr(estimator, method):
                continue
            if method == "predict" and hasattr(estimator, "transform"):
                continue  # a transformer
            if f"gpkern.estimators.{name}.{method}" not in pages[page].ids:
                problems.append(f"{page.relative_to(build)}: {method} is not documented")
    return problems


def check_navigation(build: Path, pages: dict[Path, Page]) -> list[str]:
    guide = [p for p in pages if p.parent == build / "user_guide"]
    problems = [
        f"{p.relative_to(build)}: empty section navigation" for p in guide if pages[p].nav_links < 2
    ]
    if not guide:
        problems.append("no user-guide pages")
    return problems


def guide_pages(build: Path, pages: dict[Path, Page]) -> list[Path]:
    return sorted(p for p in pages if p.parent == build / "user_guide" and p.name != "index.html")


def check_guide_sections(build: Path, pages: dict[Path, Page]) -> list[str]:
    """Each guide page: when to use it, a snippet, key parameters, pitfalls, gallery and API links."""
    problems = []
    for path in guide_pages(build, pages):
        page, rel = pages[path], path.relative_to(build)
        missing = [what for anchor, what in GUIDE_SECTIONS.items() if anchor not in page.ids]
        if "When to use it" not in " ".join(page.text):
            missing.append('a "When to use it" paragraph')
        if not page.code_blocks:
            missing.append("a code snippet")
        targets = [urlsplit(link).path for link in page.links if not urlsplit(link).scheme]
        if not any("auto_examples/" in t for t in targets):
            missing.append("a link to a gallery example")
        if not any("api/generated/" in t for t in targets):
            missing.append("a link to the API reference")
        problems += [f"{rel}: lacks {what}" for what in missing]
    return problems


def check_titles(build: Path, pages: dict[Path, Page]) -> list[str]:
    """No two pages share a title: the reader tells pages (benchmark reports) apart by it."""
    by_title = defaultdict(list)
    for path, page in pages.items():
        rel = path.relative_to(build)
        # sphinx-gallery writes its timing tables, one per gallery and one overall, as pages.
        if rel.parts[0] not in ("_modules", "_sources") and rel.name != "sg_execution_times.html":
            by_title[" ".join(page.title.split())].append(str(rel))
    return [
        f"{len(paths)} pages share the title {title!r}: {sorted(paths)}"
        for title, paths in by_title.items()
        if title and len(paths) > 1
    ]


def url_problem(url: str) -> str | None:
    """Why an external URL is malformed, or None."""
    parts = urlsplit(url)
    if parts.scheme == "mailto":
        return None if re.fullmatch(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}", parts.path) else "bad address"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not http(s)"
    if not HOST.match(parts.netloc):
        return f"host {parts.netloc!r} is not a domain name"
    if not URL_CHARS.match(url):
        return "characters that must be percent-encoded"
    return None


def external_links(pages: dict[Path, Page]) -> dict[str, list[Path]]:
    found = defaultdict(list)
    for path, page in pages.items():
        for link in page.links:
            if urlsplit(link).scheme and not link.startswith("javascript:"):
                found[link].append(path)
    return found


def check_external(build: Path, pages: dict[Path, Page]) -> list[str]:
    """External links are well-formed URLs (offline: their syntax only, nothing is fetched)."""
    problems = []
    for url, paths in sorted(external_links(pages).items()):
        why = url_problem(url)
        if why:
            problems.append(f"{paths[0].relative_to(build)}: malformed external link {url} ({why})")
    return problems


def read_inventory(path: Path) -> tuple[str, list[tuple[str, str, str]]]:
    """Project name and (name, domain:role, uri) rows of a Sphinx version-2 inventory."""
    data = path.read_bytes()
    header = data.split(b"\n", 4)
    if len(header) < 5 or header[0] != b"# Sphinx inventory version 2":
        raise ValueError("not a Sphinx version-2 inventory")
    project = header[1].decode().removeprefix("# Project: ").strip()
    rows = []
    for line in zlib.decompress(header[4]).decode().splitlines():
        match = re.match(r"(.+?)\s+(\S+:\S+)\s+(-?\d+)\s+(\S*)\s+(.*)", line)
        if not match:
            raise ValueError(f"unreadable line {line!r}")
        name, role, _, uri, _ = match.groups()
        rows.append((name, role, uri.replace("$", name) if uri.endswith("$") else uri))
    return project, rows


def check_intersphinx(mapping: dict, expected: dict[str, set[str]]) -> list[str]:
    """Each configured inventory is local and readable, its URLs well-formed, nothing missing.

    ``mapping`` is Sphinx's ``intersphinx_mapping`` (project -> (base URL, inventory)),
    ``expected`` the objects each project's inventory must hold.
    """
    problems = []
    for project, (base, inventory) in mapping.items():
        where = f"intersphinx {project!r}"
        why = url_problem(base)
        if why or not base.endswith("/"):
            problems.append(f"{where}: base URL {base!r} is malformed ({why or 'no trailing /'})")
        if not isinstance(inventory, str) or urlsplit(inventory).scheme:
            problems.append(f"{where}: inventory {inventory!r} is not a local file (offline build)")
            continue
        path = Path(inventory)
        if not path.is_file():
            problems.append(f"{where}: inventory {inventory} does not exist")
            continue
        try:
            name, rows = read_inventory(path)
        except (ValueError, zlib.error, UnicodeDecodeError) as error:
            problems.append(f"{where}: {inventory} is unreadable ({error})")
            continue
        if name != project:
            problems.append(f"{where}: {inventory} is the inventory of {name!r}")
        for obj, _, uri in rows:
            parts = urlsplit(uri)
            if parts.scheme or parts.netloc or uri.startswith("/") or not uri or " " in uri:
                problems.append(f"{where}: {obj} has a malformed relative URL {uri!r}")
            elif url_problem(base + uri):
                problems.append(f"{where}: {obj} links to a malformed URL {base + uri!r}")
        missing = sorted(expected.get(project, set()) - {obj for obj, _, _ in rows})
        if missing:
            problems.append(
                f"{where}: {inventory} lacks {missing} (run scripts/make_intersphinx_inventories.py)"
            )
    return problems


def configured_intersphinx() -> list[str]:
    """check_intersphinx on the mapping of docs/conf.py and the objects of the inventory script."""
    conf = runpy.run_path(str(ROOT / "docs" / "conf.py"))
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_intersphinx_inventories import INVENTORIES

    expected = {project: set(objects) for project, (_, objects) in INVENTORIES.items()}
    return check_intersphinx(conf.get("intersphinx_mapping", {}), expected)


def check_thumbnails(build: Path) -> list[str]:
    gallery = build / "auto_examples"
    executed = any(
        "sphx-glr-single-img" in p.read_text(errors="replace")
        or "sphx-glr-multi-img" in p.read_text(errors="replace")
        for p in gallery.glob("*.html")
    )
    if not executed:
        return []  # a build without executing the gallery has placeholder thumbnails
    index = parse(gallery / "index.html")
    thumbs = [link for link in index.links if "_thumb." in link]
    by_digest = defaultdict(list)
    for link in thumbs:
        by_digest[hashlib.sha256((gallery / link).read_bytes()).hexdigest()].append(link)
    stock = stock_thumbnails()
    problems = [
        f"auto_examples: {len(links)} examples share one thumbnail: {links}"
        for links in by_digest.values()
        if len(links) > 1
    ]
    problems += [
        f"auto_examples: {link} is sphinx-gallery's {stock[digest]} thumbnail"
        for digest, links in by_digest.items()
        if digest in stock
        for link in links
    ]
    return problems


def stock_thumbnails() -> dict[str, str]:
    """Digests of the thumbnails sphinx-gallery makes for examples without (or failing) a figure."""
    import tempfile

    from sphinx_gallery.gen_rst import glr_path_static
    from sphinx_gallery.utils import scale_image

    digests = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("no_image.png", "broken_example.png"):
            out = Path(tmp) / name
            scale_image(Path(glr_path_static()) / name, out, 400, 280)
            digests[hashlib.sha256(out.read_bytes()).hexdigest()] = name.removesuffix(".png")
    return digests


def main(argv: list[str]) -> int:
    list_external = "--list-external" in argv
    argv = [a for a in argv if a != "--list-external"]
    build = (Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "_build" / "html").resolve()
    if not (build / "index.html").exists():
        print(f"{build}: no built documentation (run `make docs`)")
        return 1
    pages = {
        path.resolve(): parse(path)
        for path in build.rglob("*.html")
        if path.relative_to(build).parts[0] != "_static"  # theme templates, not pages
    }
    problems = (
        check_api(build, pages)
        + check_navigation(build, pages)
        + check_guide_sections(build, pages)
        + check_titles(build, pages)
        + check_text(build, pages)
        + check_links(build, pages)
        + check_external(build, pages)
        + check_offline(build, pages)
        + configured_intersphinx()
        + check_thumbnails(build)
    )
    if list_external:
        for url, paths in sorted(external_links(pages).items()):
            print(f"{url}  ({len(paths)} page(s), e.g. {paths[0].relative_to(build)})")
    for problem in problems:
        print(problem)
    print(f"checked {len(pages)} pages: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
