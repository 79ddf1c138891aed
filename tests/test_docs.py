"""The project's documentation stands on its own: every link and every docs/ citation resolves.

README.md and docs/*.md link to each other and into the code; code comments cite docs/ files. A moved
file or a renamed heading silently breaks those references, so these tests follow every one of them.
They read files only (no jax), so they belong to the fast inner loop.
"""

from __future__ import annotations

import pathlib
import re
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT_DIRS = ("common", "modeling", "train", "launch", "analysis", "configs", "tests", "docs")
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]*`")
PROJECT_PATH = r"(?:common|modeling|train|launch|analysis|configs|tests|docs)/[\w/.-]*?\.(?:py|md|yaml|csv|png|json)"
# A Markdown file of the project named in code ("docs/CONVENTIONS.md").
CITED_MARKDOWN = re.compile(r"\b((?:common|modeling|train|launch|analysis|configs|tests|docs)/[\w/.-]*?\.md)\b")
# A section cited in code: docs/ARCHITECTURE.md, 'Run directory' (the heading's text, quoted).
CITED_SECTION = re.compile(r"\b(docs/[\w.-]+\.md), '([^']+)'")
# A project file named as inline code in the docs (`train/hardware.py`); placeholders hold a '<'.
CODE_PATH = re.compile(rf"`({PROJECT_PATH})`")
# Citations of design notes that live outside this repository, which no reader of it can follow.
FOREIGN_CITATIONS = re.compile(
    r"DESIGN\s*§|DESIGN\.md|(?i:field[- ]notes)|\.\./shared\b|\bshared/(?:DESIGN|FIELD-NOTES|PEER|bench|hooks)\b")


def _project_files(suffix: str) -> list[pathlib.Path]:
    """The project's files with this suffix, except this one (whose comments show the patterns)."""
    found = [path for name in PROJECT_DIRS for path in (ROOT / name).rglob(f"*{suffix}")]
    found += ROOT.glob(f"*{suffix}")
    return sorted(path for path in found if path != pathlib.Path(__file__).resolve())


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code removed."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield number, INLINE_CODE.sub("", line)


def _headings(text: str):
    """The text of every Markdown heading outside fenced code blocks."""
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            yield match.group(1)


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces to
    hyphens, and -1, -2, ... for repeats."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _headings(text):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def heading_texts(text: str) -> set[str]:
    """Headings as a code comment quotes them: inline-code backticks dropped."""
    return {heading.replace("`", "") for heading in _headings(text)}


def relative_links(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, target) of every link in a Markdown file that is not an absolute URL or a mail address."""
    links = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                links.append((number, target))
    return links


def broken_links(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """One line per link of `path` whose file or heading does not exist."""
    problems = []
    for number, target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / urllib.parse.unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved.read_text("utf-8")):
            problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


def test_the_heading_anchors_follow_github():
    text = "# Grids: `isoflop grid plan | run | status`\n## MFU\n## MFU\n```\n# not a heading\n```\n"
    assert heading_anchors(text) == {"grids-isoflop-grid-plan--run--status", "mfu", "mfu-1"}
    assert heading_texts(text) == {"Grids: isoflop grid plan | run | status", "MFU"}


def test_foreign_citations_are_recognised():
    cited = ["see DESIGN §3", "(FIELD-NOTES: the Explicit", "the field notes' figure", "../shared/DESIGN.md",
             "shared/bench"]
    clean = ["the design of §3", "docs/ARCHITECTURE.md, 'Run directory'", "a shared/exclusive lock"]
    assert all(FOREIGN_CITATIONS.search(text) for text in cited)
    assert not any(FOREIGN_CITATIONS.search(text) for text in clean)


def test_broken_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Present heading\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md#present-heading) [gone](missing.md) [bad](other.md#absent) "
                   "[web](https://example.org/x.md) `[code](skipped.md)`\n```\n[fenced](skipped.md)\n```\n",
                   encoding="utf-8")
    assert broken_links(doc, tmp_path) == ["doc.md:1: missing.md: no such file",
                                           "doc.md:1: other.md#absent: no heading with anchor #absent"]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_the_documentation_index_lists_every_page():
    linked = {target.partition("#")[0] for _, target in relative_links(ROOT / "docs" / "README.md")}
    pages = {path.name for path in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages <= linked, f"docs/README.md does not list {sorted(pages - linked)}"


def test_every_markdown_file_the_code_cites_exists():
    missing = []
    for path in _project_files(".py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name in CITED_MARKDOWN.findall(line):
                if not (ROOT / name).is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {name}")
    assert missing == []


def test_every_section_the_code_cites_exists():
    missing = []
    for path in _project_files(".py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name, section in CITED_SECTION.findall(line):
                target = ROOT / name
                if not target.is_file() or section not in heading_texts(target.read_text(encoding="utf-8")):
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {name}, {section!r}")
    assert missing == []


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_project_file_the_docs_name_exists(path):
    text = path.read_text(encoding="utf-8")
    missing = [f"{number}: {name}" for number, line in enumerate(text.splitlines(), 1)
               for name in CODE_PATH.findall(line) if not (ROOT / name).exists()]
    assert missing == []


def test_nothing_cites_notes_outside_the_repository():
    citing = []
    for path in _project_files(".py") + _project_files(".md"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FOREIGN_CITATIONS.search(line):
                citing.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert citing == []


def test_the_readme_keeps_the_ci_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = '.venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest -n 2 -q'
    assert command in readme
    assert ".venv/bin/python -m pytest -n 2 -q" in ci
