"""ppo_lib: PPO for language models, written alongside the book "RL for language models".

One module per concept (chapter where it is derived):

* ``masking``    masked sum / mean / var / whiten                          (04)
* ``advantages`` TD errors, discounted returns, GAE                        (03, 04)
* ``losses``     PPO clipped surrogate, value loss, entropy                (05)
* ``kl``         KL estimators, reward shaping, KL controllers             (05, 06)
* ``models``     offline and Hub language models, value head, reference    (00, 03, 06)
* ``rewards``    reward functions ``f(prompts, responses) -> scores``      (00, 06)
* ``rollout``    sampling, the padding contract, log-probs and values      (01, 06)
* ``trainer``    ``PPOConfig`` and ``PPOTrainer``                          (06)
* ``plotting``   every figure of the book                                  (all)

The math modules import only torch; import the others explicitly.
"""

__version__ = "0.1.0"
