"""Run by ``tests/test_data_parallel.py`` under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Each process trains three tiny-gpt2 trainers in one process group: ``straight`` for 4 updates,
``first`` for 2 updates then a checkpoint, and ``resumed``, a fresh trainer that loads that
checkpoint and does 2 more. It writes its own report, ``rank<r>.json``: the prompts it drew,
its statistics, a digest of its final weights per trainer, and how many files it wrote into
checkpoints.
"""

import hashlib
import json
import string
import sys
from pathlib import Path

import safetensors.torch
import torch

from ppo_lib.trainer import PPOConfig, build_trainer
from ppo_lib.rewards import target_token_fraction

PROMPTS = [f"prompt {i}: once" for i in range(16)]
CONFIG = PPOConfig(batch_size=4, max_new_tokens=8, temperature=1.0, ppo_epochs=1, num_minibatches=2,
                   learning_rate=3e-3, kl_coef=0.01, adaptive_kl=True, kl_horizon=100.0, seed=0)
writes = 0


def counting(fn):
    def wrapped(*args, **kwargs):
        global writes
        writes += 1
        return fn(*args, **kwargs)
    return wrapped


safetensors.torch.save_file = counting(safetensors.torch.save_file)


def digest(trainer) -> str:
    h = hashlib.sha256()
    for name, t in sorted(trainer.unwrapped.state_dict().items()):
        h.update(name.encode()), h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run(trainer, n: int, log: dict) -> None:
    for _ in range(n):
        prompts = trainer.next_prompts(PROMPTS)
        stats = trainer.step(prompts)
        log["prompts"].append(prompts)
        log["stats"].append({k: v for k, v in stats.items() if not k.startswith(("time/", "throughput/"))})


def main(out: Path) -> None:
    reward = target_token_fraction(string.ascii_lowercase)
    report = {}
    straight = build_trainer("tiny-gpt2", reward, CONFIG)
    rank = straight.accelerator.process_index
    report["straight"] = log = {"prompts": [], "stats": []}
    run(straight, 4, log)
    log["digest"] = digest(straight)

    first = build_trainer("tiny-gpt2", reward, CONFIG)
    report["first"] = log = {"prompts": [], "stats": []}
    run(first, 2, log)
    first.save_checkpoint(out / "checkpoint")
    report["writes"] = writes

    resumed = build_trainer("tiny-gpt2", reward, CONFIG)
    resumed.load_checkpoint(out / "checkpoint")
    report["resumed"] = log = {"prompts": [], "stats": []}
    run(resumed, 2, log)
    log["digest"] = digest(resumed)
    report["world_size"] = straight.accelerator.num_processes
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
