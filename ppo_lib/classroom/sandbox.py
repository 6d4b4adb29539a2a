"""Run an assembled notebook for the grader: a private folder, resource limits, a process
group of its own, a watchdog, and a sweep of every process the notebook started.

:func:`run_notebook` starts ``_runner.py`` (see its docstring for what happens inside) and
guarantees, whatever the notebook's code does, as long as it runs as an ordinary user:

* **Where it runs.** The working directory is an empty temporary folder holding only the
  assembled notebook; ``ppo_lib`` is imported from a private read-only copy whose files are
  verified by hash at import, so neither the instructor's files nor the grader's library are
  where the notebook looks. ``TMPDIR`` points into the private folder, which is deleted after.
* **What it may use.** Allocated memory (``Limits.memory_gib``, as RLIMIT_DATA), CPU seconds
  (the deadline), file size, and processes (``Limits.processes`` more than the user already
  runs; the kernel does not enforce this one for root) are capped with ``setrlimit`` in the
  runner before any notebook code; the GPU is hidden (``CUDA_VISIBLE_DEVICES=""``): grading
  runs on the CPU.
* **How long.** A cell that outlives its time limit by :data:`GRACE` seconds (one that ignores
  the interrupt), or a notebook that outlives ``Limits.deadline``, gets its whole process group
  killed; the cells after it are not run.
* **What survives.** Nothing: the runner is started in a new session and killed with its group;
  processes that left the group (``start_new_session``, double forks) are found afterwards,
  as orphans re-parented to the grader (a Linux "child subreaper") or by a marker in their
  environment, and killed. The runner also dies with the grader (``PR_SET_PDEATHSIG``).
* **What the grader reads.** Results come on a pipe of their own, as JSON lines carrying a
  random token, in the order of the cells; the notebook's stdout and stderr go to files in the
  private folder and are never shown. A message with the wrong token, out of order, or after
  the end is evidence of interference, and the grade is void.
* **Files.** The grader's ``ppo_lib`` and the instructor's files are hashed before and after: a
  deleted file is written back; a changed one is named in a note and left as it is, since only
  a person can tell the notebook's change from their own (the grade itself used copies).

None of this makes the grader a security boundary: the notebook runs as the user who grades,
so it can do on disk what that user can. For high-stakes grading, run it in a container.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

GRACE = 3.0
"""Seconds a cell may run past its limit (to be interrupted and report) before its process group is killed."""

STARTUP = 120.0
"""Seconds the runner may take to import what the checks use before it is given up on."""

MARKER = "PPO_LIB_GRADER_RUN"
"""Environment variable that marks every process of one grading run (for the final sweep)."""

MAX_MESSAGE = 2**20  # bytes of one result line
PREFIX = "ppo_lib-grade-"  # of the private folders, in the temporary directory


@dataclass(frozen=True)
class Limits:
    """What one graded notebook may use.

    Attributes:
        timeout: seconds each cell may run (> 0).
        deadline: seconds the whole notebook may run (> 0), imports included.
        memory_gib: memory the process may allocate (its heap and private mappings), in GiB (> 0).
        processes: processes and threads the notebook may start, on top of those the user runs.
        file_size_gib: size of the largest file the notebook may write, in GiB.
    """

    timeout: float = 300
    deadline: float = 3600
    memory_gib: float = 4.0
    processes: int = 64
    file_size_gib: float = 2.0

    def __post_init__(self):
        for name in ("timeout", "deadline", "memory_gib", "processes", "file_size_gib"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
                raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass
class Outcome:
    """What the run gave: ``results[cell index]`` is None (ran cleanly) or a one-line error for
    each cell that ran; ``stopped`` says why the run ended early; ``interference`` lists
    evidence that the notebook interfered with the grader (the grade is void); ``notes`` what
    the grader repaired or found changed on disk."""

    results: dict[int, str | None] = field(default_factory=dict)
    stopped: str | None = None
    interference: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class StartError(RuntimeError):
    """The runner did not start (wrong interpreter, an import that crashes it, ...)."""


def short_error(name: str, message: str) -> str:
    """One line for an exception: ``Name: first line of the message``."""
    first = (message or "").strip().splitlines()
    if not first and name == "NotImplementedError":
        return "NotImplementedError (the exercise is not answered yet)"
    return f"{name}: {first[0][:300]}" if first else name


def run_notebook(cells: list[dict], limits: Limits, *, python: str | None = None, preimport: list[str] = (),
                 protected: list[Path] = (), notebook_json: str = "", notebook_name: str = "notebook.ipynb") -> Outcome:
    """Run ``cells`` in the sandbox and return what each did.

    Args:
        cells: ``{"index", "kind": "code" | "check", "source", "forbidden": [dotted names]}`` in order.
        limits: see :class:`Limits`.
        python: the interpreter to run (default: this one).
        preimport: modules to import before any notebook code (what the checks use).
        protected: files hashed before and checked after (besides the grader's ``ppo_lib``).
        notebook_json, notebook_name: the assembled notebook, written to the working directory.

    Raises:
        StartError: the runner did not start.
    """
    _remove_stale_folders()
    run = _Run(cells, limits, python or sys.executable, list(preimport))
    try:
        run.prepare(list(protected), notebook_json, notebook_name)
        return run.run()
    finally:
        _remove_tree(run.work)


class _Run:
    def __init__(self, cells, limits: Limits, python: str, preimport: list[str]):
        self.cells, self.limits, self.python, self.preimport = cells, limits, python, preimport
        self.work = Path(tempfile.mkdtemp(prefix=PREFIX))  # mode 0700
        (self.work / "grader.pid").write_text(str(os.getpid()))
        self.token, self.marker = secrets.token_hex(16), secrets.token_hex(16)
        self.manifest: dict[str, str] = {}
        self.snapshot: dict[Path, tuple[bytes, int]] = {}
        self.outcome = Outcome()

    # -- before -----------------------------------------------------------------------------

    def prepare(self, protected: list[Path], notebook_json: str, notebook_name: str) -> None:
        """The private folder: ``lib/ppo_lib`` (read-only copy) and ``lib/figures`` (the book's
        data files, without images), ``run/`` (the working directory, holding only the
        notebook), ``tmp/``, ``log/``; and the snapshot of protected files."""
        package = Path(__file__).resolve().parents[1]  # the grader's own ppo_lib
        lib = self.work / "lib"
        for path in sorted(package.rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            relative = path.relative_to(package.parent)
            data = path.read_bytes()
            target = lib / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            if path.suffix == ".py":
                self.manifest[relative.as_posix()] = hashlib.sha256(data).hexdigest()
            self.snapshot[path] = (data, path.stat().st_mode)
        for path in protected:
            if path.is_file() and path not in self.snapshot:
                self.snapshot[path] = (path.read_bytes(), path.stat().st_mode)
        figures = package.parent / "figures"  # data some chapters read (plotting.figures_dir())
        if figures.is_dir():
            shutil.copytree(figures, lib / "figures", ignore=shutil.ignore_patterns("*.png", "*.pdf", "*.svg"))
        for directory, _, files in os.walk(lib, topdown=False):
            for name in files:
                os.chmod(os.path.join(directory, name), 0o444)
            os.chmod(directory, 0o555)
        for name in ("run", "tmp", "log"):
            (self.work / name).mkdir()
        (self.work / "run" / Path(notebook_name).name).write_text(notebook_json, encoding="utf-8")

    def _job(self, fd: int) -> bytes:
        limits = self.limits
        uid = os.getuid() if hasattr(os, "getuid") else 0
        job = {
            "token": self.token, "fd": fd, "parent": os.getpid(),
            "lib": str(self.work / "lib"), "manifest": self.manifest,
            "timeout": limits.timeout, "preimport": self.preimport, "cells": self.cells,
            "limits": {
                "memory": int(limits.memory_gib * 2**30),
                "cpu": math.ceil(limits.deadline) + 5,
                "file_size": int(limits.file_size_gib * 2**30),
                # RLIMIT_NPROC counts all the user's tasks; root is exempt anyway.
                "processes": _user_tasks(uid) + limits.processes if uid != 0 else None,
            },
        }
        return json.dumps(job).encode()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.update({
            "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
            "TMPDIR": str(self.work / "tmp"), MARKER: self.marker,
        })
        return env

    # -- during ------------------------------------------------------------------------------

    def run(self) -> Outcome:
        me = os.getpid()
        before = {pid for pid, (ppid, _, _) in _processes().items() if ppid == me}
        was_subreaper = _set_subreaper(True)
        read_end, write_end = os.pipe()
        runner = self.work / "lib" / "ppo_lib" / "classroom" / "_runner.py"
        log = self.work / "log"
        proc = None
        try:
            with open(log / "stdout", "wb") as out, open(log / "stderr", "wb") as err:
                try:
                    proc = subprocess.Popen(
                        [self.python, "-I", "-B", str(runner)], stdin=subprocess.PIPE, stdout=out, stderr=err,
                        cwd=self.work / "run", env=self._env(), start_new_session=True, pass_fds=(write_end,))
                except OSError as exc:
                    raise StartError(f"{self.python}: {exc.strerror or exc}") from None
            job = self._job(write_end)  # pass_fds keeps the descriptor's number
            os.close(write_end)
            write_end = None
            try:
                proc.stdin.write(job)
                proc.stdin.close()
            except BrokenPipeError:  # it died at once; _watch says why
                pass
            self._watch(proc, read_end)
        finally:
            if write_end is not None:
                os.close(write_end)
            os.close(read_end)
            if proc is not None:
                _kill_group(proc)
            _sweep(self.marker, before, proc.pid if proc is not None else None)
            if not was_subreaper:
                _set_subreaper(False)
            self._check_files()
        return self.outcome

    def _watch(self, proc, fd: int) -> None:
        """Read the runner's messages, enforcing the time limits; fill ``self.outcome``."""
        limits, outcome = self.limits, self.outcome
        cells = [cell["index"] for cell in self.cells]
        started = time.monotonic()
        deadline = started + limits.deadline
        ready, current, position, ended = False, None, 0, False
        since = started  # when the current phase (start-up, a cell, between cells) began
        buffer = b""

        def interfere(what: str) -> None:
            if what not in outcome.interference:
                outcome.interference.append(what)

        def handle(line: bytes) -> None:
            nonlocal ready, current, position, ended, since
            try:
                message = json.loads(line)
            except ValueError:
                return interfere("something else than the grader wrote on its result channel")
            if type(message) is not dict or message.get("token") != self.token:
                return interfere("a message without the run's token on the grader's result channel")
            event = message.get("event")
            if ended:
                return interfere("messages after the end of the run")
            since = time.monotonic()
            if event == "ready" and not ready:
                ready = True
            elif event == "start" and ready and current is None and position < len(cells) \
                    and message.get("cell") == cells[position]:
                current = cells[position]
            elif event == "done" and current is not None and message.get("cell") == current:
                error = message.get("error")
                if error is None:
                    outcome.results[current] = None
                elif type(error) is list and len(error) == 2 and all(type(e) is str for e in error):
                    outcome.results[current] = short_error(*error)
                else:
                    return interfere("a malformed result")
                current, position = None, position + 1
            elif event == "stop" and ready and current is None and type(message.get("reason")) is str:
                outcome.stopped, ended = message["reason"], True
            elif event == "end" and ready and current is None and position == len(cells):
                ended = True
            else:
                interfere(f"an unexpected {str(event)[:20]!r} message")

        while not ended and not outcome.interference:
            now = time.monotonic()
            if not ready:
                limit = since + max(STARTUP, limits.timeout)
            elif current is not None:
                limit = since + limits.timeout + GRACE
            else:
                limit = since + GRACE
            limit = min(limit, deadline)
            if now >= limit:
                return self._late(ready, current, now >= deadline, position)
            readable, _, _ = select.select([fd], [], [], min(limit - now, 0.5))
            if not readable:
                # The runner may have exited while a fork of the notebook's holds the pipe open.
                if proc.poll() is not None and not _pending(fd):
                    return self._died(proc, ready, current)
                continue
            data = os.read(fd, 65536)
            if not data:  # every writer is gone
                return self._died(proc, ready, current)
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > MAX_MESSAGE:
                interfere("an oversized message on the grader's result channel")
            for line in lines:
                handle(line)
                if ended or outcome.interference:
                    break

    def _late(self, ready: bool, current, whole: bool, position: int) -> None:
        limits, outcome = self.limits, self.outcome
        if not ready:
            raise StartError(f"it was not ready after {_seconds(min(max(STARTUP, limits.timeout), limits.deadline))} s")
        if whole:
            what = f"the notebook ran longer than its {_seconds(limits.deadline)} s limit"
        elif current is not None:
            what = f"cell {current} ran past its {_seconds(limits.timeout)} s limit and did not stop when interrupted"
        else:
            what = "the kernel stopped answering between cells"
        if current is not None:
            outcome.results[current] = f"TimeoutError: {what}"
        outcome.stopped = f"{what}; the kernel was stopped and the cells after it were not run"

    def _died(self, proc, ready: bool, current) -> None:
        code = proc.wait()
        if not ready:
            raise StartError(f"exit status {code}{_last_line(self.work / 'log' / 'stderr')}")
        how = f" (killed by signal {-code})" if code < 0 else ""
        if current is not None:
            self.outcome.results[current] = "the Python kernel died while running this cell" + how
            self.outcome.stopped = f"the kernel died in cell {current}{how}; the cells after it were not run"
        else:
            self.outcome.stopped = f"the kernel died between cells{how}; the cells after it were not run"

    # -- after -------------------------------------------------------------------------------

    def _check_files(self) -> None:
        """Write back deleted protected files; report changed ones (left as they are)."""
        changed = []
        for path, (data, mode) in self.snapshot.items():
            try:
                now = path.read_bytes()
            except FileNotFoundError:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                    os.chmod(path, mode)
                    self.outcome.notes.append(f"the notebook deleted {_display(path)}; the grader wrote it back")
                except OSError:
                    changed.append(path)
                continue
            except OSError:
                now = None
            if now != data:
                changed.append(path)
        if changed:  # only a person can tell the notebook's change from their own
            self.outcome.notes.append(
                "files of the grader changed on disk while the notebook ran: " + ", ".join(_display(p) for p in changed)
                + ". If you did not change them yourself, the notebook may have: check them (e.g. with git) "
                "before grading more (this grade is not affected: it read them before the notebook ran)")


def _pending(fd: int) -> bool:
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def _seconds(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _display(path: Path) -> str:
    """``ppo_lib/...`` for the library's files, the file name for others (no machine paths)."""
    parts = path.parts
    if "ppo_lib" in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index("ppo_lib"):])
    return path.name


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1].strip()[:300]}" if lines else ""


# --------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------

def _processes() -> dict[int, tuple[int, int, str]]:
    """``{pid: (parent pid, process group, state)}`` from /proc (empty where there is none)."""
    found = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces
            found[int(name)] = (int(fields[1]), int(fields[2]), fields[0].decode())
        except (OSError, IndexError, ValueError):
            continue
    return found


def _user_tasks(uid: int) -> int:
    """Threads of all processes of ``uid`` (what RLIMIT_NPROC counts)."""
    count = 0
    for pid in _processes():
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return count


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read()
    except OSError:
        return False


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # stuck in the kernel; the sweep tries again
        pass


def _sweep(marker: str, before: set[int], group: int | None, patience: float = 10.0) -> None:
    """Kill every process of this run that is still alive: in the runner's process group, marked
    in its environment, or an orphan re-parented to the grader; reap those that are ours."""
    me, tag = os.getpid(), f"{MARKER}={marker}".encode()
    end = time.monotonic() + patience
    while time.monotonic() < end:
        victims = []
        for pid, (ppid, pgid, state) in _processes().items():
            if pid == me or pid in before:
                continue
            ours = ppid == me
            if state == "Z" and not ours:
                continue
            if ours or pgid == group or _has_marker(pid, tag):
                victims.append((pid, ours))
        if not victims:
            return
        for pid, _ in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
        for pid, ours in victims:
            if ours:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass


def _set_subreaper(on: bool) -> bool:
    """Make this process adopt its orphaned descendants (Linux); returns the previous setting."""
    if not sys.platform.startswith("linux"):
        return True  # nothing to undo
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        previous = ctypes.c_int(0)
        libc.prctl(37, ctypes.byref(previous))  # PR_GET_CHILD_SUBREAPER
        libc.prctl(36, 1 if on else 0)  # PR_SET_CHILD_SUBREAPER
        return bool(previous.value)
    except Exception:
        return True


def _remove_stale_folders() -> None:
    """Delete the private folders of graders that were killed before they could (SIGKILL)."""
    for folder in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            if folder.is_symlink() or folder.stat().st_uid != os.getuid():
                continue
            pid = int((folder / "grader.pid").read_text())
            os.kill(pid, 0)  # alive: its grader will clean up
        except ProcessLookupError:
            _remove_tree(folder)
        except (OSError, ValueError):
            continue


def _remove_tree(root: Path) -> None:
    """Delete the private folder, whatever permissions the notebook left (symlinks not followed)."""
    if root.is_symlink() or not root.exists():
        return
    for directory, subdirectories, _ in os.walk(root):
        for name in subdirectories:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                try:
                    os.chmod(path, 0o700)
                except OSError:
                    pass
    try:
        os.chmod(root, 0o700)
    except OSError:
        pass
    shutil.rmtree(root, ignore_errors=True)
