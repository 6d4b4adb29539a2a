"""Checkpoints on tiny-gpt2: nothing is unpickled, everything is validated before anything
changes, every failure is a CheckpointError that names the file, and loading leaves the
caller's global RNGs alone."""

import json
import pickle
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from ppo_lib.checkpoint import FILES, CheckpointError, recover_checkpoint
from tiny import PROMPTS
from tiny import tiny_trainer as _tiny


def tiny_trainer(**overrides):
    return _tiny(**{"max_new_tokens": 8, "ppo_epochs": 1, **overrides})  # short: many trainers are built


def snapshot(t) -> dict:
    """Everything a load could change."""
    return {"weights": {k: v.clone() for k, v in t.unwrapped.state_dict().items()},
            "optimizer": repr(t.optimizer.state_dict()["state"]), "step": t.step_count, "beta": t.kl_ctl.kl_coef,
            "order": t.order_rng.get_state(), "sample": t.sample_rng.get_state(), "queue": list(t._queue)}


def assert_unchanged(t, before: dict) -> None:
    after = snapshot(t)
    assert before["weights"].keys() == after["weights"].keys()
    assert all(torch.equal(before["weights"][k], after["weights"][k]) for k in before["weights"])
    assert {k: v for k, v in before.items() if k not in ("weights", "order", "sample")} == \
        {k: v for k, v in after.items() if k not in ("weights", "order", "sample")}
    assert torch.equal(before["order"], after["order"]) and torch.equal(before["sample"], after["sample"])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint after one update, and a fresh trainer (of the same config) to load it into."""
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    t = tiny_trainer()
    t.train(PROMPTS, 1, progress=False)
    t.save_checkpoint(folder)
    return folder


@pytest.fixture
def copy_of(saved, tmp_path):
    import shutil

    def make():
        target = tmp_path / "checkpoint"
        shutil.copytree(saved, target)
        return target
    return make


def test_a_checkpoint_is_safetensors_and_json_only(saved):
    assert sorted(p.name for p in saved.iterdir()) == sorted(FILES)
    for name in FILES:
        head = (saved / name).read_bytes()[:2]
        assert head != b"\x80\x04" and not head.startswith(b"PK")  # neither a pickle nor a torch zip


class Payload:
    """Unpickling this creates a file: the proof that a loader ran code."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", FILES + ("rng.pt", "optimizer.pt"))
def test_a_pickle_in_a_checkpoint_runs_no_code(copy_of, tmp_path, name):
    folder = copy_of()
    Payload.marker = tmp_path / "pwned"
    (folder / name).write_bytes(pickle.dumps(Payload()))
    t = tiny_trainer()
    if name in FILES:
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            t.load_checkpoint(folder)
    else:  # the old pickled names are not read at all
        t.load_checkpoint(folder)
    assert not Payload.marker.exists()


def rewrite_safetensors(path, change):
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def rewrite_state(folder, change):
    state = json.loads((folder / "trainer_state.json").read_text())
    change(state)
    (folder / "trainer_state.json").write_text(json.dumps(state))


BAD = {
    "weights of another model": ("policy.safetensors", "unexpected",
                                 lambda f: rewrite_safetensors(f / "policy.safetensors", lambda t: t.update(extra=torch.zeros(2)))),
    "two of the tensors only": ("policy.safetensors", "lacks",
                                lambda f: rewrite_safetensors(f / "policy.safetensors",
                                                              lambda t: [t.pop(k) for k in list(t)[2:]])),
    "a tensor of the wrong shape": ("policy.safetensors", "shape",
                                    lambda f: rewrite_safetensors(f / "policy.safetensors",
                                                                  lambda t: t.update({k: torch.zeros(3) for k in list(t)[-1:]}))),
    "a tensor of the wrong dtype": ("policy.safetensors", "float64",
                                    lambda f: rewrite_safetensors(f / "policy.safetensors",
                                                                  lambda t: t.update({k: v.double() for k, v in list(t.items())[-1:]}))),
    "no KL controller": ("trainer_state.json", "keys", lambda f: rewrite_state(f, lambda s: s.pop("kl_ctl"))),
    "a NaN β": ("trainer_state.json", "KL controller", lambda f: rewrite_state(f, lambda s: s.update(kl_ctl={"kl_coef": "nan"}))),
    "a negative step": ("trainer_state.json", "step_count", lambda f: rewrite_state(f, lambda s: s.update(step_count=-1))),
    "a queue beyond the prompts": ("trainer_state.json", "prompt_count",
                                   lambda f: rewrite_state(f, lambda s: s.update(prompt_queue=[99]))),
    "another world size": ("trainer_state.json", "processes", lambda f: rewrite_state(f, lambda s: s.update(world_size=2))),
    "another format": ("trainer_state.json", "format", lambda f: rewrite_state(f, lambda s: s.update(format=1))),
    "not JSON": ("trainer_state.json", "corrupt", lambda f: (f / "trainer_state.json").write_text("{")),
    "an optimizer of another model": ("optimizer.safetensors", "shape",
                                      lambda f: rewrite_safetensors(f / "optimizer.safetensors",
                                                                    lambda t: t.update({"0.exp_avg": torch.zeros(5)}))),
    "an optimizer state for no parameter": ("optimizer.safetensors", "no parameter",
                                            lambda f: rewrite_safetensors(f / "optimizer.safetensors",
                                                                          lambda t: t.update({"999.exp_avg": torch.zeros(1)}))),
    "optimizer groups of another setting": ("optimizer.safetensors", "parameters",
                                            lambda f: rewrite_state(f, lambda s: s["optimizer_param_groups"][0].update(params=[0]))),
    "an RNG state of the wrong size": ("rng.safetensors", "order",
                                       lambda f: rewrite_safetensors(f / "rng.safetensors", lambda t: t.update(order=t["order"][:10]))),
    "an empty RNG file": ("rng.safetensors", "corrupt", lambda f: (f / "rng.safetensors").write_bytes(b"")),
    "a missing file": ("optimizer.safetensors", "incomplete", lambda f: (f / "optimizer.safetensors").unlink()),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_checkpoint_is_a_checkpoint_error_naming_the_file_and_changes_nothing(copy_of, case):
    name, words, damage = BAD[case]
    folder = copy_of()
    damage(folder)
    t = tiny_trainer()
    t.train(PROMPTS, 1, progress=False)  # a trainer with state of its own, that must survive
    before = snapshot(t)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as info:
        t.load_checkpoint(folder)
    assert words in str(info.value)
    assert_unchanged(t, before)


def test_another_config_is_refused_with_the_difference(saved):
    with pytest.raises(CheckpointError, match=r"'clip_eps': \(0.2, 0.1\)"):
        tiny_trainer(clip_eps=0.1).load_checkpoint(saved)


def test_loading_restores_the_trainer_exactly_and_leaves_the_global_rngs_alone(saved):
    t = tiny_trainer()
    torch.manual_seed(123), random.seed(123)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    t.load_checkpoint(saved)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert t.step_count == 1 and t._prompt_count == len(PROMPTS)
    for k, v in load_file(str(saved / "policy.safetensors")).items():
        assert torch.equal(t.unwrapped.state_dict()[k], v)
    saved_rng = load_file(str(saved / "rng.safetensors"))
    assert torch.equal(t.order_rng.get_state(), saved_rng["order"])
    assert torch.equal(t.sample_rng.get_state(), saved_rng["sample.0"])


def test_six_updates_straight_equal_three_then_a_resume_of_three(tmp_path):
    straight = tiny_trainer()
    want = straight.train(PROMPTS, 6, progress=False)
    first = tiny_trainer()
    got = first.train(PROMPTS, 3, progress=False)
    first.save_checkpoint(tmp_path / "ckpt")
    second = tiny_trainer(seed=0)
    second.load_checkpoint(tmp_path / "ckpt")
    got += second.train(PROMPTS, 3, progress=False)
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if not k.startswith(("time/", "throughput/"))} == \
            pytest.approx({k: v for k, v in w.items() if not k.startswith(("time/", "throughput/"))}, nan_ok=True)
    for k, v in straight.unwrapped.state_dict().items():
        assert torch.equal(second.unwrapped.state_dict()[k], v), k


def test_a_resumed_trainer_refuses_another_prompt_list(saved):
    t = tiny_trainer()
    t.load_checkpoint(saved)
    with pytest.raises(ValueError, match="same prompt list"):
        t.next_prompts(PROMPTS + ["one more"])


def test_recover_checkpoint_finishes_an_interrupted_swap(copy_of):
    folder = copy_of()
    old = folder.with_name("checkpoint.old")
    folder.rename(old)  # a crash between the two renames
    (folder.parent / "checkpoint.tmp-abc").mkdir()
    notes = recover_checkpoint(folder)
    assert folder.is_dir() and not old.exists() and not (folder.parent / "checkpoint.tmp-abc").exists()
    assert any("recovered" in n for n in notes) and any("unfinished" in n for n in notes)
    old.mkdir()  # a crash after both renames: the .old is stale
    recover_checkpoint(folder)
    assert folder.is_dir() and not old.exists()
    tiny_trainer().load_checkpoint(folder)
