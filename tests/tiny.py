"""What the trainer tests share: eight prompts and a seeded trainer on tiny-gpt2 with a
learnable reward (the fraction of lowercase letters, ≈ 0.1 for the random byte policy)."""

import string

from ppo_lib.rewards import target_token_fraction
from ppo_lib.trainer import PPOConfig, build_trainer

PROMPTS = ["hello there", "a", "the quick brown fox", "to be or not", "PPO!", "lorem ipsum dolor", "xy", "once upon"]


def tiny_trainer(**overrides):
    """A trainer on tiny-gpt2 (CPU, seconds per update); ``overrides`` are PPOConfig fields."""
    cfg = dict(batch_size=8, max_new_tokens=12, temperature=1.0, ppo_epochs=2, num_minibatches=2,
               learning_rate=3e-3, kl_coef=0.01, seed=0)
    cfg.update(overrides)
    return build_trainer("tiny-gpt2", target_token_fraction(string.ascii_lowercase), PPOConfig(**cfg))
