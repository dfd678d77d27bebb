"""The repository's text speaks of the toolkit, and every document or path it cites is in it.

Two scanners, each a function that the tests also run on a planted case so that they can be
seen to fail: ``process_words`` (words about how the code was made rather than what it does)
and ``dangling_citations`` (relative Markdown links, and repository paths named in module
docstrings and config comments, that point at nothing in the repository).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = (".md", ".py", ".yaml", ".toml")

PROCESS_WORDS = re.compile(
    r"\bsessions?\b|\blent\b|\bloans?\b|\bth(?:is|ese) machines?\b|\bissues?[- ]?#?\d+"
    r"|MACHINE_NOTES|ANCHORS\.md|\.\./shared\b|\bshared/",
    re.IGNORECASE,
)
# pytest's fixture scope is the one use of the word that is about the code itself.
ALLOWED = re.compile(r"""scope\s*=\s*["']session["']""")


def tracked_text_files() -> list[Path]:
    """The Markdown, Python, YAML and TOML files of the repository: tracked ones, and new ones that
    git does not ignore (so that a page is checked before it is committed)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / p for p in out.splitlines() if p.endswith(TEXT_SUFFIXES) and (ROOT / p).is_file()]


def process_words(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every line of ``text`` that speaks of how the code was made."""
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        if PROCESS_WORDS.search(ALLOWED.sub("", line)):
            hits.append((number, line.strip()))
    return hits


# --- citations --------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
ANCHOR = re.compile(r"""<a\s+(?:id|name)\s*=\s*["']([^"']+)["']""")
# a token that may name a path: word characters, dots, slashes, dashes and template brackets
TOKEN = re.compile(r"[\w.<>{}$*/+-]+")
TEMPLATE = re.compile(r"[<>{}$*+]")
OUTSIDE_TOP = {"runs", "data", "results", "outputs"}  # written by the entry points, never tracked


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor a Markdown text defines: its headings' slugs and its explicit ``<a id=...>``."""
    found = set(ANCHOR.findall(markdown))
    for line in markdown.splitlines():
        if line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def broken_links(markdown: str, here: Path, root: Path = ROOT) -> list[str]:
    """Relative links of ``markdown`` (a file in folder ``here``) whose file or anchor is missing."""
    bad = []
    for target in LINK.findall(markdown):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (here / path).resolve() if path else None
        if file is not None and not file.exists():
            bad.append(f"{target} (no such file)")
            continue
        if fragment:
            text = file.read_text() if file is not None else markdown
            if file is not None and file.suffix != ".md":
                continue
            if fragment not in anchors(text):
                bad.append(f"{target} (no such anchor)")
    return bad


def cited_paths(text: str, root: Path = ROOT) -> list[str]:
    """Repository paths that ``text`` names and that do not exist under ``root``: tokens that start
    with a top-level folder of the repository, and bare ``NAME.md`` names (looked up at the root and
    in ``docs/``). Templates (``models/<env>``, ``${env}``) and what the entry points write
    (``runs/``, ``data/``, an output folder) are skipped; a path outside the repository
    (``../shared/...``) is the process-words test's to refuse."""
    tops = {p.name for p in root.iterdir() if not p.name.startswith(".git")} - OUTSIDE_TOP
    bad = []
    for token in TOKEN.findall(text):
        token = token.rstrip(".,:;-")
        if TEMPLATE.search(token) or "/" not in token and not re.fullmatch(r"[\w-]+\.md", token):
            continue
        if "/" in token and token.split("/")[0] not in tops:
            continue
        candidates = [root / token] if "/" in token else [root / token, root / "docs" / token]
        if not any(c.exists() for c in candidates):
            bad.append(token)
    return bad


def module_docstring(source: str) -> str:
    return ast.get_docstring(ast.parse(source)) or ""


def config_comments(source: str) -> str:
    return "\n".join(line.split("#", 1)[1] for line in source.splitlines() if "#" in line)


def dangling_citations(path: Path, root: Path = ROOT) -> list[str]:
    """What ``path`` cites that the repository lacks: broken relative links in Markdown, and
    missing paths named in a Python module's docstring or a YAML file's comments."""
    text = path.read_text()
    if path.suffix == ".md":
        return broken_links(text, path.parent, root)
    if path.suffix == ".py":
        return cited_paths(module_docstring(text), root)
    if path.suffix == ".yaml":
        return cited_paths(config_comments(text), root)
    return []


# --- tests ------------------------------------------------------------------------------------


def test_no_process_words_in_the_repository():
    this = Path(__file__).resolve()
    found = [f"{p.relative_to(ROOT)}:{n}: {line}" for p in tracked_text_files() if p.resolve() != this
             for n, line in process_words(p.read_text())]
    assert not found, "words about how the code was made:\n" + "\n".join(found)


@pytest.mark.parametrize("line", [
    "The model rebuilt in session 5 reaches 92/100.",
    "No GPU machine has been lent so far.",
    "the code before the issue-11 redesign",
    "torch 2.13-2.14 are the releases these machines provide",
    "see ../shared/PROTOCOL.md",
])
def test_process_words_finds_a_planted_line(line):
    assert process_words(f"A clean first line.\n{line}\n") == [(2, line)]


def test_process_words_allows_pytest_fixture_scope():
    assert process_words('@pytest.fixture(scope="session")\n') == []


def test_no_dangling_citations():
    found = [f"{p.relative_to(ROOT)}: {c}" for p in tracked_text_files() for c in dangling_citations(p)]
    assert not found, "citations of what the repository lacks:\n" + "\n".join(found)


def test_dangling_citations_finds_planted_cases(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "envs").mkdir()
    (tmp_path / "docs" / "protocol.md").write_text("# The protocols\n\n## Success tests\n<a id='row-1'></a>\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/protocol.md) [ok](docs/protocol.md#success-tests) [ok](docs/protocol.md#row-1)\n"
                    "[gone](docs/results.md) [bad anchor](docs/protocol.md#budgets) [web](https://example.org/x.md)\n")
    assert dangling_citations(page, tmp_path) == ["docs/results.md (no such file)",
                                                  "docs/protocol.md#budgets (no such anchor)"]
    module = tmp_path / "envs" / "thing.py"
    module.write_text('"""Follows docs/protocol.md and PROTOCOL.md; writes runs/x and models/<env>."""\n')
    assert dangling_citations(module, tmp_path) == ["PROTOCOL.md"]
    config = tmp_path / "plan.yaml"
    config.write_text("# The protocol (shared/PROTOCOL.md): docs/protocol.md, envs/gone.py\nkey: docs/x.md\n")
    assert dangling_citations(config, tmp_path) == ["envs/gone.py"]
