"""Checkpoints of a :class:`~ppo_lib.trainer.PPOTrainer`: all or nothing, and no code on load.

A checkpoint is a folder::

    policy.safetensors     the ActorCritic's weights (tied weights stored once)
    optimizer.safetensors  the optimizer's tensors (Adam's moments and step counts)
    rng.safetensors        generator states: "order" (prompt and minibatch order, the same on
                           every process) and "sample.<rank>" (sampling, one per process)
    trainer_state.json     format, step count, KL controller, learning-rate multiplier, config,
                           prompt queue, world size, the optimizer's hyper-parameters

Three promises, each tested in ``tests/test_checkpoint.py``:

* **Nothing is unpickled.** Every file is safetensors or JSON, so a checkpoint from someone
  else cannot run code on the machine that loads it.
* **Everything is validated before anything changes.** :func:`read_checkpoint` reads and
  checks every file against the trainer (key set allowing for tied weights, shapes, dtypes,
  optimizer groups and state, RNG sizes, queue, world size); only then does
  :func:`apply_checkpoint` touch the trainer. Any failure is a :class:`CheckpointError` that
  names the file.
* **A crash never leaves half a checkpoint.** :func:`save_checkpoint` writes into a temporary
  folder beside the target, fsyncs it, then swaps it in with two renames
  (``folder → folder.old``, ``tmp → folder``). A crash before the swap leaves the old
  checkpoint; between the two renames, ``folder.old``, which :func:`recover_checkpoint` puts
  back; after them, the new one.

Global RNG state (``torch``'s and ``random``'s) is neither saved nor restored: the trainer draws
only from its own generators, and loading a checkpoint must not reseed the caller's program.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

__all__ = ["CheckpointError", "FORMAT", "FILES", "save_checkpoint", "read_checkpoint", "apply_checkpoint",
           "load_checkpoint", "recover_checkpoint"]

FORMAT = 2
"""Version of the folder layout above; 1 was the pickled ``rng.pt`` / ``optimizer.pt`` layout."""

FILES = ("policy.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json")


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete, corrupt, or does not match this trainer."""


# ---------------------------------------------------------------------------------- save
def save_checkpoint(trainer, folder: str | Path) -> Path:
    """Save ``trainer``'s whole state into ``folder``, atomically.

    Under data parallelism every process must call this (the RNG states are gathered from all
    of them); only the main process writes, and all wait for it before returning.
    """
    from safetensors.torch import save_file, save_model

    acc = trainer.accelerator
    folder = Path(folder)
    sample_states = _gather_sample_states(trainer)  # collective: every rank takes part
    if acc.is_main_process:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        try:
            save_model(trainer.unwrapped, str(tmp / "policy.safetensors"))  # stores tied weights once
            optim_tensors, param_groups = _split_optimizer_state(trainer.optimizer.state_dict())
            save_file(optim_tensors, str(tmp / "optimizer.safetensors"))
            rng = {"order": trainer.order_rng.get_state()}
            rng.update({f"sample.{r}": s for r, s in enumerate(sample_states)})
            save_file(rng, str(tmp / "rng.safetensors"))
            state = {"format": FORMAT, "step_count": trainer.step_count, "kl_ctl": trainer.kl_ctl.state_dict(),
                     "config": trainer.config.to_dict(), "prompt_queue": list(trainer._queue),
                     "prompt_count": trainer._prompt_count, "world_size": acc.num_processes,
                     "lr_scale": trainer.lr_scale,
                     "optimizer_param_groups": param_groups}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
            for f in FILES:
                _fsync(tmp / f)
            _fsync(tmp)
            old = folder.with_name(folder.name + ".old")
            if folder.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(folder, old)  # a crash from here to the next line leaves only folder.old
            os.replace(tmp, folder)
            _fsync(folder.parent)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    acc.wait_for_everyone()
    return folder


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (a rename is durable only after this)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _gather_sample_states(trainer) -> list[torch.Tensor]:
    """The sampling generator's state of every process, in rank order (one tensor each)."""
    acc = trainer.accelerator
    state = trainer.sample_rng.get_state()  # (n,) uint8, on the CPU even for a CUDA generator
    if acc.num_processes == 1:
        return [state]
    gathered = acc.gather(state.to(acc.device)[None]).cpu()  # (world, n)
    return list(gathered.unbind(0))


def _split_optimizer_state(sd: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer ``state_dict`` as flat tensors ``"<param index>.<name>"`` plus JSON groups."""
    tensors = {}
    for index, per_param in sd["state"].items():
        for name, value in per_param.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


# ---------------------------------------------------------------------------------- load
def recover_checkpoint(folder: str | Path) -> list[str]:
    """Finish what an interrupted :func:`save_checkpoint` left, and say what was done.

    * ``folder`` missing but ``folder.old`` present (a crash between the two renames): the old
      checkpoint is put back.
    * ``folder`` and ``folder.old`` both present (a crash after the swap): ``folder.old`` is stale.
    * ``folder.tmp-*`` folders are unfinished saves: removed.
    """
    folder = Path(folder)
    notes = []
    old = folder.with_name(folder.name + ".old")
    if old.is_dir():
        if folder.exists():
            shutil.rmtree(old)
            notes.append(f"removed the stale {old.name}")
        else:
            os.replace(old, folder)
            notes.append(f"recovered {folder.name} from {old.name} (a save was interrupted)")
    if folder.parent.is_dir():
        for tmp in folder.parent.glob(folder.name + ".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            notes.append(f"removed the unfinished save {tmp.name}")
    return notes


def read_checkpoint(trainer, folder: str | Path) -> dict:
    """Read and validate every file of ``folder`` against ``trainer``; change nothing.

    Returns:
        What :func:`apply_checkpoint` needs, loaded on the CPU.

    Raises:
        CheckpointError: naming the file, if anything is missing, unreadable or does not fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"no checkpoint folder at {folder}.")
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        hint = " It was written by an older ppo_lib (pickled .pt files), which is not loaded." \
            if (folder / "rng.pt").exists() else ""
        raise CheckpointError(f"checkpoint {folder} is incomplete: missing {missing}.{hint}")

    def load(name, reader):
        try:
            return reader(folder / name)
        except (OSError, ValueError, RuntimeError, SafetensorError, UnicodeDecodeError) as e:
            raise CheckpointError(f"checkpoint file {folder / name} is corrupt: {type(e).__name__}: {e}") from None

    state = load("trainer_state.json", lambda p: json.loads(p.read_text()))
    weights = load("policy.safetensors", lambda p: load_file(str(p), device="cpu"))
    optim_tensors = load("optimizer.safetensors", lambda p: load_file(str(p), device="cpu"))
    rng = load("rng.safetensors", lambda p: load_file(str(p), device="cpu"))

    def bad(name, msg):
        return CheckpointError(f"checkpoint file {folder / name} {msg}")

    # trainer_state.json
    if not isinstance(state, dict):
        raise bad("trainer_state.json", "is not a JSON object.")
    keys = {"format", "step_count", "kl_ctl", "config", "prompt_queue", "prompt_count", "world_size",
            "optimizer_param_groups", "lr_scale"}
    if set(state) != keys:
        raise bad("trainer_state.json", f"has keys {sorted(state)}; expected {sorted(keys)}.")
    if state["format"] != FORMAT:
        raise bad("trainer_state.json", f"is format {state['format']!r}; this ppo_lib reads format {FORMAT}.")
    current = trainer.config.to_dict()
    if state["config"] != current:
        saved = state["config"] if isinstance(state["config"], dict) else {}
        diff = {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))
                if saved.get(k) != current.get(k)}
        raise bad("trainer_state.json", f"was written with another config: {diff} (saved, current).")
    if not _is_int(state["step_count"], 0):
        raise bad("trainer_state.json", f"has step_count {state['step_count']!r}; expected an integer ≥ 0.")
    world = trainer.accelerator.num_processes
    if state["world_size"] != world:
        raise bad("trainer_state.json", f"was written by {state['world_size']} process(es); this run has {world}. "
                  "Resume with the same number of processes.")
    kl = state["kl_ctl"]
    if not (isinstance(kl, dict) and set(kl) == {"kl_coef"} and _is_number(kl["kl_coef"]) and kl["kl_coef"] >= 0):
        raise bad("trainer_state.json", f"has a bad KL controller state {kl!r}; expected {{'kl_coef': β ≥ 0}}.")
    if not (_is_number(state["lr_scale"]) and state["lr_scale"] > 0):
        raise bad("trainer_state.json", f"has lr_scale {state['lr_scale']!r}; expected a finite number > 0.")
    queue, count = state["prompt_queue"], state["prompt_count"]
    if not (isinstance(queue, list) and all(_is_int(i, 0) for i in queue)):
        raise bad("trainer_state.json", "has a prompt_queue that is not a list of indices ≥ 0.")
    if count is None and queue or count is not None and not (_is_int(count, 1) and all(i < count for i in queue)):
        raise bad("trainer_state.json", f"has prompt indices that do not fit prompt_count={count!r}.")

    # policy.safetensors: exact key set (tied weights stored once), shapes and dtypes
    expected = trainer.unwrapped.state_dict()
    full = {}
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise bad("policy.safetensors", f"holds weights of another model: unexpected {unexpected[:5]}"
                  f"{' …' if len(unexpected) > 5 else ''}.")
    absent = []
    for group in _tied_groups(expected):
        present = [n for n in group if n in weights]
        if not present:
            absent += group
            continue
        for n in present:
            w, e = weights[n], expected[n]
            if w.shape != e.shape or w.dtype != e.dtype:
                raise bad("policy.safetensors", f"has {n} of shape {tuple(w.shape)} {w.dtype}; this model's is "
                          f"{tuple(e.shape)} {e.dtype}.")
        for n in group:
            full[n] = weights[present[0]]
    if absent:
        raise bad("policy.safetensors", f"lacks {len(absent)} of this model's tensors, e.g. {sorted(absent)[:5]}.")

    # optimizer.safetensors + its param groups
    optim_sd = _validate_optimizer(trainer, optim_tensors, state["optimizer_param_groups"],
                                   lambda msg: bad("optimizer.safetensors", msg))

    # rng.safetensors: the shared order generator and this process's sampling generator
    rank = trainer.accelerator.process_index
    want = {"order"} | {f"sample.{r}" for r in range(world)}
    if set(rng) != want:
        raise bad("rng.safetensors", f"holds {sorted(rng)}; expected {sorted(want)}.")
    for name, gen in (("order", trainer.order_rng), (f"sample.{rank}", trainer.sample_rng)):
        ref = gen.get_state()
        if rng[name].dtype != ref.dtype or rng[name].shape != ref.shape:
            raise bad("rng.safetensors", f"has a {name} state of shape {tuple(rng[name].shape)} {rng[name].dtype}; "
                      f"this generator's is {tuple(ref.shape)} {ref.dtype}.")
        try:  # a state of the right size can still be invalid: try it on a scratch generator
            torch.Generator(device=gen.device).set_state(rng[name])
        except RuntimeError as e:
            raise bad("rng.safetensors", f"has an invalid {name} state: {e}") from None

    return {"weights": full, "optimizer": optim_sd, "order_rng": rng["order"], "sample_rng": rng[f"sample.{rank}"],
            "step_count": state["step_count"], "kl_ctl": kl, "prompt_queue": queue, "prompt_count": count,
            "lr_scale": float(state["lr_scale"])}


def apply_checkpoint(trainer, ckpt: dict) -> None:
    """Put a checkpoint that :func:`read_checkpoint` validated into ``trainer``."""
    trainer.unwrapped.load_state_dict(ckpt["weights"], strict=True)
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.kl_ctl.load_state_dict(ckpt["kl_ctl"])
    trainer.order_rng.set_state(ckpt["order_rng"])
    trainer.sample_rng.set_state(ckpt["sample_rng"])
    trainer.step_count = ckpt["step_count"]
    trainer._queue = list(ckpt["prompt_queue"])
    trainer._prompt_count = ckpt["prompt_count"]
    trainer.lr_scale = ckpt["lr_scale"]
    trainer.sync_lr_scheduler()


def load_checkpoint(trainer, folder: str | Path) -> None:
    """Validate ``folder`` completely, then restore it into ``trainer`` (nothing changes on error)."""
    apply_checkpoint(trainer, read_checkpoint(trainer, folder))


# ---------------------------------------------------------------------------------- checks
def _is_int(x, low: int) -> bool:
    return type(x) is int and x >= low


def _is_number(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def _tied_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names grouped by the memory they share (a tied embedding and LM head are one group)."""
    groups: dict[tuple, list[str]] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else (name,)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _validate_optimizer(trainer, tensors: dict, groups, bad) -> dict:
    """Rebuild an optimizer ``state_dict`` from its saved parts, checking it fits this optimizer."""
    ours = trainer.optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(ours) or not all(isinstance(g, dict) for g in groups):
        raise bad(f"has {len(groups) if isinstance(groups, list) else groups!r} parameter group(s); "
                  f"this optimizer has {len(ours)}.")
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    for saved, mine in zip(groups, ours):
        if set(saved) != set(mine):
            raise bad(f"has parameter-group options {sorted(saved)}; this optimizer's are {sorted(mine)}.")
        if saved["params"] != mine["params"]:
            raise bad(f"covers {len(saved['params'])} parameters in a group where this optimizer has "
                      f"{len(mine['params'])}; it belongs to another model or LoRA setting.")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not (index.isdigit() and name and int(index) < len(params)):
            raise bad(f"has a tensor {key!r} for no parameter of this optimizer.")
        param = params[int(index)]
        if value.dim() and (value.shape != param.shape or value.dtype != param.dtype):
            raise bad(f"has {key} of shape {tuple(value.shape)} {value.dtype} for a parameter of shape "
                      f"{tuple(param.shape)} {param.dtype}.")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise bad(f"has non-finite values in {key}.")
        state.setdefault(int(index), {})[name] = value
    names = {frozenset(s) for s in state.values()}
    if len(names) > 1:
        raise bad(f"holds different state entries for different parameters: {sorted(map(sorted, names))}.")
    restored = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": restored}
