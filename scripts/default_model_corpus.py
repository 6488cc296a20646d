"""Training text for lodger's bundled default model, taken from Python's standard library.

Every machine with Python has this text: the docstrings of the standard library's modules,
classes and functions, and the language reference topics that `help()` shows
(`pydoc_data.topics`). Pure-Python modules are read with `ast` from their source files (no
import, so no import side effects such as `antigravity` opening a browser); compiled modules
(`builtins`, `math`, `itertools`, ...) are imported and read with `inspect`.

Two kinds of document come out, each a string:
- plain documents: a module's docstring, a function or class rendered as a Python stub
  (`def name(signature):` + its docstring), a help topic;
- chat examples: a question built from a qualified name ("What does json.dumps do?") and an
  answer taken from that object's docstring, as a list of {"role", "content"} messages.

Installed third-party packages named by the caller add their docstrings the same way (read
from source, never imported). The order is fixed (sorted walks), so a given Python build and
set of package versions always yields the same corpus.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import random
import sys
import sysconfig
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

# Packages whose text is tests, demos or vendored data rather than documentation.
SKIPPED_PACKAGES = {"test", "tests", "idle_test", "turtledemo", "ensurepip", "site-packages",
                    "lib2to3", "pydoc_data", "__phello__", "__pycache__"}
MIN_DOC_CHARS = 40  # shorter docstrings ("Return self.") teach nothing and are skipped


@dataclass(slots=True)
class DocEntry:
    """One documented object of the standard library."""

    qualname: str          # "json.dumps", "str.split", "collections.OrderedDict"
    kind: str              # "module", "class", "function" or "method"
    signature: str | None  # "(obj, *, skipkeys=False)" or None when not known
    doc: str               # the cleaned docstring


@dataclass(slots=True)
class Corpus:
    """The extracted text; `documents` are plain strings, `chats` lists of messages."""

    documents: list[str] = field(default_factory=list)
    chats: list[list[dict[str, str]]] = field(default_factory=list)
    python_version: str = ""  # the CPython build the text came from (it decides the text)
    packages: dict[str, str] = field(default_factory=dict)  # third-party package -> version

    def num_chars(self) -> int:
        doc_chars = sum(len(d) for d in self.documents)
        return doc_chars + sum(len(m["content"]) for chat in self.chats for m in chat)


def _clean(doc: str | None) -> str | None:
    if not doc:
        return None
    doc = inspect.cleandoc(doc).strip()
    return doc if len(doc) >= MIN_DOC_CHARS else None


def _ast_signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    args = ast.unparse(node.args)
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"({args}){returns}"


def _entries_from_source(module_name: str, source: str) -> list[DocEntry]:
    """Module, class, function and method docstrings of one source file, in file order."""
    tree = ast.parse(source)
    entries: list[DocEntry] = []
    doc = _clean(ast.get_docstring(tree, clean=False))
    if doc:
        entries.append(DocEntry(module_name, "module", None, doc))
    for node in tree.body:
        entries.extend(_entries_from_node(node, module_name, in_class=False))
    return entries


def _entries_from_node(node: ast.AST, prefix: str, in_class: bool) -> list[DocEntry]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        if node.name.startswith("_") and node.name != "__init__":
            return []
        doc = _clean(ast.get_docstring(node, clean=False))
        if not doc:
            return []
        kind = "method" if in_class else "function"
        return [DocEntry(f"{prefix}.{node.name}", kind, _ast_signature(node), doc)]
    if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
        qualname = f"{prefix}.{node.name}"
        entries = []
        doc = _clean(ast.get_docstring(node, clean=False))
        if doc:
            entries.append(DocEntry(qualname, "class", None, doc))
        for child in node.body:
            entries.extend(_entries_from_node(child, qualname, in_class=True))
        return entries
    return []


def _walk_source_modules(root: Path, prefix: str = "") -> list[tuple[str, Path]]:
    """(module name, file) of every pure-Python module under `root`, sorted, recursively."""
    found: list[tuple[str, Path]] = []
    for info in sorted(pkgutil.iter_modules([str(root)]), key=lambda m: m.name):
        if info.name in SKIPPED_PACKAGES or info.name.startswith("test_"):
            continue
        name = prefix + info.name
        if info.ispkg:
            package_dir = root / info.name
            found.append((name, package_dir / "__init__.py"))
            found.extend(_walk_source_modules(package_dir, name + "."))
        elif (root / f"{info.name}.py").is_file():
            found.append((name, root / f"{info.name}.py"))
    return found


def _compiled_module_names() -> list[str]:
    """Public modules implemented in C: built in, or extension files in lib-dynload."""
    names = set(sys.builtin_module_names)
    dynload = Path(sysconfig.get_paths()["platstdlib"]) / "lib-dynload"
    if dynload.is_dir():
        names.update(m.name for m in pkgutil.iter_modules([str(dynload)]))
    return sorted(n for n in names if not n.startswith("_") and n != "antigravity")


def _entries_from_compiled(module_name: str) -> list[DocEntry]:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # a module this build cannot import (e.g. no Tk) is simply left out
        return []
    entries = []
    doc = _clean(module.__doc__)
    if doc:
        entries.append(DocEntry(module_name, "module", None, doc))
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        entries.extend(_entries_from_object(f"{module_name}.{name}", obj, with_members=True))
    return entries


def _entries_from_object(qualname: str, obj: object, with_members: bool) -> list[DocEntry]:
    doc = _clean(getattr(obj, "__doc__", None))
    kind = "class" if inspect.isclass(obj) else "function"
    if not callable(obj):
        return []
    entries = []
    if doc:
        try:
            signature = None if kind == "class" else str(inspect.signature(obj))
        except (TypeError, ValueError):
            signature = None
        entries.append(DocEntry(qualname, kind, signature, doc))
    if kind == "class" and with_members:
        for name, member in sorted(vars(obj).items()):
            if not name.startswith("_") and callable(member):
                member_entries = _entries_from_object(f"{qualname}.{name}", member, False)
                for entry in member_entries:
                    entry.kind = "method"
                entries.extend(member_entries)
    return entries


def _package_entries(package: str) -> list[DocEntry]:
    """Docstrings of an installed third-party package, read from its source (no import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    entries: list[DocEntry] = []
    root = Path(next(iter(spec.submodule_search_locations)))
    for module_name, path in [(package, root / "__init__.py"),
                              *_walk_source_modules(root, package + ".")]:
        entries.extend(_entries_from_file(module_name, path))
    return entries


def _entries_from_file(module_name: str, path: Path) -> list[DocEntry]:
    try:
        return _entries_from_source(module_name, path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []


def package_versions(packages: list[str]) -> dict[str, str]:
    """Installed version of each importable package in `packages` (others are left out)."""
    dists = importlib.metadata.packages_distributions()
    versions = {}
    for package in packages:
        if importlib.util.find_spec(package) is None:
            continue
        dist = dists.get(package, [package])[0]
        try:
            versions[package] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def collect_entries(packages: list[str]) -> list[DocEntry]:
    """Documented objects of the standard library, then of `packages`, deduplicated by text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    entries: list[DocEntry] = []
    for module_name, path in _walk_source_modules(stdlib):
        entries.extend(_entries_from_file(module_name, path))
    # `builtins` has no source file; it is where str, list, len and print live.
    for module_name in ["builtins", *_compiled_module_names()]:
        entries.extend(_entries_from_compiled(module_name))
    for package in packages:
        entries.extend(_package_entries(package))
    seen: set[str] = set()
    unique = []
    for entry in entries:
        if entry.doc not in seen:
            seen.add(entry.doc)
            unique.append(entry)
    return unique


def render_document(entry: DocEntry) -> str:
    """A plain training document: module docs as text, callables as Python stubs."""
    if entry.kind == "module":
        return f"Module {entry.qualname}\n\n{entry.doc}"
    short_name = entry.qualname.rsplit(".", 1)[-1]
    body = textwrap.indent(f'"""{entry.doc}\n"""', "    ")
    where = f"# {entry.qualname}\n"
    if entry.kind == "class":
        return f"{where}class {short_name}:\n{body}"
    signature = entry.signature or "(...)"
    return f"{where}def {short_name}{signature}:\n{body}"


QUESTION_TEMPLATES = {
    "module": ["What is the {name} module for?", "Tell me about the {name} module.",
               "What does the Python module {name} do?"],
    "class": ["What is {name}?", "What is the {name} class?", "Explain the class {name}."],
    "function": ["What does {name} do?", "How do I use {name}?", "Explain {name}.",
                 "What is {name} for?"],
    "method": ["What does {name} do?", "How does {name} work?", "Explain the method {name}."],
}


def _first_paragraphs(doc: str, max_chars: int) -> str:
    """Leading paragraphs of a docstring, up to about `max_chars` characters."""
    paragraphs = [p.strip("\n").rstrip() for p in doc.split("\n\n") if p.strip()]
    answer = paragraphs[0]
    for paragraph in paragraphs[1:]:
        if len(answer) + len(paragraph) > max_chars:
            break
        answer += "\n\n" + paragraph
    return answer


def render_chat(entry: DocEntry, rng: random.Random) -> list[dict[str, str]]:
    """A question about the object's name, answered with its signature and docstring."""
    question = rng.choice(QUESTION_TEMPLATES[entry.kind]).format(name=entry.qualname)
    answer = _first_paragraphs(entry.doc, max_chars=600)
    if entry.kind in ("function", "method") and entry.signature:
        answer = f"`{entry.qualname}{entry.signature}`\n\n{answer}"
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def help_topics() -> list[str]:
    """The language reference topics that `help("TOPIC")` prints."""
    from pydoc_data.topics import topics

    return [f"Python help: {name}\n\n{text.strip()}" for name, text in sorted(topics.items())]


def build_corpus(seed: int, packages: list[str]) -> Corpus:
    """The whole corpus; `seed` only picks the question wording of the chat examples."""
    rng = random.Random(seed)
    entries = collect_entries(packages)
    corpus = Corpus(python_version=sys.version.split()[0], packages=package_versions(packages))
    corpus.documents = [render_document(e) for e in entries] + help_topics()
    corpus.chats = [render_chat(e, rng) for e in entries]
    return corpus
