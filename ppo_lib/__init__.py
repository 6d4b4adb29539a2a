r"""ppo_lib: PPO for language models, written alongside the book "RL for language models".

One module per concept (chapter where it is derived):

* math, torch only:
  ``masking``         masked sum / mean / var / whiten                       (04)
  ``advantages``      TD errors, discounted returns, GAE                     (03, 04)
  ``losses``          PPO-Clip and PPO-Penalty surrogates, value loss, entropy (05)
  ``kl``              KL estimators, reward shaping, KL controllers          (05, 06)
  ``policy_gradient`` registered advantage estimators and policy losses      (02, 04, 05, 09)
  ``toy_lm``, ``toys`` enumerable toys whose answers are known exactly      (02–05)
* models and data:
  ``models``          offline and Hub language models, value head, reference (00, 03, 06)
  ``rewards``         reward functions ``f(prompts, responses) -> scores``   (00, 06)
  ``rollout``         sampling, the padding contract, log-probs and values   (01, 06)
* the loop:
  ``registry``        algorithms as (estimator, loss, critic?, samples/prompt) (06, 09)
  ``trainer``         ``PPOConfig`` and ``PPOTrainer``: ``step()`` reads as numbered steps (06)
  ``checkpoint``      all-or-nothing checkpoints, no code on load            (06)
  ``cli_train``       ``python -m ppo_lib train``                            (06)
  ``schedules``, ``memory``  learning-rate schedules, predicted memory       (07)
* tools: ``plotting/`` (every figure), ``exercises/`` (the self-checks), ``classroom/``
  (student versions and grading), ``bench/`` (against TRL); one command line, ``python -m ppo_lib``.

Every equation the library implements, and where:

=========================================================  ==========================================
equation                                                   function
=========================================================  ==========================================
(1.2) :math:`\log\pi(y|x) = \sum_t \log\pi(y_t|x, y_{<t})`    ``rollout.token_logprobs``, ``rollout.forward_response``
(2.2) :math:`J(\theta)` exactly on the toy LM                ``toy_lm.toy_objective``, ``toy_lm.exact_gradient``
(2.7) the REINFORCE estimate, baselines (2.10)              ``toy_lm.reinforce_gradient``
(2.5) :math:`\Psi_t = G_t - b`                               ``policy_gradient.reinforce_advantages`` ("reinforce")
(3.1) reward-to-go :math:`G_t`                               ``advantages.discounted_returns``
(3.6) TD error :math:`\delta_t`                              ``advantages.td_errors``
(4.5) GAE, (4.6) its backward recursion                     ``advantages.gae``, ``advantages.gae_reference``,
                                                           ``policy_gradient.gae_advantages`` ("gae")
RLOO, GRPO, Dr. GRPO group advantages (chapter 09)         ``policy_gradient.rloo_advantages``, ``grpo_advantages``,
                                                           ``dr_grpo_advantages`` ("rloo", "grpo", "dr_grpo")
GRPO loss (clip + β·k3, 1/|o_i|), Dr. GRPO loss (Σ_t / T)   ``policy_gradient.grpo_loss``, ``dr_grpo_loss``
(5.7) PPO-Clip surrogate                                    ``losses.ppo_clip_loss`` ("ppo_clip")
(5.4) :math:`L^{CPI}` without a clip                         ``policy_gradient.vanilla_pg_loss`` ("vanilla_pg")
(5.10) clipped value loss                                   ``losses.value_loss``
(5.11) PPO-Penalty, (5.13) its adaptive β                   ``losses.ppo_penalty_loss``, ``kl.adaptive_penalty_coef``
(5.12) per-token KL estimators k1, k2, k3                   ``kl.kl_estimate``
(5.14) RLHF's adaptive KL controller                        ``kl.AdaptiveKLController``
(6.2) per-token reward: score − β·KL                        ``kl.shape_rewards``
=========================================================  ==========================================

The math modules import only torch; import the others explicitly.
"""

__version__ = "0.1.0"
