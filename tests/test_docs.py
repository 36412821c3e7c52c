"""The README and the pages under docs/: every relative link and image resolves to a file of the
repository (and every #anchor to a heading of the page it names), and the README stays short."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: pathlib.Path) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    targets = LINK.findall(page.read_text())
    assert targets or page.name != "README.md"
    broken = []
    for target in targets:
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_the_readme_is_short_and_links_every_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in text, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_code_of_every_page_runs(page):
    """Every Python block of a page runs as written (in one namespace, in order)."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert blocks or page.name != "README.md"
    namespace = {}
    for block in blocks:
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), namespace)


def _render_docs(*args, root=ROOT):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(ROOT / "scripts" / "render_docs.py"), *args, "--root", str(root)],
                          capture_output=True, text=True)


def test_rendered_tables_match_their_records():
    out = _render_docs("--check")
    assert out.returncode == 0, out.stdout + out.stderr
    blocks = sum(p.read_text().count("<!-- render: ") for p in PAGES)
    assert blocks >= 3  # the README and docs/performance.md carry rendered tables


def test_render_check_fails_on_a_number_edited_by_hand(tmp_path):
    import shutil

    for page in PAGES:
        target = tmp_path / page.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, target)
    records = {r for p in PAGES for m in re.finditer(r"<!-- render: \S+ (\S+) -->", p.read_text())
               for r in m.group(1).split("+")}
    for record in records:
        (tmp_path / record).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / record, tmp_path / record)
    assert _render_docs("--check", root=tmp_path).returncode == 0
    page = tmp_path / "docs" / "performance.md"
    text = page.read_text()
    block = re.search(r"<!-- render: models .*?<!-- end render -->", text, re.S).group(0)
    number = re.search(r"\| (\d\.\d{3}) \|", block).group(1)
    edited = block.replace(f"| {number} |", f"| {float(number) + 0.001:.3f} |", 1)
    page.write_text(text.replace(block, edited))
    out = _render_docs("--check", root=tmp_path)
    assert out.returncode == 1 and "docs/performance.md" in out.stdout
    assert _render_docs(root=tmp_path).returncode == 0  # rendering again restores the record's number
    assert page.read_text() == text
