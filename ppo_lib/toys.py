r"""Small environments whose answers are known exactly (chapters 03, 04, 05).

* :func:`random_walk_episodes`, :func:`random_walk_true_values`, :func:`td0_values`,
  :func:`mc_values`, :func:`random_walk_rms_curves`: the 5-state random walk of
  Sutton & Barto (2018), Example 6.2, with TD(0) and constant-α Monte-Carlo prediction.
* :class:`ChainMDP`: a finite-horizon MDP small enough to enumerate every trajectory, so the
  true :math:`V^\pi`, :math:`Q^\pi`, :math:`A^\pi` and the exact mean and variance of any
  advantage estimator are computed, not sampled (chapter 04, bias and variance of GAE).
* :class:`ContextualBandit`: a tabular softmax policy over a few contexts and actions, with
  exact expected return and exact KL, for the multi-epoch PPO experiments of chapter 05.

Everything is deterministic given its seed and runs in well under a second on a CPU.

References:
    Sutton & Barto (2018), *Reinforcement Learning: An Introduction*, 2nd ed., Example 6.2.
    Schulman et al. (2015), arXiv:1506.02438.  Schulman et al. (2017), arXiv:1707.06347.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "RW_STATES",
    "random_walk_true_values",
    "random_walk_episodes",
    "td0_values",
    "mc_values",
    "random_walk_rms_curves",
    "ChainMDP",
    "ContextualBandit",
    "bandit_one_batch",
    "bandit_many_batches",
    "bandit_one_batch_per_seed",
    "bandit_many_batches_per_seed",
    "adaptive_kl_simulation",
]

# ----------------------------------------------------------------------------- random walk
RW_STATES = "ABCDE"  # non-terminal states 1..5; 0 and 6 are the two terminals


def random_walk_true_values() -> np.ndarray:
    """True values of states A..E (γ = 1, reward +1 on the right exit): ``[1/6, ..., 5/6]``."""
    return np.arange(1, 6) / 6.0


def random_walk_episodes(n_episodes: int, seed: int = 0) -> list[list[tuple[int, float, int]]]:
    """Sample episodes of the random walk, each a list of transitions ``(s, r, s_next)``.

    States are 0..6 (0 and 6 terminal), every episode starts in C = 3, each step goes left or
    right with probability 1/2, and the reward is 1 on the step into state 6, else 0.
    """
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n_episodes):
        s, ep = 3, []
        while s not in (0, 6):
            s_next = s + (1 if rng.random() < 0.5 else -1)
            ep.append((s, 1.0 if s_next == 6 else 0.0, s_next))
            s = s_next
        episodes.append(ep)
    return episodes


def td0_values(episodes, alpha: float, v0: float = 0.5, gamma: float = 1.0) -> np.ndarray:
    r"""TD(0) prediction, Eq. (3.9) of chapter 03: :math:`V(s) \leftarrow V(s) + \alpha\,\delta_t`.

    Returns ``(len(episodes) + 1, 5)``: the estimates of A..E before any episode and after each.
    """
    V = np.full(7, v0)
    V[0] = V[6] = 0.0  # terminal states have value 0
    history = [V[1:6].copy()]
    for ep in episodes:
        for s, r, s_next in ep:
            delta = r + gamma * V[s_next] - V[s]  # Eq. (3.6)
            V[s] += alpha * delta
        history.append(V[1:6].copy())
    return np.array(history)


def mc_values(episodes, alpha: float, v0: float = 0.5, gamma: float = 1.0) -> np.ndarray:
    r"""Constant-α every-visit Monte-Carlo, Eq. (3.8) of chapter 03: :math:`V(s_t) \leftarrow V(s_t) + \alpha (G_t - V(s_t))`.

    Updates happen at the end of each episode. Returns ``(len(episodes) + 1, 5)``.
    """
    V = np.full(7, v0)
    V[0] = V[6] = 0.0
    history = [V[1:6].copy()]
    for ep in episodes:
        G = 0.0
        for s, r, _ in reversed(ep):  # G_t = r_t + γ G_{t+1}, Eq. (3.2)
            G = r + gamma * G
            V[s] += alpha * (G - V[s])
        history.append(V[1:6].copy())
    return np.array(history)


def random_walk_rms_curves(
    td_alphas=(0.05, 0.1, 0.15), mc_alphas=(0.01, 0.02, 0.03, 0.04), n_runs: int = 100,
    n_episodes: int = 100, seed: int = 0,
) -> dict[str, np.ndarray]:
    """RMS error (over the 5 states) against episodes, averaged over ``n_runs`` runs.

    Each run draws its own episodes; every method and step size sees the same episodes
    (common random numbers, so differences between curves are not sampling noise).

    Returns:
        ``{"TD α=0.1": (n_episodes + 1,), "MC α=0.02": ..., ...}``.
    """
    true = random_walk_true_values()
    curves = {f"TD α={a}": np.zeros(n_episodes + 1) for a in td_alphas}
    curves.update({f"MC α={a}": np.zeros(n_episodes + 1) for a in mc_alphas})
    for run in range(n_runs):
        eps = random_walk_episodes(n_episodes, seed=seed * 100_003 + run)
        for a in td_alphas:
            curves[f"TD α={a}"] += np.sqrt(((td0_values(eps, a) - true) ** 2).mean(1))
        for a in mc_alphas:
            curves[f"MC α={a}"] += np.sqrt(((mc_values(eps, a) - true) ** 2).mean(1))
    return {k: v / n_runs for k, v in curves.items()}


# ----------------------------------------------------------------------------- chain MDP
@dataclass
class ChainMDP:
    r"""A finite-horizon MDP with ``n_states`` states, ``n_actions`` actions and ``horizon`` steps.

    Transitions ``P[s, a, s']`` and rewards ``R[s, a, s']`` are drawn once from ``seed``;
    the policy ``pi[t, s, a]`` is fixed (time-dependent, also from ``seed``). Because the
    episode ends after ``horizon`` steps, values depend on the time step: ``V[t, s]``, with
    ``V[horizon, :] = 0``. The critic used by the estimators is
    :math:`\hat V = V^\pi + \text{critic\_error}\cdot e`, where ``e[t, s]`` is a fixed
    standard-normal pattern (0 at ``t = horizon``).
    """

    n_states: int = 3
    n_actions: int = 2
    horizon: int = 7
    seed: int = 0
    P: np.ndarray = field(init=False, repr=False)
    R: np.ndarray = field(init=False, repr=False)
    pi: np.ndarray = field(init=False, repr=False)
    error_pattern: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        S, A, H = self.n_states, self.n_actions, self.horizon
        self.P = rng.dirichlet(np.ones(S), size=(S, A))  # (S, A, S)
        self.R = rng.normal(0.0, 1.0, size=(S, A, S))  # reward depends on where you land
        self.pi = rng.dirichlet(2 * np.ones(A), size=(H, S))  # (H, S, A)
        self.error_pattern = np.concatenate([rng.normal(size=(H, S)), np.zeros((1, S))])

    def values(self, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        r"""Exact :math:`V^\pi` ``(H+1, S)`` and :math:`Q^\pi` ``(H, S, A)`` by backward
        induction on the Bellman equations (3.4): ``Q[t,s,a] = Σ_s' P (R + γ V[t+1, s'])``."""
        H, S = self.horizon, self.n_states
        V = np.zeros((H + 1, S))
        Q = np.zeros((H, S, self.n_actions))
        for t in reversed(range(H)):
            Q[t] = (self.P * (self.R + gamma * V[t + 1][None, None, :])).sum(-1)
            V[t] = (self.pi[t] * Q[t]).sum(-1)
        return V, Q

    def advantages(self, gamma: float) -> np.ndarray:
        r"""Exact :math:`A^\pi = Q^\pi - V^\pi`, ``(H, S, A)``, Eq. (3.5) of chapter 03."""
        V, Q = self.values(gamma)
        return Q - V[:-1, :, None]

    def critic(self, gamma: float, critic_error: float) -> np.ndarray:
        """The imperfect critic :math:`\\hat V` ``(H+1, S)`` the estimators use."""
        V, _ = self.values(gamma)
        return V + critic_error * self.error_pattern

    def enumerate(self, s0: int, a0: int) -> dict[str, np.ndarray]:
        """Every trajectory that starts with ``(s0, a0)`` at t = 0, with its probability.

        Returns a dict with ``prob (N,)``, ``states (N, H+1)``, ``rewards (N, H)``; N is
        ``S * (A*S)**(H-1)`` (139968 for the defaults).
        """
        H = self.horizon
        states = np.array([[s0]])
        prob = np.array([1.0])
        rewards = np.zeros((1, 0))
        actions = np.array([a0])
        for t in range(H):
            s = states[:, -1]
            if t > 0:  # branch over the action
                pa = self.pi[t, s]  # (N, A)
                N, A = pa.shape
                actions = np.tile(np.arange(A), N)
                prob = (prob[:, None] * pa).reshape(-1)
                states, rewards = np.repeat(states, A, 0), np.repeat(rewards, A, 0)
                s = states[:, -1]
            ps = self.P[s, actions]  # (N, S): branch over the next state
            N, S = ps.shape
            nxt = np.tile(np.arange(S), N)
            r = self.R[np.repeat(s, S), np.repeat(actions, S), nxt]
            prob = (prob[:, None] * ps).reshape(-1)
            states = np.concatenate([np.repeat(states, S, 0), nxt[:, None]], 1)
            rewards = np.concatenate([np.repeat(rewards, S, 0), r[:, None]], 1)
        return {"prob": prob, "states": states, "rewards": rewards}

    def gae_moments(
        self, lams, gamma: float, critic_error: float, s0: int = 0, a0: int = 0
    ) -> dict[str, np.ndarray]:
        r"""Exact mean, bias and variance of the GAE estimate at t = 0 for each λ in ``lams``.

        The estimate is :math:`\hat A_0 = \sum_l (\gamma\lambda)^l \delta_l` with the critic
        :math:`\hat V`, Eq. (4.5) of chapter 04. Its bias is measured against
        :math:`Q^\pi(s_0,a_0) - \hat V(s_0)`, i.e. the bias of the λ-return
        :math:`\hat A_0 + \hat V(s_0)` as an estimate of :math:`Q^\pi(s_0, a_0)`; it differs
        from the bias against :math:`A^\pi` by :math:`V^\pi(s_0) - \hat V(s_0)`, a constant
        that does not depend on the action and so adds nothing to the policy gradient.

        Returns:
            dict with ``lams (K,)``, ``mean``, ``bias2``, ``var``, ``mse`` (all ``(K,)``),
            ``samples (N, K)`` (the estimate on every trajectory), ``prob (N,)``,
            ``target`` (a float) and ``true_advantage`` (:math:`A^\pi(s_0, a_0)`).
        """
        lams = np.asarray(lams, dtype=float)
        traj = self.enumerate(s0, a0)
        Vhat = self.critic(gamma, critic_error)  # (H+1, S)
        H = self.horizon
        t = np.arange(H + 1)
        v = Vhat[t[None, :], traj["states"]]  # (N, H+1): V̂_t(s_t), 0 at t = H
        deltas = traj["rewards"] + gamma * v[:, 1:] - v[:, :-1]  # (N, H), Eq. (3.6)
        weights = (gamma * lams[None, :]) ** np.arange(H)[:, None]  # (H, K); 0**0 = 1
        samples = deltas @ weights  # (N, K)
        p = traj["prob"]
        mean = p @ samples
        var = p @ (samples - mean) ** 2
        V, Q = self.values(gamma)
        target = Q[0, s0, a0] - Vhat[0, s0]
        bias2 = (mean - target) ** 2
        return {"lams": lams, "mean": mean, "bias2": bias2, "var": var, "mse": bias2 + var,
                "samples": samples, "prob": p, "target": float(target),
                "true_advantage": float(Q[0, s0, a0] - V[0, s0])}


# ----------------------------------------------------------------------------- bandit
@dataclass
class ContextualBandit:
    r"""``n_contexts`` equally likely contexts ("prompts"), ``n_actions`` actions ("tokens").

    The mean reward ``mean_reward[c, a]`` is drawn once from N(0, 1); an observed reward adds
    N(0, ``noise``²). The policy is a table of logits ``(..., C, K)``; any leading batch
    dimensions hold independent copies (e.g. one per seed).
    """

    n_contexts: int = 4
    n_actions: int = 8
    noise: float = 1.0
    seed: int = 0
    mean_reward: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        g = torch.Generator().manual_seed(self.seed)
        self.mean_reward = torch.randn(self.n_contexts, self.n_actions, generator=g, dtype=torch.float64)

    def initial_logits(self, scale: float = 0.5, seed: int = 0) -> torch.Tensor:
        """A non-uniform starting policy, ``(C, K)`` float64."""
        g = torch.Generator().manual_seed(10_000 + seed)
        return scale * torch.randn(self.n_contexts, self.n_actions, generator=g, dtype=torch.float64)

    def expected_return(self, logits: torch.Tensor) -> torch.Tensor:
        r"""Exact :math:`J = \mathbb{E}_c \sum_a \pi(a|c)\, \bar r(c, a)`, shape ``logits.shape[:-2]``."""
        return (torch.softmax(logits, -1) * self.mean_reward).sum(-1).mean(-1)

    @staticmethod
    def kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
        r"""Exact :math:`\mathbb{E}_c\,\mathrm{KL}(p(\cdot|c)\,\|\,q(\cdot|c))`, shape ``logits.shape[:-2]``."""
        logp, logq = torch.log_softmax(logits_p, -1), torch.log_softmax(logits_q, -1)
        return (logp.exp() * (logp - logq)).sum(-1).mean(-1)

    def sample(self, logits: torch.Tensor, batch_size: int, generator: torch.Generator):
        """Draw ``batch_size`` (context, action, reward) triples per copy of the policy.

        Args:
            logits: ``(S, C, K)``, S independent policies.

        Returns:
            ``contexts, actions`` (long) and ``rewards`` (float64), each ``(S, N)``.
        """
        S = logits.shape[0]
        contexts = torch.randint(self.n_contexts, (S, batch_size), generator=generator)
        probs = torch.softmax(logits, -1)[torch.arange(S)[:, None], contexts]  # (S, N, K)
        actions = torch.multinomial(probs.reshape(-1, self.n_actions), 1, generator=generator).reshape(S, batch_size)
        noise = self.noise * torch.randn(S, batch_size, generator=generator, dtype=torch.float64)
        rewards = self.mean_reward[contexts, actions] + noise
        return contexts, actions, rewards

    @staticmethod
    def logprobs(logits: torch.Tensor, contexts: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``log π(a|c)`` of the sampled pairs: ``(S, C, K), (S, N), (S, N) -> (S, N)``."""
        logp = torch.log_softmax(logits, -1)
        S = logits.shape[0]
        return logp[torch.arange(S)[:, None], contexts, actions]


# ----------------------------------------------------------------------------- experiments
class _one_thread:
    """Run tiny tensor code on one CPU thread (faster than thread start-up for 8×4 tensors)."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def _surrogate_loss(logprobs, old_logprobs, advantages, clip_eps):
    """PPO-Clip (ppo_lib.losses.ppo_clip_loss) or, with ``clip_eps=None``, the unclipped L^CPI."""
    from .losses import ppo_clip_loss

    if clip_eps is None:
        return -(torch.exp(logprobs - old_logprobs) * advantages).mean()
    mask = torch.ones_like(advantages, dtype=torch.bool)
    return ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip_eps)[0]


def bandit_one_batch_per_seed(clip_eps: float | None, epochs: int = 100, batch_size: int = 32, lr: float = 0.05,
                              n_seeds: int = 50, noise: float = 2.0, seed: int = 0) -> dict[str, np.ndarray]:
    r"""Optimise one batch for many epochs with PPO-Clip (``clip_eps``) or the unclipped L^CPI (None).

    ``n_seeds`` independent batches (same bandit, same start) are run in parallel, each with
    full-batch Adam steps; advantages are :math:`r - V^{\pi_{old}}(c)` with the exact value.

    Returns ``kl`` exact :math:`\mathrm{KL}(\pi_{old}\|\pi_\theta)`, ``gain`` the true
    :math:`J(\theta) - J(\theta_{old})`, ``promised`` the batch's importance-sampling estimate of
    that gain, :math:`\mathrm{mean}(\rho A) - \mathrm{mean}(A)`, ``ratio_max`` (the largest ratio :math:`\pi_\theta/\pi_{old}` among the
    batch's samples) and ``clipfrac`` (the fraction of samples whose clipped term is active, with
    :math:`\epsilon` = ``clip_eps``, or 0.2 for the unclipped run), each ``(epochs + 1, n_seeds)``.
    """
    env = ContextualBandit(noise=noise)
    with _one_thread():
        g = torch.Generator().manual_seed(seed)
        logits0 = env.initial_logits().expand(n_seeds, -1, -1).clone()
        c, a, r = env.sample(logits0, batch_size, g)
        V = (torch.softmax(logits0, -1) * env.mean_reward).sum(-1)  # (S, C)
        A = r - V[torch.arange(n_seeds)[:, None], c]  # (S, N)
        old = env.logprobs(logits0, c, a)
        J0 = env.expected_return(logits0)
        theta = logits0.clone().requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=lr)
        out = {"kl": [], "gain": [], "promised": [], "ratio_max": [], "clipfrac": []}
        for _ in range(epochs + 1):
            lp = env.logprobs(theta, c, a)
            with torch.no_grad():
                out["kl"].append(env.kl(logits0, theta).numpy())
                out["gain"].append((env.expected_return(theta) - J0).numpy())
                out["promised"].append((torch.exp(lp - old) * A - A).mean(-1).numpy())
                ratio = torch.exp(lp - old)  # (S, N)
                out["ratio_max"].append(ratio.max(-1).values.numpy())
                eps = 0.2 if clip_eps is None else clip_eps
                clipped = ((A > 0) & (ratio > 1 + eps)) | ((A < 0) & (ratio < 1 - eps))  # the clipped term is active
                out["clipfrac"].append(clipped.double().mean(-1).numpy())
            loss = _surrogate_loss(lp, old, A, clip_eps) * n_seeds  # seeds are independent: sum their losses
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: np.array(v) for k, v in out.items()}


def bandit_many_batches_per_seed(clip_eps: float | None, iterations: int = 30, epochs: int = 20, batch_size: int = 32,
                                 lr: float = 0.05, n_seeds: int = 50, noise: float = 2.0, seed: int = 1) -> dict:
    """The PPO loop on the bandit: ``iterations`` × (sample a fresh batch, ``epochs`` Adam steps on it).

    Returns ``return`` (exact expected return) and ``entropy`` (policy entropy, nats), each
    ``(iterations + 1, n_seeds)``, and ``best`` (the best achievable return).
    """
    env = ContextualBandit(noise=noise)
    with _one_thread():
        g = torch.Generator().manual_seed(seed)
        theta = env.initial_logits().expand(n_seeds, -1, -1).clone().requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=lr)
        rets, ents = [], []

        def record():
            p = torch.softmax(theta.detach(), -1)
            rets.append(env.expected_return(theta.detach()).numpy())
            ents.append(-(p * p.log()).sum(-1).mean(-1).numpy())

        record()
        for _ in range(iterations):
            logits0 = theta.detach().clone()
            c, a, r = env.sample(logits0, batch_size, g)
            V = (torch.softmax(logits0, -1) * env.mean_reward).sum(-1)
            A = r - V[torch.arange(n_seeds)[:, None], c]
            old = env.logprobs(logits0, c, a)
            for _ in range(epochs):
                loss = _surrogate_loss(env.logprobs(theta, c, a), old, A, clip_eps) * n_seeds
                opt.zero_grad()
                loss.backward()
                opt.step()
            record()
    return {"return": np.array(rets), "entropy": np.array(ents), "best": env.mean_reward.max(-1).values.mean().item()}


def bandit_one_batch(clip_eps: float | None, epochs: int = 100, batch_size: int = 32, lr: float = 0.05,
                     n_seeds: int = 50, noise: float = 2.0, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`bandit_one_batch_per_seed` averaged over the seeds: ``kl``, ``gain``, ``promised``,
    each ``(epochs + 1,)``."""
    run = bandit_one_batch_per_seed(clip_eps, epochs, batch_size, lr, n_seeds, noise, seed)
    return {k: run[k].mean(-1) for k in ("kl", "gain", "promised")}


def bandit_many_batches(clip_eps: float | None, iterations: int = 30, epochs: int = 20, batch_size: int = 32,
                        lr: float = 0.05, n_seeds: int = 50, noise: float = 2.0, seed: int = 1) -> dict[str, np.ndarray]:
    """:func:`bandit_many_batches_per_seed` averaged over the seeds: ``return`` and ``entropy``,
    each ``(iterations + 1,)``, and ``best``."""
    run = bandit_many_batches_per_seed(clip_eps, iterations, epochs, batch_size, lr, n_seeds, noise, seed)
    return {"return": run["return"].mean(-1), "entropy": run["entropy"].mean(-1), "best": run["best"]}


def adaptive_kl_simulation(kl_coef: float = 0.05, kl_target: float = 1.0, kl_horizon: float = 500.0,
                           iterations: int = 200, batch_size: int = 64, n_actions: int = 20, seed: int = 0):
    r"""RLHF's KL controller on a one-context bandit, with exact gradients.

    Each iteration takes 2 Adam steps on :math:`\mathbb{E}_\pi[r] - \beta\,\mathrm{KL}(\pi\|\pi_{ref})`
    (exact), measures the KL, and updates β with :class:`ppo_lib.kl.AdaptiveKLController`
    as if a batch of ``batch_size`` samples had been seen.

    Returns ``beta``, ``kl`` (each ``(iterations + 1,)``) and ``target``, the KL target.
    """
    from .kl import AdaptiveKLController

    g = torch.Generator().manual_seed(seed)
    reward = 2.0 * torch.randn(n_actions, generator=g, dtype=torch.float64)
    ref = torch.randn(n_actions, generator=g, dtype=torch.float64)
    ctl = AdaptiveKLController(kl_coef, kl_target=kl_target, kl_horizon=kl_horizon)
    with _one_thread():
        theta = ref.clone().requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=0.1)
        logref = torch.log_softmax(ref, -1)

        def kl_now():
            logp = torch.log_softmax(theta, -1)
            return (logp.exp() * (logp - logref)).sum()

        betas, kls = [ctl.kl_coef], [kl_now().item()]
        for _ in range(iterations):
            for _ in range(2):
                logp = torch.log_softmax(theta, -1)
                objective = (logp.exp() * reward).sum() - ctl.kl_coef * kl_now()
                opt.zero_grad()
                (-objective).backward()
                opt.step()
            kl = kl_now().item()
            ctl.update(kl, n_steps=batch_size)
            betas.append(ctl.kl_coef)
            kls.append(kl)
    return {"beta": np.array(betas), "kl": np.array(kls), "target": kl_target}
