"""Check the built HTML documentation for what a reader would see broken.

Usage: ``python scripts/check_docs.py [BUILD_DIR]`` after ``make docs`` (default
``docs/_build/html``); exits 1 and lists the problems if any check fails:

- every public name of gpkern is documented on its API page, and every estimator's page
  documents ``fit`` and ``predict`` (``transform`` for transformers) and its other public
  scikit-learn methods, inherited ones included;
- no page shows a merge-conflict marker, an unexpanded placeholder (an ALL_CAPS_NAME that is
  not a documented gpkern constant, ``{{ ... }}``, TODO) or unrendered math (``\\[``, ``\\(``, ``$$`` or ``:math:``
  outside math markup), and math is typeset by a MathJax served with the site;
- the "Section Navigation" sidebar of every user-guide page lists pages;
- every relative link and image resolves to a file of the build, and every ``#anchor`` to an
  element of its page;
- once the gallery has been executed, every example has a thumbnail of its own.
"""

from __future__ import annotations

import hashlib
import html
import re
import sys
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


class Page(HTMLParser):
    """Links, ids, visible text outside code and math, and the section navigation of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.nav_links = 0
        self.has_math = False
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
        if tag == "nav" and "bd-docs-nav" in classes:
            self._nav_depth = 1
        elif tag == "nav" and self._nav_depth:
            self._nav_depth += 1
        if classes & MATH_CLASSES:
            self.has_math = True
        if tag in SKIPPED_TEXT_TAGS or classes & MATH_CLASSES or self._skip:
            if tag not in ("br", "img", "meta", "link", "input", "hr"):
                self._skip.append(tag)

    def handle_endtag(self, tag):
        if tag == "nav" and self._nav_depth:
            self._nav_depth -= 1
        if self._skip and self._skip[-1] == tag:
            self._skip.pop()

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def documented_names(build: Path) -> set[str]:
    """Last components of every object in the build's own inventory (constants included)."""
    import zlib

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
            if match.group(0) not in constants:
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
        + check_text(build, pages)
        + check_links(build, pages)
        + check_thumbnails(build)
    )
    for problem in problems:
        print(problem)
    print(f"checked {len(pages)} pages: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
