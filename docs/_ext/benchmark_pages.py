"""Generate one page per benchmark report (benchmarks/results/*.md), rendered by MyST.

The reports are the benchmark scripts' own Markdown output plus notes, each with its date,
machine and command. A new report appears in the docs without editing any page; developer
A/B records in ``benchmarks/results/dev/`` are not rendered.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from generated_files import write_if_changed


def generate(app) -> None:
    results = Path(app.srcdir).parent / "benchmarks" / "results"
    out = Path(app.srcdir) / "benchmarks" / "generated"
    out.mkdir(exist_ok=True)
    wanted = {out / "toctree.inc"}
    names = sorted(path.stem for path in results.glob("*.md"))
    toctree = [".. toctree::", "   :maxdepth: 1", ""]
    toctree += [f"   generated/{name}" for name in names]
    write_if_changed(out / "toctree.inc", "\n".join(toctree) + "\n")
    for name in names:
        page = out / f"{name}.rst"
        wanted.add(page)
        source = f"../../../benchmarks/results/{name}.md"
        if "myst_parser" in app.extensions:
            text = f".. include:: {source}\n   :parser: myst_parser.sphinx_\n"
        else:  # the docs extra's myst-parser is missing: show the Markdown as it is
            title = name.replace("_", " ").capitalize() + " benchmark"
            text = f"{title}\n{'=' * len(title)}\n\n.. literalinclude:: {source}\n"
            text += "   :language: markdown\n"
        write_if_changed(page, text)
    # Figures the reports link to ([plot](sampling.svg)) are resolved next to the page.
    for figure in [*results.glob("*.svg"), *results.glob("*.png")]:
        target = out / figure.name
        wanted.add(target)
        if not target.exists() or target.read_bytes() != figure.read_bytes():
            shutil.copyfile(figure, target)
    for path in out.iterdir():
        if path not in wanted:
            path.unlink()


def setup(app):
    app.connect("builder-inited", generate, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
