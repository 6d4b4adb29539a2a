"""The grading process: runs one assembled notebook, cell by cell, for ``classroom.grade``.

The grader (``ppo_lib/classroom/sandbox.py``) starts this file as ``python -I -B _runner.py``
in a private temporary folder, in a session of its own, and writes one job to its stdin
(JSON): the cells, the time limit per cell, resource limits, the SHA-256 of every file of a
private copy of ``ppo_lib``, and a random token. The runner answers on a pipe the grader
passed to it (never on stdout, which the notebook shares): JSON lines that carry the token,
``ready``, then ``start`` and ``done`` for each cell, then ``end`` (or ``stop`` and a reason).
It imports only the standard library until the job says what to import.

The notebook's code and the checks share this process: a check has to call the student's
function, and an autograd graph cannot cross processes. What keeps the checks honest:

* Before any notebook code runs, the runner imports what the checks use (the modules the
  instructor's cells import, the checker modules and what they import), ``ppo_lib`` only from
  the private copy and only from files whose bytes match the grader's hashes.
* It then captures the interpreter's state (:class:`Pristine`: every module's attributes, the
  attributes of its classes, the code, defaults and closures of its functions, ``sys.modules``,
  the containers of ``sys``, ``builtins`` and ``torch.testing``, signal handlers, the
  environment, torch's mode stacks), and each module imported later right after its import.
  The notebook's cells run in their own state, as in Jupyter; a check cell starts from the
  captured state (with the notebook's grad mode and float32/float64 default dtype), which is
  put back again after every call the check makes into the notebook's code.
* A check cell (the instructor's source) sees the notebook's functions only through a guard
  (:class:`Guard`): tensor and array arguments are copied, results must be plain data (numbers,
  strings, None, tensors, arrays, tuples/lists/dicts of these), exceptions come back as
  built-in exceptions, the library functions the exercise reimplements raise while the
  student's code runs, and a thread the code leaves running stops the grading.
* New audit hooks, trace and profile functions, and the garbage collector's object lists are
  refused (a tracer could jump over a check's ``assert``), and so is a torch operator
  registration (``torch.library``) made by the notebook's code: neither could be undone.
* The notebook's module is ``__main__``; cells run with ``exec`` (no IPython: input
  transformers do not exist; ``%``/``!`` lines are skipped).

None of this is a security boundary: code written against this file's internals (frames,
ctypes) can still reach the checks. The grader flags such code for review.
"""

from __future__ import annotations

import builtins
import gc
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import re
import signal
import sys
import threading
import types
from itertools import chain, repeat
from operator import attrgetter, is_, methodcaller

# Events refused for everyone once the notebook may run: an audit hook or a tracer installed
# by the notebook would run its code in the middle of a check, where nothing restores state.
REFUSED_EVENTS = {"sys.addaudithook", "sys.settrace", "sys.setprofile", "sys.monitoring.register_callback",
                  # these hand out any object, a class's own attribute dict included (changed without a trace)
                  "gc.get_referents", "gc.get_referrers", "gc.get_objects"}

PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)
MAX_DEPTH = 32  # nesting of a returned value
MAX_MESSAGE = 2000  # characters of an error message sent to the grader


class NotAllowedError(Exception):
    """The notebook did something the grader does not allow (the message says what)."""


class Stop(BaseException):
    """The process can no longer be trusted to run checks (a thread the notebook left running).
    A BaseException, so that no ``except Exception`` in a checker swallows it."""


# --------------------------------------------------------------------------------------
# talking to the grader
# --------------------------------------------------------------------------------------

class Channel:
    """JSON lines to the grader on the pipe it passed; each carries the job's token."""

    def __init__(self, fd: int, token: str):
        self._fd, self._token, self._pid = fd, token, os.getpid()

    def send(self, event: str, **fields) -> None:
        if os.getpid() != self._pid:  # a fork made by the notebook does not speak for the runner
            return
        data = (json.dumps({"token": self._token, "event": event, **fields}) + "\n").encode()
        while data:
            data = data[os.write(self._fd, data):]


def set_limits(limits: dict) -> None:
    """Apply the job's resource limits to this process (and, inherited, to its children)."""
    import resource

    # RLIMIT_DATA (heap and private writable mappings), not RLIMIT_AS: torch built for CUDA maps
    # gigabytes of libraries and reserves address space it never uses.
    for name, value in (("RLIMIT_DATA", limits.get("memory")), ("RLIMIT_CPU", limits.get("cpu")),
                        ("RLIMIT_NPROC", limits.get("processes")), ("RLIMIT_FSIZE", limits.get("file_size")),
                        ("RLIMIT_CORE", 0)):
        if value is None or not hasattr(resource, name):
            continue
        key = getattr(resource, name)
        _, hard = resource.getrlimit(key)
        value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(key, (value, value))  # hard = soft: the notebook cannot raise it


def die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when the grader dies (no runner outlives its grader)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # no libc prctl: the grader still kills the process group
            pass
    if os.getppid() != parent:
        os._exit(1)


class Audit:
    """The runner's audit hook: refuses REFUSED_EVENTS, and notes when a function's code or
    defaults change (so that :class:`Pristine` compares functions only then)."""

    def __init__(self):
        self.functions_changed = False

    def __call__(self, event: str, args) -> None:
        if event == "object.__setattr__":
            if type(args[1]) is str and args[1] in ("__code__", "__defaults__", "__kwdefaults__"):
                self.functions_changed = True
        elif event in REFUSED_EVENTS:
            raise RuntimeError(f"{event} is not allowed while grading")


AUDIT = Audit()


# --------------------------------------------------------------------------------------
# ppo_lib from the private copy, verified
# --------------------------------------------------------------------------------------

class VerifiedLibrary(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import ``ppo_lib`` only from the private copy, and only files whose bytes hash to the
    grader's manifest (hashing the bytes that are compiled leaves no time to swap the file)."""

    def __init__(self, root: str, manifest: dict[str, str]):
        self.root, self.manifest = root, manifest

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "ppo_lib" and not fullname.startswith("ppo_lib."):
            return None
        rel = fullname.replace(".", "/")
        for relpath, package in ((rel + "/__init__.py", True), (rel + ".py", False)):
            if relpath in self.manifest:
                origin = os.path.join(self.root, relpath)
                return importlib.util.spec_from_file_location(
                    fullname, origin, loader=self, submodule_search_locations=[os.path.dirname(origin)] if package else None)
        # Never fall through to another copy of ppo_lib (an editable install, the checkout).
        raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)

    def create_module(self, spec):
        return None

    def get_resource_reader(self, fullname):
        """Package data (``importlib.resources.files("ppo_lib")``), read from the private copy."""
        from importlib.readers import FileReader

        spec = self.find_spec(fullname)
        return FileReader(types.SimpleNamespace(path=spec.origin))

    def exec_module(self, module):
        origin = module.__spec__.origin
        relpath = os.path.relpath(origin, self.root).replace(os.sep, "/")
        with open(origin, "rb") as f:
            source = f.read()
        if hashlib.sha256(source).hexdigest() != self.manifest.get(relpath):
            raise ImportError(f"{relpath} of the grader's copy of ppo_lib was changed while grading")
        exec(compile(source, origin, "exec", dont_inherit=True), module.__dict__)


# --------------------------------------------------------------------------------------
# the pristine state, and putting it back
# --------------------------------------------------------------------------------------

def _immutable(cls) -> bool:
    return bool(cls.__flags__ & (1 << 8))  # Py_TPFLAGS_IMMUTABLETYPE: built-in and C types


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))  # OS threads, also those made without `threading`
    except OSError:
        return threading.active_count()


class Pristine:
    """The interpreter state the checks rely on, captured before any notebook code ran, and
    each module imported later right after its import (before notebook code can touch it).

    ``restore`` compares by identity only (``is``), so putting the state back never calls the
    notebook's ``__eq__`` or ``__hash__``; whatever it replaces is appended to ``keep`` so that
    no finalizer of the notebook's runs in the middle of it. It runs after every call into the
    notebook's code, so each kind of state is first compared as a whole, in C (``map``), and
    functions only after an audit event said that one changed (``AUDIT.functions_changed``).
    A changed binding always shows as a changed value, so attribute values (and counts) are
    compared, not names: a renamed attribute can only break a check, never pass one.
    """

    # Modules whose module-level lists, dicts and sets are put back too (the checks read them);
    # other libraries keep caches and lazy registries there, which must be left alone.
    CONTAINERS = {"torch.testing", "sys", "gc", "builtins", "warnings"}
    PACKAGES = ("torch.testing.",)
    # Packages no check runs (drawing, display, symbolic maths, networking, test runners):
    # left out because comparing them after every call into the notebook would cost seconds.
    SKIPPED = {
        "sympy", "mpmath", "matplotlib", "mpl_toolkits", "PIL", "IPython", "ipywidgets", "ipykernel",
        "traitlets", "comm", "jupyter_client", "jupyter_core", "zmq", "tornado", "pygments", "prompt_toolkit",
        "jedi", "parso", "pyparsing", "dateutil", "kiwisolver", "fontTools", "cycler", "torchgen", "unittest",
        "email", "http", "urllib", "ssl", "socket", "asyncio", "xml", "pydoc", "pydoc_data", "setuptools",
        "pkg_resources", "_distutils_hack", "pip", "_pytest", "pytest", "nbformat", "jsonschema",
        "fastjsonschema", "referencing", "rpds", "attr", "attrs", "sqlite3", "tkinter", "curses",
    }

    def __init__(self, notebook_module, installed: tuple[str, ...]):
        self.installed = installed  # folders of installed code (prefixes, the private ppo_lib)
        self.modules: dict[str, types.ModuleType] = {}
        self.module_types, self.dicts, self.lists, self.sets, self.classes = [], [], [], [], []
        self.functions, self.codes, self.defaults, self.kwdefaults = [], [], [], []
        self.cells, self.contents = [], []
        self.ids: set[int] = set()  # every library object a module or class holds
        self.module_ids: set[int] = set()
        self.seen: set[int] = set()
        self.stale = True
        for name, module in list(sys.modules.items()):
            if type(name) is str:
                self.modules[name] = module
                if module is not notebook_module and issubclass(type(module), types.ModuleType):
                    self._add_module(name, module)
        self.environ = dict(os.environ)
        self.cwd = os.getcwd()
        self.signals = {s: signal.getsignal(s) for s in signal.valid_signals()
                        if s not in (signal.SIGKILL, signal.SIGSTOP)}
        self.signals = {s: h for s, h in self.signals.items() if h is not None}
        self.recursion_limit = sys.getrecursionlimit()
        self.torch = TorchState.capture()

    def capture(self, name: str) -> None:
        """Add the module just imported as ``name`` (called by the import system, see
        :func:`capture_imports`), if it comes from installed code."""
        module = sys.modules.get(name)
        if module is None or self.modules.get(name) is module or not issubclass(type(module), types.ModuleType) \
                or not _installed(module, self.installed):
            return
        self.modules[name] = module
        self._add_module(name, module)
        self.stale = True

    def _add_module(self, name: str, module) -> None:
        self.module_ids.add(id(module))
        namespace = module.__dict__
        if name.partition(".")[0] in self.SKIPPED:
            self.ids.update(map(id, namespace.values()))
            return
        self.module_types.append((module, type(module)))
        self._add_dict(namespace, name)
        containers = name in self.CONTAINERS or name.startswith(self.PACKAGES)
        seen = self.seen
        for value in list(namespace.values()):
            self.ids.add(id(value))
            if id(value) in seen:
                continue
            seen.add(id(value))
            kind = type(value)
            if kind is types.FunctionType:
                self._add_function(value)
            elif issubclass(kind, type) and not _immutable(value):
                self._add_class(value, seen)
            elif containers and value is not sys.modules:
                if kind is dict:
                    self._add_dict(value)
                elif kind is list:
                    self.lists.append((value, tuple(value)))
                elif kind is set:
                    self.sets.append((value, tuple(value)))

    def _add_dict(self, d: dict, module: str | None = None) -> None:
        self.dicts.append([d, module, tuple(d.keys()), tuple(d.values())])

    def _add_function(self, fn) -> None:
        self.functions.append(fn)
        self.codes.append(fn.__code__)
        self.defaults.append(fn.__defaults__)
        self.kwdefaults.append(fn.__kwdefaults__)
        for cell in fn.__closure__ or ():
            value = _cell_value(cell)
            if value is not _MISSING:
                self.cells.append(cell)
                self.contents.append(value)

    def _add_class(self, cls, seen: set[int]) -> None:
        proxy = _class_dict(cls)  # a live view of the class's attributes
        self.classes.append((cls, type(cls), proxy, tuple(proxy.keys()), tuple(proxy.values())))
        for value in proxy.values():
            self.ids.add(id(value))
            fn = value.__func__ if type(value) in (staticmethod, classmethod) else value
            if type(fn) is types.FunctionType and id(fn) not in seen:
                seen.add(id(fn))
                self._add_function(fn)

    def _index(self) -> None:
        """The flat lists the fast comparisons use, built from the captured values (never from
        the live dicts, which the notebook may have changed since)."""
        self.dict_objects = [entry[0] for entry in self.dicts]
        self.dict_lengths = [len(entry[2]) for entry in self.dicts]
        self.dict_values = list(chain.from_iterable(entry[3] for entry in self.dicts))
        self.class_objects = [entry[0] for entry in self.classes]
        self.class_types = [entry[1] for entry in self.classes]
        self.proxies = [entry[2] for entry in self.classes]
        self.class_lengths = [len(entry[3]) for entry in self.classes]
        self.class_values = list(chain.from_iterable(entry[4] for entry in self.classes))

    def restore(self, keep: list) -> int:
        """Put the captured state back; returns how many things differed."""
        if self.stale:
            self._index()
            self.stale = False
        changed = self._restore_modules(keep)
        for module, kind in self.module_types:
            if type(module) is not kind:
                _try(setattr, module, "__class__", kind)
                changed += 1
        if not (list(map(len, self.dict_objects)) == self.dict_lengths
                and all(map(is_, _values(self.dict_objects), self.dict_values))):
            changed += self._restore_dicts(keep)
        for items, saved in self.lists:
            if len(items) != len(saved) or not all(map(is_, items, saved)):
                changed += 1
                keep.append(list(items))
                items[:] = saved
        for items, saved in self.sets:
            if len(items) != len(saved) or not all(map(items.__contains__, saved)):
                changed += 1
                keep.append(list(items))
                items.clear()
                items.update(saved)
        if not (list(map(len, self.proxies)) == self.class_lengths and all(map(is_, map(type, self.class_objects), self.class_types))
                and all(map(is_, _values(self.proxies), self.class_values))):
            changed += self._restore_classes(keep)
        if AUDIT.functions_changed:
            AUDIT.functions_changed = False
            changed += self._restore_functions(keep)
        changed += self._restore_cells(keep)
        changed += self._restore_process(keep)
        if self.torch is not None:
            changed += self.torch.restore()
        return changed

    def _restore_dicts(self, keep: list) -> int:
        changed = 0
        for entry in self.dicts:
            d, module, keys, values = entry
            if len(d) == len(keys) and all(map(is_, d.values(), values)) and all(map(is_, d.keys(), keys)):
                continue
            changed += 1
            items = list(d.items())
            keep.append(items)
            d.clear()  # never looks a key up, so no notebook __eq__/__hash__ runs
            d.update(zip(keys, values))
            if module is not None:  # a package keeps the submodules imported since (lazy imports)
                new = [(k, v) for k, v in items if type(k) is str and k not in d and type(v) is types.ModuleType
                       and sys.modules.get(f"{module}.{k}") is v]
                if new:
                    d.update(new)
                    entry[2], entry[3] = tuple(d.keys()), tuple(d.values())
        self._index()
        return changed

    def _restore_classes(self, keep: list) -> int:
        changed = 0
        for cls, meta, proxy, keys, values in self.classes:
            if type(cls) is meta and len(proxy) == len(keys) and all(map(is_, proxy.values(), values)) \
                    and all(map(is_, proxy.keys(), keys)):
                continue
            changed += 1
            keep.append(dict(proxy))
            if type(cls) is not meta:
                _try(setattr, cls, "__class__", meta)
            saved = dict(zip(keys, values))
            for key in [k for k in list(proxy) if k not in saved]:
                _try(type.__delattr__, cls, key)
            for key, value in saved.items():
                if proxy.get(key, _MISSING) is not value:
                    _try(type.__setattr__, cls, key, value)
        return changed

    def _restore_functions(self, keep: list) -> int:
        """Code and defaults of every library function."""
        fns, changed = self.functions, 0
        if not (all(map(is_, map(_CODE, fns), self.codes)) and all(map(is_, map(_DEFAULTS, fns), self.defaults))
                and all(map(is_, map(_KWDEFAULTS, fns), self.kwdefaults))):
            for fn, code, defaults, kwdefaults in zip(fns, self.codes, self.defaults, self.kwdefaults):
                if fn.__code__ is not code or fn.__defaults__ is not defaults or fn.__kwdefaults__ is not kwdefaults:
                    changed += 1
                    keep.append((fn.__code__, fn.__defaults__, fn.__kwdefaults__))
                    _try(setattr, fn, "__code__", code)
                    fn.__defaults__, fn.__kwdefaults__ = defaults, kwdefaults
        return changed

    def _restore_cells(self, keep: list) -> int:
        """The contents of library functions' closures."""
        changed = 0
        try:
            same = all(map(is_, map(_CONTENTS, self.cells), self.contents))
        except ValueError:  # a cell was emptied
            same = False
        if not same:
            for cell, value in zip(self.cells, self.contents):
                now = _cell_value(cell)
                if now is not value:
                    changed += 1
                    keep.append(now)
                    cell.cell_contents = value
        return changed

    def _restore_modules(self, keep: list) -> int:
        """``sys.modules`` back to the captured modules: one the notebook replaced goes back, one
        it planted (or wrote and imported itself) goes away, so a later import finds the real one."""
        modules = sys.modules
        if len(modules) == len(self.modules) and all(map(is_, map(type, modules), repeat(str))) \
                and all(map(is_, map(self.modules.get, modules.keys()), modules.values())):
            return 0
        keep.append(list(modules.items()))
        modules.clear()  # never looks a key up, so no notebook __eq__/__hash__ runs
        modules.update(self.modules)
        return 1

    def _restore_process(self, keep: list) -> int:
        changed = 0
        if dict(os.environ) != self.environ:
            changed += 1
            os.environ.clear()
            os.environ.update(self.environ)
        if os.getcwd() != self.cwd:
            changed += 1
            os.chdir(self.cwd)
        for sig, handler in self.signals.items():
            if signal.getsignal(sig) is not handler:
                changed += 1
                keep.append(signal.getsignal(sig))
                _try(signal.signal, sig, handler)
        if sys.getrecursionlimit() != self.recursion_limit:
            sys.setrecursionlimit(self.recursion_limit)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
        monitoring = getattr(sys, "monitoring", None)  # Python 3.12+
        if monitoring is not None:
            for tool in range(6):
                if monitoring.get_tool(tool) is not None:
                    changed += 1
                    monitoring.set_events(tool, 0)
                    monitoring.free_tool_id(tool)
        return changed


_MISSING = object()
_CODE, _DEFAULTS, _KWDEFAULTS = attrgetter("__code__"), attrgetter("__defaults__"), attrgetter("__kwdefaults__")
_CONTENTS = attrgetter("cell_contents")
_VALUES = methodcaller("values")


def _values(mappings):
    """All values of all ``mappings``, in order, as one iterator (for one C-level comparison)."""
    return chain.from_iterable(map(_VALUES, mappings))


def _cell_value(cell):
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return _MISSING


def _installed(module, roots: tuple[str, ...]) -> bool:
    """Whether the import system loaded ``module`` from installed code (a file under ``roots``,
    a built-in or frozen module), judged from its spec without running any of its code."""
    spec = module.__dict__.get("__spec__")
    if type(spec) is not importlib.machinery.ModuleSpec:
        return False
    origin = object.__getattribute__(spec, "__dict__").get("origin")
    return type(origin) is str and (origin in ("built-in", "frozen") or origin.startswith(roots))


def capture_imports(guard: Guard) -> None:
    """Have every module the import system loads from now on captured right after it ran, so
    that a module first imported while the notebook runs (torch imports lazily) is restored too.
    Installed before the snapshot, so that the snapshot holds it (and restores it)."""
    bootstrap = sys.modules.get("_frozen_importlib")
    original = getattr(bootstrap, "_load_unlocked", None)
    if original is None:  # another Python: modules imported later are not restored
        return

    def _load_unlocked(spec):
        module = original(spec)
        if guard.pristine is not None:
            guard.pristine.capture(spec.name)
        return module

    bootstrap._load_unlocked = _load_unlocked


def refuse_registrations(torch, trusted: tuple[str, ...]) -> None:
    """Make ``torch.library`` refuse to register operators for the notebook: a kernel registered
    for ``aten::isclose`` would change what every check computes, and cannot be undone. The
    registration is allowed when the nearest caller outside torch is the import system or
    installed code (torch's own lazy imports), refused when it is the notebook's code."""
    original = torch._C._dispatch_library
    torch_dir = os.path.dirname(torch.__file__) + os.sep

    def _dispatch_library(*args, **kwargs):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(torch_dir):
            frame = frame.f_back
        origin = frame.f_code.co_filename if frame is not None else "<frozen>"
        if not origin.startswith(("<frozen", *trusted)):
            raise NotAllowedError("registering torch operators (torch.library) is not allowed while grading")
        return original(*args, **kwargs)

    torch._C._dispatch_library = _dispatch_library


def _class_dict(cls):
    return type.__dict__["__dict__"].__get__(cls)  # not through a metaclass the notebook may have set


def _try(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:
        pass


class TorchState:
    """torch's process-wide switches: the ``__torch_function__``/``__torch_dispatch__`` mode
    stacks and saved-tensor hooks go back to none; grad mode and the default dtype are the
    notebook's settings (a chapter may compute in float64), fixed for the length of a check
    cell by :meth:`adopt`. (Operator registrations cannot be undone: see
    :func:`refuse_registrations`.)"""

    def __init__(self, torch):
        self.torch = torch
        # built-in functions, held from before the notebook ran (a module attribute can be replaced)
        self.is_grad_enabled, self.get_default_dtype = torch._C.is_grad_enabled, torch._C.get_default_dtype
        self.set_grad_enabled, self.set_default_dtype = torch._C._set_grad_enabled, torch._C._set_default_dtype
        self.grad, self.dtype = self.is_grad_enabled(), self.get_default_dtype()
        self.precise = (torch.float32, torch.float64)
        self.function_modes = torch._C._len_torch_function_stack()
        self.dispatch_modes = torch._C._len_torch_dispatch_stack()

    def adopt(self) -> None:
        """Take the notebook's grad mode and default dtype (float32 or float64: a lower precision
        would loosen the checks' default tolerances) as the settings a check cell runs with."""
        self.grad = self.is_grad_enabled()
        dtype = self.get_default_dtype()
        self.dtype = dtype if dtype in self.precise else self.precise[0]

    @classmethod
    def capture(cls):
        torch = sys.modules.get("torch")
        return cls(torch) if torch is not None else None

    def restore(self) -> int:
        torch, changed = self.torch, 0
        while torch._C._len_torch_function_stack() > self.function_modes:
            torch._C._pop_torch_function_stack()
            changed += 1
        while torch._C._len_torch_dispatch_stack() > self.dispatch_modes:
            torch._C._pop_torch_dispatch_stack()
            changed += 1
        while torch._C._autograd._top_saved_tensors_default_hooks(False) is not None:
            torch._C._autograd._pop_saved_tensors_default_hooks()
            changed += 1
        if self.is_grad_enabled() != self.grad:
            self.set_grad_enabled(self.grad)
        if self.get_default_dtype() != self.dtype:
            self.set_default_dtype(self.dtype)
        return changed


# --------------------------------------------------------------------------------------
# the guard between a check and the notebook's code
# --------------------------------------------------------------------------------------

class Guard:
    """Runs the notebook's code for a check and puts the state back afterwards."""

    def __init__(self):
        self.pristine: Pristine | None = None
        self.keep: list = []  # what the notebook touched, alive until the cell ends
        self.blocked: list[frozenset] = []  # library functions refused while the notebook runs
        self.originals: dict[int, object] = {}  # id(guarded wrapper) -> the notebook's object
        self.depth = 0

    def settle(self) -> None:
        """Restore the pristine state, with SIGALRM held back so a time limit cannot cut it short."""
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            self.pristine.restore(self.keep)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask - {signal.SIGALRM})

    def release(self) -> None:
        """After a check cell: let go of what the notebook touched (its finalizers may run now;
        the next check starts by restoring the state again)."""
        self.keep.clear()
        self.originals.clear()

    def wrap(self, fn, name: str, forbidden: frozenset):
        """``fn`` as a check cell sees it: copied arguments, plain results, state restored."""
        library = _library_origin(fn)
        guard = self

        def guarded(*args, **kwargs):
            if library:
                raise NotAllowedError(f"'{name}' is {library} from the library; the exercise asks "
                                      "for your own implementation")
            if guard.depth:  # called again from inside the notebook's own code: no second guard
                return fn(*args, **kwargs)
            copies = guard.copy(args), {k: guard.copy(v) for k, v in kwargs.items()}
            threads = _threads()
            guard.depth, outcome, raw = 1, None, None
            guard.blocked.append(forbidden)
            try:
                raw = fn(*copies[0], **copies[1])
            except BaseException as exc:  # read it now: reading may run the notebook's code
                outcome = _describe(exc)
            finally:
                guard.depth = 0
                guard.blocked.clear()
            guard.keep.append((args, kwargs, copies, raw))
            guard.settle()
            if _threads() > threads:
                raise Stop(f"'{name}' left a thread running, which could change the checks; "
                           "the grader stopped here")
            if outcome is not None:
                raise _rebuild(outcome) from None
            return _plain(raw, name)

        guarded.__name__ = guarded.__qualname__ = name
        self.originals[id(guarded)] = fn
        self.keep.append(guarded)  # alive, so its id stays unique while it may be used
        return guarded

    def copy(self, value, depth: int = 0):
        """A check's argument as the notebook's code gets it: tensors and arrays copied (autograd
        still flows back through a tensor's copy), containers rebuilt, a guarded notebook object
        unwrapped; other objects as they are."""
        kind = type(value)
        if depth > MAX_DEPTH:
            return value
        if kind is tuple or kind is list:
            return kind(self.copy(v, depth + 1) for v in value)
        if kind is dict:
            return {k: self.copy(v, depth + 1) for k, v in value.items()}
        if kind is types.FunctionType and id(value) in self.originals:
            return self.originals[id(value)]
        torch, numpy = sys.modules.get("torch"), sys.modules.get("numpy")
        if torch is not None and kind in (torch.Tensor, torch.nn.Parameter):
            return value.clone()
        if numpy is not None and kind is numpy.ndarray:
            return value.copy()
        return value

    def tripwire(self, fn, dotted: str):
        """``fn`` (a library function an exercise reimplements), refusing to run while the
        notebook's code runs for a check that forbids it."""
        blocked = self.blocked

        def tripwire(*args, **kwargs):
            if blocked and dotted in blocked[-1]:
                raise NotAllowedError(f"the answer calls {dotted}, the library function this "
                                      "exercise asks you to write yourself")
            return fn(*args, **kwargs)

        for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(tripwire, attribute, getattr(fn, attribute, None))
        return tripwire


def _library_origin(fn) -> str | None:
    """``module.name`` when ``fn`` is a ``ppo_lib`` function, or a partial or bound method of one
    (it reads attributes of built-in types only: no notebook code runs here)."""
    import functools

    for _ in range(5):
        kind = type(fn)
        if kind is functools.partial:
            fn = fn.func
        elif kind is types.MethodType:
            fn = fn.__func__
        else:
            break
    if type(fn) not in (types.FunctionType, types.BuiltinFunctionType):
        return None
    module = fn.__module__
    if type(module) is str and (module == "ppo_lib" or module.startswith("ppo_lib.")):
        return f"{module}.{_exact_str(fn.__qualname__, 200)}"
    return None


def _plain(value, name: str, depth: int = 0):
    """What a check gets back from the notebook: plain data, copied. Anything else would run
    the notebook's code (``__eq__``, ``__torch_function__``, ...) inside the check."""
    kind = type(value)
    if kind in PLAIN_SCALARS:
        return value
    if depth > MAX_DEPTH:
        raise NotAllowedError(f"'{name}' returned a value nested more than {MAX_DEPTH} deep")
    if kind is tuple or kind is list:
        return kind(_plain(v, name, depth + 1) for v in value)
    if kind is dict:
        return {_plain(k, name, depth + 1): _plain(v, name, depth + 1) for k, v in value.items()}
    torch, numpy = sys.modules.get("torch"), sys.modules.get("numpy")
    if torch is not None:
        if kind in (torch.Tensor, torch.nn.Parameter):
            _check_graph(value, name, torch)
            return value.clone()
        if kind in (torch.Size, torch.dtype, torch.device):
            return value
    if numpy is not None:
        if kind is numpy.ndarray and not value.dtype.hasobject:
            return value.copy()
        if issubclass(kind, numpy.generic) and kind.__module__ == "numpy" and kind is not numpy.object_:
            return value
    raise NotAllowedError(f"'{name}' returned a {_exact_str(kind.__module__, 100)}."
                          f"{_exact_str(kind.__qualname__, 100)}: answers return numbers, strings, None, "
                          "torch tensors, NumPy arrays, or tuples, lists and dicts of these")


def _check_graph(tensor, name: str, torch) -> None:
    """Refuse an autograd graph that would run the notebook's code when the check backpropagates."""
    if tensor._backward_hooks:
        raise NotAllowedError(f"'{name}' returned a tensor with a backward hook")
    custom = torch.autograd.function.BackwardCFunction
    stack, seen = [tensor.grad_fn], set()
    while stack and len(seen) < 100_000:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if issubclass(type(node), custom):
            raise NotAllowedError(f"'{name}' returned a tensor computed by a custom autograd "
                                  "Function; use differentiable torch operations")
        stack.extend(next_node for next_node, _ in node.next_functions)


def _exact_str(value, limit: int = MAX_MESSAGE) -> str:
    """A plain ``str`` copy of ``value`` (a str subclass could run code when formatted)."""
    try:
        return str.__getitem__(value, slice(0, limit))
    except Exception:
        return "?"


def _describe(exc: BaseException) -> tuple[type, str, str]:
    """(type, name, message) of an exception, read while the notebook's code may still run."""
    kind = type(exc)
    try:
        message = _exact_str(str(exc))
    except BaseException:
        message = "(its message could not be read)"
    return kind, _exact_str(getattr(kind, "__name__", "Exception"), 200), message


def _rebuild(described) -> BaseException:
    """A fresh built-in exception for one the notebook raised (no traceback, no notebook class)."""
    kind, name, message = described
    if kind is NotAllowedError:
        return NotAllowedError(message)
    if isinstance(kind, type) and getattr(builtins, name, None) is kind:
        try:
            return kind(message)
        except Exception:
            pass
    return RuntimeError(f"{name}: {message}")


class Unavailable:
    """Stands in a check cell for a notebook value a check must not touch."""

    def __init__(self, name: str, why: str):
        object.__setattr__(self, "_why", f"'{name}' is {why}; checks take functions and plain data")

    def __getattr__(self, attribute):
        raise NotAllowedError(object.__getattribute__(self, "_why"))

    def __repr__(self):
        return f"<unavailable: {object.__getattribute__(self, '_why')}>"


# --------------------------------------------------------------------------------------
# running the cells
# --------------------------------------------------------------------------------------

_MAGIC = re.compile(r"^(\s*)[%!].*$", re.M)


def without_magics(source: str) -> str:
    """IPython's ``%magic`` and ``!shell`` lines become ``pass`` (the grader runs plain Python)."""
    return _MAGIC.sub(lambda m: m.group(1) + "pass", source)


class Runner:
    """Runs the job's cells in order; the notebook's namespace is the module ``__main__``."""

    def __init__(self, job: dict, channel: Channel):
        self.job, self.channel = job, channel
        self.timeout = float(job["timeout"])
        self.notebook = types.ModuleType("__main__")
        self.ns = self.notebook.__dict__
        self.ns["__builtins__"] = builtins
        self.trusted: dict = {}  # names the check cells defined, as they defined them
        self.guard = Guard()
        self.armed = False  # a cell is running under its time limit

    # -- before any notebook code ---------------------------------------------------------

    def prepare(self) -> None:
        job = self.job
        sys.meta_path.insert(0, VerifiedLibrary(job["lib"], job["manifest"]))
        for name in job["preimport"]:
            try:
                importlib.import_module(name)
            except BaseException:  # the notebook meets the same error in its own cell
                pass
        roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, job["lib"]}
        installed = tuple(p.rstrip(os.sep) + os.sep for p in roots | {os.path.realpath(p) for p in roots})
        torch = sys.modules.get("torch")
        if torch is not None:  # one thread: no pool thread appears later and looks like the notebook's
            torch.set_num_threads(1)
            _try(torch.set_num_interop_threads, 1)
            refuse_registrations(torch, installed)
        tqdm = sys.modules.get("tqdm")
        if tqdm is not None:  # nor tqdm's monitor thread
            tqdm.tqdm.monitor_interval = 0
        sys.modules["__main__"] = self.notebook
        sys.argv = [""]
        signal.signal(signal.SIGALRM, self._on_alarm)
        self._install_tripwires(set().union(*(cell.get("forbidden", ()) for cell in job["cells"])))
        gc.collect()
        capture_imports(self.guard)
        self.guard.pristine = Pristine(self.notebook, installed)
        sys.addaudithook(AUDIT)

    def _install_tripwires(self, dotted_names: set[str]) -> None:
        """Replace each forbidden library function, wherever a module holds it, by a tripwire."""
        swaps = {}
        for dotted in dotted_names:
            module_name, _, attribute = dotted.rpartition(".")
            fn = getattr(sys.modules.get(module_name), attribute, None)
            if callable(fn):
                swaps[id(fn)] = (fn, self.guard.tripwire(fn, dotted))
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if type(namespace) is not dict:
                continue
            for key, value in list(namespace.items()):
                swap = swaps.get(id(value))
                if swap is not None and swap[0] is value:
                    namespace[key] = swap[1]

    def _on_alarm(self, signum, frame):
        if self.armed:
            raise TimeoutError(f"the cell ran longer than the {_seconds(self.timeout)} s limit")

    # -- the cells ------------------------------------------------------------------------

    def run(self) -> None:
        for cell in self.job["cells"]:
            self.channel.send("start", cell=cell["index"])
            try:
                error = self.run_check(cell) if cell["kind"] == "check" else self.run_code(cell)
            except Stop as stop:
                self.channel.send("done", cell=cell["index"], error=["NotAllowedError", str(stop)])
                self.channel.send("stop", reason=str(stop))
                return
            self.channel.send("done", cell=cell["index"], error=error)
        self.channel.send("end")

    def _exec(self, source: str, index: int, namespace: dict):
        """Run ``source`` under the cell's time limit; returns None or [name, message]."""
        signal.signal(signal.SIGALRM, self._on_alarm)
        try:
            code = compile(source, f"<cell {index}>", "exec", dont_inherit=True)
            self.armed = True
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
            try:
                exec(code, namespace)
            finally:
                self.armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        except Stop:
            raise
        except BaseException as exc:
            _, name, message = _describe(exc)
            return [name, message]
        return None

    def run_code(self, cell: dict):
        """A cell of the notebook (the student's, or an unlocked cell of the chapter), in the
        notebook's own state, as Jupyter would run it: the state is restored before a check."""
        threads = _threads()
        error = self._exec(without_magics(cell["source"]), cell["index"], self.ns)
        if _threads() > threads:
            raise Stop(f"cell {cell['index']} left a thread running, which could change the checks; "
                       "the grader stopped here")
        return error

    def run_check(self, cell: dict):
        """A check cell, as the instructor wrote it, over a guarded view of the notebook, in the
        pristine state (but the notebook's grad mode and default dtype)."""
        guard = self.guard
        gc.disable()  # no finalizer of the notebook's runs in the middle of a check
        if guard.pristine.torch is not None:
            guard.pristine.torch.adopt()
        guard.settle()
        given = self._check_namespace(frozenset(cell.get("forbidden", ())))
        namespace = dict(given)
        error = self._exec(cell["source"], cell["index"], namespace)
        guard.settle()
        for name, value in list(namespace.items()):  # what the check cell defined, kept as it is
            if type(name) is str and (name not in given or given[name] is not value):
                self.ns[name] = self.trusted[name] = value
        guard.release()
        gc.enable()
        return error

    def _check_namespace(self, forbidden: frozenset) -> dict:
        """The notebook's names as a check cell sees them: whatever can be called is guarded,
        modules only if the grader imported them, the notebook's own objects unavailable.
        Only types are inspected (``type``, ``issubclass``), so no notebook code runs here."""
        pristine, guard = self.guard.pristine, self.guard
        namespace = {}
        for name, value in list(self.ns.items()):
            if type(name) is not str or name in self.trusted:
                continue
            kind = type(value)
            if kind in PLAIN_SCALARS:
                namespace[name] = value
            elif issubclass(kind, types.ModuleType):
                namespace[name] = value if id(value) in pristine.module_ids else Unavailable(
                    name, "a module the grader did not import before the notebook ran")
            elif issubclass(kind, type) and id(value) in pristine.ids:
                namespace[name] = value  # a library class
            elif callable(value):  # a function, a class, a model: called only through the guard
                namespace[name] = guard.wrap(value, name, forbidden)
            elif _defined_in_notebook(kind):
                namespace[name] = Unavailable(name, "an object of a class defined in the notebook")
            elif _is_tensor(kind) and value.__dict__:  # an attribute set on it would shadow a method
                namespace[name] = Unavailable(name, "a tensor with attributes set by the notebook")
            else:
                namespace[name] = value
        namespace.update(self.trusted)
        namespace["__builtins__"] = builtins
        namespace["__name__"] = "__main__"
        return namespace


def _is_tensor(kind) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and kind in (torch.Tensor, torch.nn.Parameter)


def _defined_in_notebook(kind) -> bool:
    """Whether ``kind`` or a base class was defined by the notebook (or is a tensor subclass)."""
    torch = sys.modules.get("torch")
    if torch is not None and issubclass(kind, torch.Tensor) and kind not in (torch.Tensor, torch.nn.Parameter):
        return True
    for cls in type.__dict__["__mro__"].__get__(kind):
        module = _class_dict(cls).get("__module__")
        if type(module) is str and module == "__main__":
            return True
    return False


def _seconds(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    channel = Channel(job["fd"], job["token"])
    set_limits(job["limits"])
    die_with_parent(job["parent"])
    sys.path.insert(0, job["lib"])
    runner = Runner(job, channel)
    runner.prepare()
    channel.send("ready")
    runner.run()
    sys.stdout.flush()
    os._exit(0)  # no atexit handler or finalizer of the notebook's runs after the last word


if __name__ == "__main__":
    main()
