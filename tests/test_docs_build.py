"""The docs checker (scripts/check_docs.py) flags what a reader would see broken.

The synthetic pages below are what the checker must catch; the last test runs it on the real
build when one exists (``make docs`` first; CI runs ``make docs-check`` after ``make docs``).
"""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_docs", ROOT / "scripts" / "check_docs.py")
check_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_docs)

NAV = (
    '<nav class="bd-docs-nav bd-links"><ul><li><a class="reference internal" href="a.html">A</a>'
    '</li><li><a class="reference internal" href="b.html">B</a></li></ul></nav>'
)


def write_site(tmp_path: Path, pages: dict[str, str]) -> Path:
    for name, body in pages.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html><body>{body}</body></html>")
    inventory = "gpkern.estimators.dkm.MAX_FULL_SAMPLES py:data 1 x.html#$ -\n"
    (tmp_path / "objects.inv").write_bytes(b"#\n#\n#\n#\n" + zlib.compress(inventory.encode()))
    return tmp_path


def problems(build: Path, check) -> list[str]:
    pages = {p.resolve(): check_docs.parse(p) for p in build.rglob("*.html")}
    return check(build.resolve(), pages)


def test_placeholder_and_raw_math_are_flagged_but_not_inside_math_or_code(tmp_path):
    build = write_site(
        tmp_path,
        {
            "bad.html": "<p>Results: BENCHMARK_SUMMARY and \\[ x^2 \\]</p><p>&lt;&lt;&lt;&lt;&lt;&lt;&lt; HEAD</p>",
            "good.html": (
                '<p>Constant MAX_FULL_SAMPLES, <span class="math">\\(x\\)</span>, '
                "<code>OMP_NUM_THREADS=1</code></p>"
                '<script src="_static/mathjax/tex-svg-full.js"></script>'
            ),
        },
    )
    found = problems(build, check_docs.check_text)
    assert any("bad.html" in p and "BENCHMARK_SUMMARY" in p for p in found)
    assert any("bad.html" in p and "unrendered math" in p for p in found)
    assert any("bad.html" in p and "<<<<<<<" in p for p in found)
    assert not [p for p in found if "good.html" in p]


def test_math_needs_a_local_mathjax(tmp_path):
    build = write_site(
        tmp_path,
        {
            "cdn.html": '<span class="math">\\(x\\)</span>'
            '<script src="https://cdn.example.org/mathjax/tex-chtml.js"></script>',
        },
    )
    assert any("network" in p for p in problems(build, check_docs.check_text))


def test_broken_links_and_anchors_are_flagged(tmp_path):
    build = write_site(
        tmp_path,
        {
            "index.html": '<a href="missing.html">x</a><a href="target.html#nope">y</a>'
            '<a href="target.html#here">z</a><a href="https://example.org/">w</a>',
            "target.html": '<h1 id="here">T</h1>',
        },
    )
    found = problems(build, check_docs.check_links)
    assert len(found) == 2
    assert any("missing.html" in p for p in found)
    assert any("#nope" in p for p in found)


def test_empty_guide_navigation_is_flagged(tmp_path):
    build = write_site(
        tmp_path,
        {
            "user_guide/full.html": NAV,
            "user_guide/empty.html": '<nav class="bd-docs-nav bd-links"><ul></ul></nav>',
        },
    )
    found = problems(build, check_docs.check_navigation)
    assert found == ["user_guide/empty.html: empty section navigation"]


def test_estimator_page_without_predict_is_flagged(tmp_path):
    pages = {
        f"api/generated/gpkern.estimators.{name}.html": "".join(
            f'<dt id="gpkern.estimators.{name}.{method}"></dt>'
            for method in check_docs.ESTIMATOR_METHODS
        )
        for name in check_docs_estimators()
    }
    pages["api/generated/gpkern.estimators.GPRegressor.html"] = (
        '<dt id="gpkern.estimators.GPRegressor.fit"></dt>'
        '<dt id="gpkern.estimators.GPRegressor.score"></dt>'
    )
    build = write_site(tmp_path, pages)
    found = problems(build, check_docs.check_api)
    assert "api/generated/gpkern.estimators.GPRegressor.html: predict is not documented" in found
    assert "public name gpkern.sampling.sample_kdpp is not documented on its API page" in found


def check_docs_estimators() -> list[str]:
    import gpkern.estimators

    return list(gpkern.estimators.__all__)


@pytest.mark.skipif(
    not (ROOT / "docs" / "_build" / "html" / "index.html").exists(), reason="docs not built"
)
def test_built_docs_pass_the_checks():
    assert check_docs.main(["check_docs", str(ROOT / "docs" / "_build" / "html")]) == 0


def test_stock_and_shared_gallery_thumbnails_are_flagged(tmp_path):
    import shutil

    from sphinx_gallery.gen_rst import glr_path_static
    from sphinx_gallery.utils import scale_image

    build = write_site(
        tmp_path,
        {
            "auto_examples/plot_a.html": '<img class="sphx-glr-single-img" src="x.png">',
            "auto_examples/index.html": "".join(
                f'<img src="../_images/sphx_glr_{n}_thumb.png">' for n in ("a", "b", "c", "d")
            ),
        },
    )
    images = build / "_images"
    images.mkdir()
    scale_image(Path(glr_path_static()) / "no_image.png", images / "sphx_glr_a_thumb.png", 400, 280)
    (images / "sphx_glr_b_thumb.png").write_bytes(b"figure b")
    (images / "sphx_glr_c_thumb.png").write_bytes(b"figure c")
    shutil.copy(images / "sphx_glr_c_thumb.png", images / "sphx_glr_d_thumb.png")
    found = check_docs.check_thumbnails(build.resolve())
    assert len(found) == 2
    assert any("sphx_glr_a_thumb" in p and "no_image" in p for p in found)
    assert any("2 examples share one thumbnail" in p and "sphx_glr_d_thumb" in p for p in found)


GUIDE_PAGE = (
    "<p><strong>When to use it.</strong> Always.</p>"
    '<div class="highlight-python notranslate"><pre>fit()</pre></div>'
    '<section id="key-parameters"><h2>Key parameters</h2></section>'
    '<section id="pitfalls"><h2>Pitfalls</h2></section>'
    '<a href="../auto_examples/plot_a.html">gallery</a>'
    '<a href="../api/generated/gpkern.estimators.GPRegressor.html#x">API</a>'
)


def test_guide_page_without_the_required_sections_is_flagged(tmp_path):
    build = write_site(
        tmp_path,
        {
            "user_guide/index.html": "<p>Contents</p>",
            "user_guide/full.html": GUIDE_PAGE,
            "user_guide/thin.html": GUIDE_PAGE.replace('id="pitfalls"', 'id="notes"').replace(
                "auto_examples", "elsewhere"
            ),
        },
    )
    found = problems(build, check_docs.check_guide_sections)
    assert sorted(found) == [
        "user_guide/thin.html: lacks a Pitfalls section",
        "user_guide/thin.html: lacks a link to a gallery example",
    ]


def test_pages_sharing_a_title_are_flagged(tmp_path):
    build = write_site(
        tmp_path,
        {
            "benchmarks/a.html": "<title>Scale mixtures — gpkern</title>",
            "benchmarks/b.html": "<title>Scale mixtures — gpkern</title>",
            "benchmarks/c.html": "<title>Scale mixture classifiers — gpkern</title>",
        },
    )
    found = problems(build, check_docs.check_titles)
    assert len(found) == 1
    assert "2 pages share the title 'Scale mixtures — gpkern'" in found[0]


def test_malformed_external_links_are_flagged(tmp_path):
    good = ["https://docs.gpytorch.ai/en/stable/kernels.html#x", "mailto:dev@gpkern.org"]
    bad = ["https://docs.gpytorch.ai/en/stable/a b.html", "htps//nowhere", "ftp://x.org/f",
           "https://localhost/", "mailto:nobody"]
    build = write_site(
        tmp_path, {"index.html": "".join(f'<a href="{url}">x</a>' for url in good + bad)}
    )
    found = problems(build, check_docs.check_external)
    assert len(found) == len(bad) - 1  # "htps//nowhere" has no scheme: a relative link
    for url in bad:
        if url != "htps//nowhere":
            assert any(url in p for p in found)


def write_inventory(path: Path, project: str, lines: list[str]) -> str:
    header = f"# Sphinx inventory version 2\n# Project: {project}\n# Version: 1\n# z\n"
    path.write_bytes(header.encode() + zlib.compress("\n".join(lines).encode()))
    return str(path)


def test_intersphinx_inventories_are_checked_offline(tmp_path):
    ok = write_inventory(tmp_path / "ok.inv", "lib", ["lib.A py:class 1 api.html#$ -"])
    other = write_inventory(tmp_path / "other.inv", "other", ["lib.A py:class 1 api.html#$ -"])
    absolute = write_inventory(
        tmp_path / "abs.inv", "lib", ["lib.A py:class 1 https://elsewhere.org/a.html -"]
    )
    (tmp_path / "broken.inv").write_bytes(b"# Sphinx inventory version 2\n#\n#\n#\nnot zlib")
    expected = {"lib": {"lib.A"}}
    assert check_docs.check_intersphinx({"lib": ("https://lib.org/en/", ok)}, expected) == []
    cases = {
        "base URL": ("https://lib.org/en", ok),
        "not a local file": ("https://lib.org/", "https://lib.org/objects.inv"),
        "does not exist": ("https://lib.org/", str(tmp_path / "missing.inv")),
        "unreadable": ("https://lib.org/", str(tmp_path / "broken.inv")),
        "inventory of 'other'": ("https://lib.org/", other),
        "malformed relative URL": ("https://lib.org/", absolute),
    }
    for why, entry in cases.items():
        found = check_docs.check_intersphinx({"lib": entry}, expected)
        assert any(why in p for p in found), (why, found)
    found = check_docs.check_intersphinx({"lib": ("https://lib.org/", ok)}, {"lib": {"lib.B"}})
    assert any("lacks ['lib.B']" in p for p in found)


def test_the_configured_intersphinx_inventories_pass():
    assert check_docs.configured_intersphinx() == []
