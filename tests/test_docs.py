"""The documentation's references resolve: every relative link and anchor in README.md and docs/*.md (anchors by
GitHub's heading slugs), every repository path (lib/..., scripts/..., sweeps/...), every `lib.` name and every
tests/<file>.py::<test> the pages name. Checked on the real pages, and on small in-memory pages with known faults."""
import glob
import importlib
import os
import posixpath
import re
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)  # fenced code blocks: their text is no markdown
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title"), images too
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)
# repository paths in prose or code: a top-level folder of the repository, then a path without placeholders
PATH = re.compile(r"(?<![\w/.$<>*{-])((?:lib|scripts|sweeps|benchmarks|tests|accelerate_configs|docs)"
                  r"(?:/[\w.-]+)*/[\w.-]*\w)(::\w+)?(?![\w/<>*{}-])")
LIB_NAME = re.compile(r"(?<![\w./])lib(?:\.\w+)+")


def slug(heading):
    """GitHub's anchor for a heading (github-slugger): inline markdown dropped, lower case, every character but
    letters, digits, spaces, hyphens and underscores removed, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = text.replace("`", "").replace("*", "").lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(text):
    """Every anchor a page defines: its headings' slugs (a repeated slug gets -1, -2, ... as on GitHub) and HTML
    anchors."""
    found, seen = set(), {}
    for _, heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found | set(HTML_ANCHOR.findall(text))


def links(text):
    """Relative link targets of a page, outside code blocks and code spans."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("/")]


def link_problems(pages, root):
    """One line per broken relative link or anchor. pages: {repository path: text} of the pages to check (also the
    targets' text, when a target is one of them); other targets are looked up under root."""
    problems = []
    for page, text in sorted(pages.items()):
        for target in links(text):
            path, _, anchor = urllib.parse.unquote(target).partition("#")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page), path)) if path else page
            if resolved in pages:
                body = pages[resolved]
            elif os.path.exists(os.path.join(root, resolved)):
                body = open(os.path.join(root, resolved)).read() if resolved.endswith(".md") else None
            else:
                problems.append(f"{page}: link to {target}: {resolved} does not exist")
                continue
            if anchor and body is not None and anchor not in anchors(body):
                problems.append(f"{page}: link to {target}: no heading with the anchor #{anchor} in {resolved}")
    return problems


def reference_problems(pages, root):
    """One line per repository path, tests/...::test or lib. name that the pages name and that does not exist."""
    problems = []
    for page, text in sorted(pages.items()):
        for path, test in set(PATH.findall(text)):
            if not os.path.exists(os.path.join(root, path)):
                problems.append(f"{page}: {path} does not exist")
            elif test and not re.search(rf"^def {test[2:]}\(", open(os.path.join(root, path)).read(), re.M):
                problems.append(f"{page}: {path} has no {test[2:]}")
        for name in sorted(set(LIB_NAME.findall(text))):
            if not _resolves(name):
                problems.append(f"{page}: {name} does not exist")
    return problems


def _resolves(name):
    """lib.a.b.c names a module, or an attribute of the longest module prefix that imports."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _pages():
    paths = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
    return {p: open(os.path.join(REPO, p)).read() for p in paths}


# ----------------------------------------------------------------------------------------------------------------
# the real pages

def test_every_relative_link_and_anchor_resolves():
    pages = _pages()
    assert len(pages) > 10 and sum(len(links(t)) for t in pages.values()) > 100  # the pages and their links were read
    assert link_problems(pages, REPO) == []


def test_every_path_test_and_lib_name_the_pages_name_exists():
    pages = _pages()
    named = {path for text in pages.values() for path, _ in PATH.findall(text)}
    assert {"lib/cli/parser.py", "scripts/starsse.py", "sweeps/cifar100_core.sh"} <= named
    assert reference_problems(pages, REPO) == []


def test_the_readme_is_a_landing_page():
    readme = open(os.path.join(REPO, "README.md")).read()
    assert len(readme.encode()) <= 12 * 1024, f"README.md is {len(readme.encode())} bytes"
    assert "docs/index.md" in links(readme)


# ----------------------------------------------------------------------------------------------------------------
# the checker on pages whose faults are known

def test_slugs_follow_githubs_rules():
    assert slug("Similarity regularisers: SSE-RTD, SSE-MSE") == "similarity-regularisers-sse-rtd-sse-mse"
    assert slug("The Swin-T setup (supervised Swin-T → CIFAR-100)") == "the-swin-t-setup-supervised-swin-t--cifar-100"
    assert slug("frozen stages (thesis section 5) (`Freeze`)") == "frozen-stages-thesis-section-5-freeze"
    assert slug("Ensemble subsets (figure 6.1, table 6.1)") == "ensemble-subsets-figure-61-table-61"
    assert slug("`--cycle_lr` and [links](x.md)") == "--cycle_lr-and-links"
    assert anchors("# Usage\n## Usage\n```\n# not a heading\n```\n### Usage #\n") == {"usage", "usage-1", "usage-2"}


def test_broken_links_and_anchors_are_found(tmp_path):
    (tmp_path / "LICENSE").write_text("MIT")  # a target that is on disk, not among the pages
    pages = {
        "README.md": "# Title\n\n[ok](docs/a.md#second-part) [self](#title) [file](LICENSE) [web](https://x.org/y)\n"
                     "[gone](docs/missing.md) [bad anchor](docs/a.md#no-such-part)\n"
                     "`[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n",
        "docs/a.md": "# A\n\n## Second part\n\n[up](../README.md#title) [up, wrong](../README.md#titel)\n"
                     "[split\ntext](a.md#a)\n",
    }
    assert link_problems(pages, str(tmp_path)) == [
        "README.md: link to docs/missing.md: docs/missing.md does not exist",
        "README.md: link to docs/a.md#no-such-part: no heading with the anchor #no-such-part in docs/a.md",
        "docs/a.md: link to ../README.md#titel: no heading with the anchor #titel in README.md",
    ]


def test_missing_paths_tests_and_lib_names_are_found():
    pages = {"docs/x.md": "`lib/cli/parser.py` and lib/nothing/here.py, `scripts/<script>.py` (a placeholder),\n"
                          "`tests/test_docs.py::test_slugs_follow_githubs_rules`, tests/test_docs.py::test_nothing,\n"
                          "`lib.cli.parser.parse`, lib.cli.parser.no_such_name, lib.no_such_module.\n"}
    assert sorted(reference_problems(pages, REPO)) == [
        "docs/x.md: lib.cli.parser.no_such_name does not exist",
        "docs/x.md: lib.no_such_module does not exist",
        "docs/x.md: lib/nothing/here.py does not exist",
        "docs/x.md: tests/test_docs.py has no test_nothing",
    ]
