"""The user's guide stays true: its links resolve and its commands parse (issue 30).

- Every relative link in README.md and docs/**/*.md points at a file of the
  repository (and, with ``#anchor``, at a heading of that file).
- Every ``fedsim ...`` command in the README's code blocks parses with the
  CLI's own argparse parser; every Python block compiles.
- The README starts with the two set-up commands and stays a guide (< 300 lines).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fedsim.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: Pages written on branches not merged yet: links to them may dangle until they merge.
#: Empty on main.
PENDING_PAGES: set[str] = set()

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").rglob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[`*]", "", heading.strip().lower())
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _links(page: Path) -> list[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return [a or b for a, b in _LINK.findall(text)]


def test_links_resolve() -> None:
    bad = []
    for page in _pages():
        for link in _links(page):
            if re.match(r"^[a-z]+:", link):  # http(s), mailto: not checked offline
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            rel = target.relative_to(REPO).as_posix() if target.is_relative_to(REPO) else str(target)
            if not target.exists():
                if rel not in PENDING_PAGES:
                    bad.append(f"{page.relative_to(REPO)}: {link} (no such file)")
                continue
            if anchor and target.suffix == ".md" and anchor not in _anchors(target):
                bad.append(f"{page.relative_to(REPO)}: {link} (no heading with that anchor)")
    assert not bad, "\n".join(bad)


def test_link_check_can_fail(tmp_path: Path) -> None:
    """The checker sees a broken link and a broken anchor."""
    page = tmp_path / "p.md"
    page.write_text("# Title\n\n[a](missing.md) [b](#title) [c](#nope)\n", encoding="utf-8")
    assert _links(page) == ["missing.md", "#title", "#nope"]
    assert "title" in _anchors(page) and "nope" not in _anchors(page)


def _commands(text: str) -> list[str]:
    """``fedsim ...`` lines of the shell code blocks, and inline code spans starting with ``fedsim ``."""
    out = []
    for lang, body in _FENCE.findall(text):
        if lang not in ("bash", "sh", ""):
            continue
        joined = re.sub(r"\\\n\s*", " ", body)
        out += [ln.strip() for ln in joined.splitlines() if ln.strip().startswith("fedsim ")]
    out += re.findall(r"(?<!`)`(fedsim [^`]+)`", _FENCE.sub("", text))
    return out


def test_readme_fedsim_commands_parse() -> None:
    cmds = _commands(README.read_text(encoding="utf-8"))
    parser = build_parser()
    used = set()
    for cmd in cmds:
        argv = shlex.split(cmd, comments=True)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as e:  # argparse reports and exits on a bad command line
            pytest.fail(f"README command does not parse (exit {e.code}): {cmd}")
        used.add(argv[0])
    # the guide shows every sub-command a user needs
    assert used >= {"run", "validate", "info", "plot", "report", "compare", "sweep", "defaults"}, used


def test_command_check_can_fail() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(shlex.split("sweep scenarios/x.yaml --grdi a=1", comments=True))


def test_readme_python_blocks_compile() -> None:
    for lang, body in _FENCE.findall(README.read_text(encoding="utf-8")):
        if lang == "python":
            compile(body, "README.md", "exec")


def test_readme_is_a_guide_that_starts_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) < 300
    first = _FENCE.search(text)
    assert first is not None and text.index(first.group(0)) < 20
    cmds = [ln.split("#")[0].strip() for ln in first.group(2).splitlines()]
    assert cmds == ["make demo", "make test"]
    for section in ("## Install", "## First run", "## Reading your run", "## Scenario files",
                    "## Sweeps and comparisons", "## Python API", "## Outputs and how to open them",
                    "## Exit codes"):
        assert section in lines, section
    assert "../shared" not in text  # a clone has no ../shared
