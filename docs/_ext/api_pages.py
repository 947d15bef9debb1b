"""Generate the API reference from gpkern's public names.

A module is public when no part of its dotted name starts with an underscore; its public names
are its ``__all__`` (or, without one, the classes and functions it defines). Every object gets
one page, named by the shortest public path that exports it (``gpkern.estimators.GPRegressor``,
not ``gpkern.estimators.gp_regressor.GPRegressor``), and is listed once, in the section of the
module that defines it. Each package (and each top-level module) gets a page with one section
per module. A new module or estimator therefore appears without editing any page.

Class pages document the public methods and properties the class defines or inherits from
gpkern and scikit-learn (``fit``, ``predict``, ``score``, ``get_params``...), but not the
hundreds inherited from ``torch.nn.Module`` or GPyTorch's base classes.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from generated_files import write_if_changed

PACKAGE = "gpkern"
# Pages listed first in the API index; every other page follows in alphabetical order.
LEADING_PAGES = ("gpkern.estimators", "gpkern.kernels", "gpkern.models")
TRAILING_PAGES = ("gpkern",)  # the package itself holds only __version__
# Members from these libraries' classes are documented on a gpkern class's page.
INHERIT_FROM = ("gpkern", "sklearn")
# scikit-learn's metadata-routing machinery: generated per estimator, cites sklearn's own guide.
SKIP_MEMBERS = ("get_metadata_routing", "set_output")
SKIP_NAME = re.compile(r"^_|^set_\w+_request$")


@dataclass
class Entry:
    """One public object: where it is listed and the name its page documents."""

    name: str  # canonical dotted name
    kind: str  # class, exception, function, data
    home: str  # module whose section lists it
    members: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)  # other dotted paths to the same object


def public_modules() -> list[str]:
    """Dotted names of gpkern's public modules, packages before their children."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, prefix=PACKAGE + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def defined_names(module) -> set[str]:
    """Names bound at the top level of the module's source by def, class or assignment."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def exported_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    ]


def kind_of(value) -> str:
    if inspect.isclass(value):
        return "exception" if issubclass(value, BaseException) else "class"
    if callable(value) and not isinstance(value, tuple | list | dict):
        return "function"
    return "data"


def class_members(cls) -> list[str]:
    """Public methods and properties defined by cls or inherited from gpkern/sklearn classes."""
    names = []
    for base in cls.__mro__:
        if base.__module__.split(".")[0] not in INHERIT_FROM:
            continue
        for name, value in vars(base).items():
            if name in names or name in SKIP_MEMBERS:
                continue
            if SKIP_NAME.match(name):
                continue
            raw = value.__func__ if isinstance(value, classmethod | staticmethod) else value
            if inspect.isfunction(raw) or isinstance(raw, property):
                names.append(name)
    return names


def collect() -> tuple[list[str], dict[str, Entry]]:
    """Public modules and the entries keyed by canonical name."""
    modules = public_modules()
    rows = []  # (module, exported name, value, whether the module's source defines the name)
    for modname in modules:
        module = importlib.import_module(modname)
        own = defined_names(module)
        rows += [(modname, n, getattr(module, n), n in own) for n in exported_names(module)]
    definers = {(m, n): v for m, n, v, defines in rows if defines}
    origin: dict[tuple[str, str], list[str]] = {}  # (defining module, name) -> exporters
    values = {}
    for modname, name, value, defines in rows:
        if inspect.isclass(value) or inspect.isfunction(value):
            key = (value.__module__, value.__qualname__)
        elif defines:
            key = (modname, name)
        else:  # a re-exported constant: found by identity among the modules defining it
            key = next(
                (k for k, v in definers.items() if k[1] == name and v is value), (modname, name)
            )
        origin.setdefault(key, []).append(modname)
        values[key] = value
    entries = {}
    for (defined_in, qualname), exporters in origin.items():
        value = values[(defined_in, qualname)]
        canonical_module = min(exporters, key=lambda m: (m.count("."), m))
        home = defined_in if defined_in in exporters else max(exporters, key=len)
        name = f"{canonical_module}.{qualname}"
        paths = {f"{module}.{qualname}" for module in [*exporters, defined_in]}
        entry = Entry(name=name, kind=kind_of(value), home=home, aliases=sorted(paths - {name}))
        if entry.kind == "class":
            entry.members = class_members(value)
        entries[name] = entry
    return modules, entries


def page_of(modname: str) -> str:
    """The page a module's section lives on: its package, or itself if top level."""
    parts = modname.split(".")
    module = importlib.import_module(modname)
    if hasattr(module, "__path__") or len(parts) <= 2:
        return modname
    return ".".join(parts[:-1])


def heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def object_page(entry: Entry, ambiguous: frozenset[str] = frozenset()) -> str:
    """The object's page; titled by its module too when another public object shares its name."""
    module, _, short = entry.name.rpartition(".")
    title = f"{module.removeprefix('gpkern.')}.{short}" if short in ambiguous else short
    lines = [heading(title, "="), f".. currentmodule:: {module}\n"]
    if entry.kind in ("class", "exception"):
        lines.append(f".. auto{entry.kind}:: {short}\n   :show-inheritance:\n")
        kinds = {member: _member_kind(entry, member) for member in entry.members}
        methods = [m for m in entry.members if kinds[m] == "method"]
        if methods:
            lines.append("   .. rubric:: Methods\n")
            lines.append("   .. autosummary::\n      :nosignatures:\n")
            lines.extend(f"      ~{short}.{m}" for m in methods)
            lines.append("")
        # Listed one by one: autodoc's :inherited-members: would add torch.nn.Module's methods.
        lines.extend(f"   .. auto{kinds[m]}:: {short}.{m}\n" for m in entry.members)
    elif entry.kind == "function":
        lines.append(f".. autofunction:: {short}\n")
    else:
        lines.append(f".. autodata:: {short}\n")
    if entry.kind != "data":
        lines.append(
            f".. minigallery:: {entry.name}\n   :add-heading: Examples using ``{short}``\n"
        )
    return "\n".join(lines)


def _member_kind(entry: Entry, member: str) -> str:
    module, _, short = entry.name.rpartition(".")
    cls = getattr(importlib.import_module(module), short)
    return "property" if isinstance(inspect.getattr_static(cls, member), property) else "method"


def module_page(page: str, modules: list[str], entries: dict[str, Entry]) -> str:
    lines = [heading(f"``{page}``", "="), f".. automodule:: {page}\n   :no-members:\n"]
    for modname in modules:
        listed = sorted(
            (e for e in entries.values() if e.home == modname),
            key=lambda e: (e.kind not in ("class", "exception"), e.name.rsplit(".", 1)[1]),
        )
        if modname != page:  # every public module gets a section, for :mod: references
            lines.append(heading(f"``{modname}``", "-"))
            lines.append(f".. automodule:: {modname}\n   :no-members:\n")
        if listed:
            # Full names below; no current module, or autosummary reports an import cycle.
            lines.append(".. currentmodule:: None\n")
            lines.append(".. autosummary::\n   :nosignatures:\n   :toctree: ../generated\n")
            lines.extend(f"   ~{e.name}" for e in listed)
            lines.append("")
    return "\n".join(lines)


def resolve_alias(app, env, node, contnode):
    """Resolve a reference written with another path to a documented object (its module)."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    aliases = app.env.gpkern_api_aliases
    prefix = target
    while prefix and prefix not in aliases:
        prefix = prefix.rpartition(".")[0]
    if not prefix:
        return None
    canonical = aliases[prefix] + target[len(prefix) :]
    domain = env.domains["py"]
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
    )


def public_bases(app, name, obj, options, bases):
    """Show a private base class (``_DKMBase``) as the public classes it derives from."""
    index = 0
    while index < len(bases):
        base = bases[index]
        if base.__name__.startswith("_") and base.__module__.startswith(PACKAGE):
            bases[index : index + 1] = [b for b in base.__bases__ if b not in bases]
        else:
            index += 1


BACKLINK = re.compile(r'href="([^"#]*api/generated/([^"#/]+)\.html)#([^"]+)"')


def fix_source_backlinks(app, exception) -> None:
    """Point the "[docs]" links of the highlighted source pages at the right anchors.

    viewcode builds every backlink of a source file as ``<module>.<name>`` with one module per
    file (the first one documented), so an object documented under another path (a function
    of ``gpkern.kernels.random_features`` next to ``gpkern.kernels.RandomFeatureKernel``) gets
    an anchor its page does not have. Each API page is named after its object, which fixes the
    anchor: ``<page name>`` plus the member path.
    """
    if exception is not None or app.builder.format != "html":
        return

    def repair(match: re.Match) -> str:
        href, page, fragment = match.groups()
        obj = page.rsplit(".", 1)[-1]
        parts = fragment.split(".")
        if obj not in parts:
            return match.group(0)
        member = parts[parts.index(obj) + 1 :]
        return f'href="{href}#{".".join([page, *member])}"'

    for path in (Path(app.outdir) / "_modules").rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        fixed = BACKLINK.sub(repair, text)
        if fixed != text:
            path.write_text(fixed, encoding="utf-8")


def generate(app) -> None:
    api = Path(app.srcdir) / "api"
    pages_dir, objects_dir = api / "modules", api / "generated"
    pages_dir.mkdir(exist_ok=True)
    objects_dir.mkdir(exist_ok=True)
    modules, entries = collect()
    app.env.gpkern_api_aliases = {
        alias: entry.name for entry in entries.values() for alias in entry.aliases
    }
    pages: dict[str, list[str]] = {}
    for modname in modules:
        pages.setdefault(page_of(modname), []).append(modname)
    order = [p for p in LEADING_PAGES if p in pages]
    order += sorted(p for p in pages if p not in order and p not in TRAILING_PAGES)
    order += [p for p in TRAILING_PAGES if p in pages]
    wanted = {pages_dir / "toctree.inc"}
    toctree = [".. toctree::", "   :maxdepth: 1", ""]
    toctree += [f"   modules/{page}" for page in order]
    write_if_changed(pages_dir / "toctree.inc", "\n".join(toctree) + "\n")
    for page in order:
        path = pages_dir / f"{page}.rst"
        wanted.add(path)
        write_if_changed(path, module_page(page, pages[page], entries))
    shorts = Counter(entry.name.rpartition(".")[2] for entry in entries.values())
    ambiguous = frozenset(short for short, count in shorts.items() if count > 1)
    for entry in entries.values():
        path = objects_dir / f"{entry.name}.rst"
        wanted.add(path)
        write_if_changed(path, object_page(entry, ambiguous))
    for directory in (pages_dir, objects_dir):
        for path in directory.iterdir():
            if path not in wanted:
                path.unlink()


def setup(app):
    # Before autosummary reads the sources (its own builder-inited hook has priority 500).
    app.connect("builder-inited", generate, priority=400)
    app.connect("missing-reference", resolve_alias)
    app.connect("autodoc-process-bases", public_bases)
    app.connect("build-finished", fix_source_backlinks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
