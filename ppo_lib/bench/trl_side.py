"""The TRL side of ``python -m ppo_lib bench``: TRL 1.12.0's PPO on the benchmark workload.

Run as a file with the python of a separate virtual environment that has ``trl==1.12.0``
(``python -m ppo_lib bench`` creates it); it never imports ``ppo_lib``, and ``ppo_lib``
imports it only in its tests, which never call :func:`main`. TRL removed its PPOTrainer in
release 1.13; 1.12.0 is the last one that has it, at ``trl.experimental.ppo``.

    .venv-trl/bin/python ppo_lib/bench/trl_side.py --workload workload.json \\
        --model-dir MODEL_DIR --prompts prompts.json --out trl.json

Every setting comes from the workload file (``Workload.to_json``, written by the harness):
:func:`ppo_config_kwargs` is ``trl_config_kwargs(workload)`` of ``workload.py`` plus the
harness's own arguments (output folder, logging), and the rest (threads, pad token, device)
is read from the same workload. ``workload.py`` sits beside this file and needs only the
standard library, so run as a file this imports it directly. Two pieces are needed because
TRL's PPO only accepts ``nn.Module``\\ s shaped like sequence classifiers:

* the **value model** is ``AutoModelForSequenceClassification(num_labels=1)`` of the same
  checkpoint: a second backbone plus a linear ``score`` head (TRL's design, and what its
  example scripts do);
* the **reward model** is :class:`VaderRewardModel`: its ``backbone`` decodes the response
  (the tokens after the prompt, padding dropped) and puts its VADER compound score into a
  one-dimensional "hidden state" at every position; its ``score`` head is the identity, so
  TRL's ``get_reward`` reads the VADER score at the last token.

Per-phase times come from wrapping the functions that ``PPOTrainer.train`` calls through
its module globals (``batch_generation``, ``forward``, ``get_reward``) and the
``accelerator.backward`` / ``optimizer.step`` / ``optimizer.zero_grad`` of the trainer;
update boundaries come from a ``TrainerCallback.on_step_end``. Nothing inside TRL's loop
is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

if __package__:  # imported as ppo_lib.bench.trl_side (the tests)
    from .workload import TRL_VERSION, Workload, trl_config_kwargs
else:  # run as a file: Python put this folder first on sys.path, and workload.py needs no ppo_lib
    from workload import TRL_VERSION, Workload, trl_config_kwargs

# The harness's own arguments of TRL's PPOConfig: where it writes and what it logs. None is
# a setting of the workload, and none may override one (tests/test_bench.py checks).
HARNESS_ARGS = dict(report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
                    num_sample_generations=0)


def ppo_config_kwargs(workload: Workload, output_dir: str) -> dict:
    """Every argument of TRL's ``PPOConfig``: the workload's (:func:`trl_config_kwargs`) and the harness's."""
    return {**trl_config_kwargs(workload), **HARNESS_ARGS, "output_dir": output_dir}


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MiB; ``ru_maxrss`` where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _VaderBackbone(nn.Module):
    """Decodes the response part of each row and returns its VADER score as a (B, L, 1) "hidden state"."""

    def __init__(self, tokenizer):
        super().__init__()
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.tokenizer = tokenizer
        self.analyzer = SentimentIntensityAnalyzer()
        self.context_length: int | None = None  # set before each call (TRL passes it to get_reward)

    def forward(self, input_ids, attention_mask, position_ids=None, return_dict=True, output_hidden_states=True,
                use_cache=False):
        P = self.context_length
        texts = [self.tokenizer.decode(ids[P:][m[P:].bool()], skip_special_tokens=True)
                 for ids, m in zip(input_ids, attention_mask)]
        s = torch.tensor([self.analyzer.polarity_scores(t)["compound"] for t in texts], dtype=torch.float32,
                         device=input_ids.device)
        hidden = s[:, None, None].expand(input_ids.shape[0], input_ids.shape[1], 1)  # (B, L, 1)
        return SimpleNamespace(hidden_states=(hidden,))


class VaderRewardModel(nn.Module):
    """A sequence-classifier-shaped reward: ``backbone`` (``base_model_prefix``) + ``score`` head."""

    base_model_prefix = "backbone"

    def __init__(self, tokenizer):
        super().__init__()
        self.backbone = _VaderBackbone(tokenizer)
        self.score = nn.Identity()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", required=True, help="JSON file of the Workload (Workload.to_json)")
    p.add_argument("--model-dir", required=True, help="folder of the model's safetensors (ppo_lib's cache)")
    p.add_argument("--prompts", required=True, help="JSON list of the workload's prompt strings")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    w = Workload.from_json(Path(a.workload).read_text())
    load_before = os.getloadavg()
    torch.set_num_threads(w.torch_threads)
    gpu = w.device == "cuda"  # then TRL's bf16=True (trl_config_kwargs)

    import accelerate
    import transformers
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    if trl.__version__ != TRL_VERSION:
        raise RuntimeError(f"the benchmark compares against TRL {TRL_VERSION}, but this python has trl "
                           f"{trl.__version__}: pass --trl-python of a python with trl=={TRL_VERSION}, or delete "
                           "the --trl-venv folder so that it is made again.")
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    tok.pad_token = w.pad_token  # distinct from EOS, as on the ppo_lib side
    tok.padding_side = "left"
    if tok.pad_token_id is None or tok.pad_token_id in (tok.eos_token_id, tok.unk_token_id):
        raise ValueError(f"Workload.pad_token={w.pad_token!r} is not a token of {a.model_dir} distinct from its EOS "
                         f"{tok.eos_token!r}: set it to the pad token that ppo_lib's loader gives this model.")
    policy = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(a.model_dir, num_labels=1, dtype=torch.float32)
    for m in (policy, value_model):
        m.config.pad_token_id = tok.pad_token_id
    policy.generation_config.pad_token_id = tok.pad_token_id
    reward_model = VaderRewardModel(tok)
    prompts = json.loads(Path(a.prompts).read_text())
    if len(prompts) != w.n_prompts:
        raise ValueError(f"{a.prompts} holds {len(prompts)} prompts, the workload {w.n_prompts}: "
                         "write it with ppo_lib.bench.bench_prompts(workload).")
    dataset = Dataset.from_dict({"input_ids": [tok(x)["input_ids"] for x in prompts]})
    config = PPOConfig(**ppo_config_kwargs(w, tempfile.mkdtemp(prefix="trl_ppo_bench-")))
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=None, reward_model=reward_model,
                         train_dataset=dataset, value_model=value_model, eval_dataset=None)
    # TRL derives its batch sizes from several arguments: check they came out as the workload's
    if (config.batch_size, config.local_mini_batch_size) != (w.batch_size, w.batch_size // w.num_minibatches):
        raise RuntimeError(f"TRL would train on batches of {config.batch_size} in minibatches of "
                           f"{config.local_mini_batch_size}, not the workload's {w.batch_size} in {w.num_minibatches}: "
                           "fix trl_config_kwargs in ppo_lib/bench/workload.py.")
    load_s = time.perf_counter() - t0

    # ---- instrumentation: accumulate seconds per phase for the current update
    current: dict[str, float] = defaultdict(float)
    checks: dict[str, list] = defaultdict(list)

    def sync():  # GPU work is asynchronous: wait for it so that each phase gets its own time
        if gpu:
            torch.cuda.synchronize()

    def timed(name_of, fn):
        def wrapper(*args, **kwargs):
            sync()
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                current[name_of(*args, **kwargs) if callable(name_of) else name_of] += time.perf_counter() - t
        return wrapper

    orig_batch_generation = ppo_module.batch_generation

    def batch_generation(model, queries, *args, **kwargs):
        sync()
        t = time.perf_counter()
        query_responses, logits = orig_batch_generation(model, queries, *args, **kwargs)
        sync()
        current["generate"] += time.perf_counter() - t
        response = query_responses[:, queries.shape[1]:]
        checks["response_length"].append(response.shape[1])
        checks["pad_in_responses"].append(int((response == tok.pad_token_id).sum()))
        checks["eos_in_responses"].append(int((response == tok.eos_token_id).sum()))
        return query_responses, logits

    ppo_module.batch_generation = batch_generation
    ppo_module.forward = timed(lambda *args, **kw: "train_forward" if torch.is_grad_enabled() else "ref_forward",
                               ppo_module.forward)
    orig_get_reward = ppo_module.get_reward

    def get_reward(model, query_responses, pad_token_id, context_length):
        if model is reward_model:
            reward_model.backbone.context_length = context_length
        name = "score" if model is reward_model else "old_forward"
        return timed(name, orig_get_reward)(model, query_responses, pad_token_id, context_length)

    ppo_module.get_reward = get_reward
    trainer.accelerator.backward = timed("backward", trainer.accelerator.backward)
    trainer.optimizer.step = timed("optimizer", trainer.optimizer.step)
    trainer.optimizer.zero_grad = timed("optimizer", trainer.optimizer.zero_grad)

    per_update: list[dict] = []
    scores: list[float] = []
    marks = {}

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            current.clear()
            marks["t"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "objective/scores" in logs:
                scores.append(logs["objective/scores"])

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            now = time.perf_counter()
            per_update.append({**current, "total": now - marks["t"]})
            current.clear()
            marks["t"] = now

    trainer.add_callback(Timing())
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    if sorted(set(checks["response_length"])) != [w.response_length]:
        raise RuntimeError(f"TRL sampled responses of {sorted(set(checks['response_length']))} tokens, not the "
                           f"workload's {w.response_length}: the two sides did not run the same workload.")
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    result = {
        "per_update": per_update, "peak_rss_mb": peak_rss_mb(), "load_s": load_s, "score_mean": scores,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / (1024 * 1024) if gpu else None,
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "checks": {k: sorted(set(v)) if k == "response_length" else sum(v) for k, v in checks.items()},
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                     "accelerate": accelerate.__version__, "python": sys.version.split()[0]},
        "optimizer": f"{type(inner).__module__}.{type(inner).__name__}(fused={inner.defaults.get('fused')}) "
                     f"via optim={config.optim}, no grad clip",
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "reference": "frozen copy (create_reference_model)",
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
