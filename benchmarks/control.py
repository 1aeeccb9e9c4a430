"""Imitation learning through the differentiable MPC layer, checked in Gymnasium.

The experiment of Amos et al. (2018, "Differentiable MPC for end-to-end planning and
control", section 5.2) on Gymnasium's ``Pendulum-v1``:

* **Expert**: :func:`implicitnet.control.mpc` on :class:`~implicitnet.control.Pendulum`
  with the true parameters (those of Gymnasium: gravity 10, mass 1, length 1, no
  damping; without Gymnasium's velocity clip, which makes the plan's objective
  non-smooth), horizon 20, torque limits of the environment, the smooth form of
  Gymnasium's cost (``2 (1 - cos theta) + 0.1 theta_dot^2 + 0.001 u^2`` as a quadratic
  in the observation). It drives the environment for a few episodes; every state it
  meets and the plan it makes there is a training pair.
* **Learned MPC**: the same controller with a wrong model: mass, length and damping
  drawn at random per seed (gravity known: from imitation alone only ``g / l`` and
  ``1 / (m l^2)`` are identifiable, so one of the three must be fixed). The parameters
  (log mass, log length, damping projected onto ``>= 0``) are learned with Adam by
  differentiating the
  imitation loss ``mean ||u_theta(x) - u_expert(x)||^2`` over whole plans through the
  layer (implicit gradient, GMRES on Hessian-vector products). Each training solve
  starts from the expert's plan (a warm start; the layer still solves its own problem).
* **Behaviour cloning**: a model-free baseline, an MLP ``obs -> 32 -> 32 -> u``
  (tanh, output squashed to the torque limits) trained on the same pairs (first action
  of each plan) with Adam, one per seed.

Every controller then runs episodes of Gymnasium's ``Pendulum-v1`` (200 steps, its own
reward) from the same held-out initial states. The MPC controllers replan at every
step, warm-started from their previous plan shifted by one step, with a fixed budget
(at most 5 Newton passes and one root iteration, gradient norm below 1e-3). All MPC
rows of a table step together in one batched solve (``batched_params=True``).

Reported per controller: the parameter error (mean over seeds of
``max_i |theta_i - theta*_i|`` over mass, length, damping), and the episode return
(mean and standard deviation over seeds x episodes; higher is better, 0 is the best
possible).

Run: ``python benchmarks/control.py [--seeds 3] [--train-steps 40] [--episodes 2]``
(default: a few minutes on two cores). Needs ``gymnasium`` (``pip install
'implicitnet[control]'``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time

import numpy as np

import implicitnet as inet
from implicitnet.control import Pendulum, QuadraticCost, mpc, shift_plan

# The planning model leaves out Gymnasium's velocity clip (|theta_dot| <= 8): it is
# rarely active for the true model, but a wrong model can plan through it, and the
# objective is not smooth there. Episodes run in Gymnasium, with its clip.
MODEL = Pendulum(clip_speed=False)
COST = QuadraticCost(features=MODEL.observe)
WEIGHTS = {
    "q": np.array([1.0, 1.0, 0.1]),
    "r": np.array([0.001]),
    "goal": np.array([1.0, 0.0, 0.0]),
}
TRUE = {"gravity": 10.0, "mass": 1.0, "length": 1.0, "damping": 0.0}
LEARNED = ("mass", "length", "damping")
HORIZON = 20
LIMIT = 2.0


def stack_params(rows: list[dict]) -> dict:
    """One dictionary of (batch,) arrays from a list of parameter dictionaries."""
    return {k: np.array([float(r[k]) for r in rows]) for k in TRUE}


def pendulum_mpc(x, params, u_init, **settings):
    """The benchmark's MPC (pendulum model, cost, horizon, torque limits) of a batch of states.

    One solve per call (``maxiter=1``) from the plan `u_init`, with per-row `params`;
    `settings` are the tolerances and the Newton steps of that solve.
    """
    return mpc(
        MODEL,
        COST,
        x,
        params,
        WEIGHTS,
        horizon=HORIZON,
        u_lower=-LIMIT,
        u_upper=LIMIT,
        u_init=u_init,
        maxiter=1,
        batched_params=True,
        **settings,
    )


def run_mpc_episodes(param_rows, reset_seeds, steps, *, record=False):
    """Episodes of Pendulum-v1 driven by MPC, one environment per row (batched solve)."""
    import gymnasium as gym

    envs = [gym.make("Pendulum-v1") for _ in param_rows]
    for env, seed in zip(envs, reset_seeds):
        env.reset(seed=int(seed))
    params = stack_params(param_rows)
    returns = np.zeros(len(envs))
    u_plan, states, plans = None, [], []
    for _ in range(steps):
        x = np.stack([np.asarray(env.unwrapped.state, dtype=np.float64) for env in envs])
        sol = pendulum_mpc(x, params, u_plan, rtol=0.0, atol=1e-3, newton_steps=5)
        if record:
            states.append(x)
            plans.append(sol.u)
        for i, env in enumerate(envs):
            _, reward, *_ = env.step(sol.u[i, 0].astype(np.float32))
            returns[i] += reward
        u_plan = shift_plan(sol.u)
    for env in envs:
        env.close()
    if record:
        return returns, np.concatenate(states), np.concatenate(plans)
    return returns


def to_params(theta: dict) -> dict:
    """Model parameters (batched over seeds) from the unconstrained training variables."""
    xp = inet.namespace(*theta.values())
    return {
        "gravity": xp.ones_like(theta["log_mass"]) * TRUE["gravity"],
        "mass": xp.exp(theta["log_mass"]),
        "length": xp.exp(theta["log_length"]),
        "damping": theta["damping"],
    }


def learn_mpc(states, plans, theta0, *, steps, batch, lr, rng):
    """Fit the model of every seed at once (rows = seeds x minibatch, batched params)."""
    S = theta0["log_mass"].shape[0]

    def loss(theta, x, u_expert):
        params = {k: _repeat(v, batch) for k, v in to_params(theta).items()}
        sol = pendulum_mpc(x, params, u_expert, rtol=1e-6, atol=1e-6, newton_steps=12)
        # A fixed budget per training step: systems whose plan has not converged
        # (|dJ/dv| above its tolerance, res.residual > 1 in the layer's scaling) are left
        # out of this step's loss; the implicit gradient holds only at a solution.
        xp = inet.namespace(sol.u)
        ok = xp.astype(xp.asarray(inet.stop_gradient(sol.result.residual)) <= 1.0, sol.u.dtype)
        err = xp.sum((sol.u - u_expert) ** 2, axis=(1, 2)) * ok
        # Summed over seeds: each seed's gradient is that of its own mean loss.
        return xp.sum(err) / (batch * HORIZON), float(xp.mean(ok))

    opt = inet.optim.Adam(lr=lr)
    theta, state = theta0, opt.init(theta0)
    value_and_grad = inet.value_and_grad(loss, has_aux=True)
    history, converged = [], []
    for _ in range(steps):
        idx = np.stack([rng.choice(states.shape[0], batch, replace=False) for _ in range(S)])
        x, u = states[idx.reshape(-1)], plans[idx.reshape(-1)]
        (value, frac), g = value_and_grad(theta, x, u)
        theta, state = opt.update(theta, g, state)
        # Damping is physically non-negative: project (negative damping would pump
        # energy into the model).
        theta = dict(theta, damping=np.maximum(theta["damping"], 0.0))
        history.append(float(value) / S)
        converged.append(frac)
    return theta, history, float(np.mean(converged))


def _repeat(a, k):
    xp = inet.namespace(a)
    return xp.reshape(xp.broadcast_to(a[:, None], (a.shape[0], k)), (-1,))


# -- Behaviour cloning ---------------------------------------------------------------


def mlp_init(rng, sizes=(3, 32, 32, 1)):
    params = {}
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        params[f"W{i}"] = rng.standard_normal((a, b)) / math.sqrt(a)
        params[f"b{i}"] = np.zeros(b)
    return params


def mlp(params, obs):
    xp = inet.namespace(obs, *params.values())
    h = obs
    n = len(params) // 2
    for i in range(n):
        h = h @ params[f"W{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = xp.tanh(h)
    return LIMIT * xp.tanh(h)


def behaviour_cloning(obs, actions, *, rng, steps=1500, lr=3e-3, batch=64):
    def loss(params, o, a):
        xp = inet.namespace(o)
        return xp.mean((mlp(params, o) - a) ** 2)

    params = mlp_init(rng)
    opt = inet.optim.Adam(lr=lr)
    state = opt.init(params)
    value_and_grad = inet.value_and_grad(loss)
    for _ in range(steps):
        idx = rng.choice(obs.shape[0], min(batch, obs.shape[0]), replace=False)
        _, g = value_and_grad(params, obs[idx], actions[idx])
        params, state = opt.update(params, g, state)
    return params


def run_mlp_episodes(params, reset_seeds, steps):
    import gymnasium as gym

    returns = []
    for seed in reset_seeds:
        env = gym.make("Pendulum-v1")
        obs, _ = env.reset(seed=int(seed))
        total = 0.0
        for _ in range(steps):
            u = mlp(params, np.asarray(obs, dtype=np.float64)[None])[0]
            obs, reward, *_ = env.step(u.astype(np.float32))
            total += reward
        returns.append(total)
        env.close()
    return np.array(returns)


# -- The table -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8, help="states per training step")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--data-episodes", type=int, default=4)
    parser.add_argument("--data-steps", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=2, help="evaluation episodes per seed")
    parser.add_argument("--episode-steps", type=int, default=200)
    args = parser.parse_args()
    try:
        import gymnasium  # noqa: F401
    except ImportError:
        print("needs gymnasium: pip install 'implicitnet[control]'", file=sys.stderr)
        raise SystemExit(2) from None

    t_start = time.perf_counter()
    S, E = args.seeds, args.episodes
    # 1. Expert data: states met by the expert in the environment, and its plans there.
    data_seeds = [1000 + i for i in range(args.data_episodes)]
    _, states, plans = run_mpc_episodes(
        [TRUE] * len(data_seeds), data_seeds, args.data_steps, record=True
    )
    t_data = time.perf_counter() - t_start
    print(f"expert data: {states.shape[0]} (state, plan) pairs in {t_data:.0f} s")

    # 2. Wrong initial models, one per seed; learn them through the MPC layer.
    inits = []
    for s in range(S):
        r = np.random.default_rng(s)
        inits.append(
            {
                "mass": float(np.exp(r.choice([-1, 1]) * r.uniform(0.3, 0.6))),
                "length": float(np.exp(r.choice([-1, 1]) * r.uniform(0.3, 0.6))),
                "damping": float(r.uniform(0.1, 0.4)),
            }
        )
    theta0 = {
        "log_mass": np.log([p["mass"] for p in inits]),
        "log_length": np.log([p["length"] for p in inits]),
        "damping": np.array([p["damping"] for p in inits]),
    }
    t0 = time.perf_counter()
    theta, history, frac = learn_mpc(
        states,
        plans,
        theta0,
        steps=args.train_steps,
        batch=args.batch,
        lr=args.lr,
        rng=np.random.default_rng(123),
    )
    t_learn = time.perf_counter() - t0
    learned = to_params(theta)
    learned_rows = [{k: float(learned[k][s]) for k in TRUE} for s in range(S)]
    init_rows = [dict(TRUE, **p) for p in inits]
    print(
        f"learning: {args.train_steps} steps of {S} seeds x {args.batch} states in "
        f"{t_learn:.0f} s; imitation loss {history[0]:.4f} -> {history[-1]:.4f}; "
        f"{100 * frac:.0f}% of the training solves converged within the budget"
    )

    # 3. Behaviour cloning on the same pairs (first action of each plan).
    t0 = time.perf_counter()
    obs = np.asarray(MODEL.observe(states))
    bc = [behaviour_cloning(obs, plans[:, 0, :], rng=np.random.default_rng(s)) for s in range(S)]
    t_bc = time.perf_counter() - t0

    # 4. Episodes in Gymnasium from held-out initial states (the same for every row).
    eval_seeds = [2000 + e for e in range(E)]
    t0 = time.perf_counter()
    rows = [TRUE, *init_rows, *learned_rows]
    returns = run_mpc_episodes(
        [p for p in rows for _ in eval_seeds],
        [e for _ in rows for e in eval_seeds],
        args.episode_steps,
    ).reshape(len(rows), E)
    bc_returns = np.stack([run_mlp_episodes(p, eval_seeds, args.episode_steps) for p in bc])
    t_eval = time.perf_counter() - t0

    def perr(p):
        return max(abs(p[k] - TRUE[k]) for k in LEARNED)

    print()
    print(
        f"Pendulum-v1, horizon {HORIZON}, {S} seeds x {E} episodes of {args.episode_steps} "
        f"steps; {states.shape[0]} expert pairs, {args.train_steps} training steps"
    )
    header = f"{'controller':<28}{'param error':>14}{'return (mean ± std)':>24}"
    print(header)
    print("-" * len(header))
    table = [
        ("expert MPC (true model)", "0", returns[0]),
        (
            "MPC, initial wrong model",
            f"{np.mean([perr(p) for p in init_rows]):.3f}",
            returns[1 : 1 + S].reshape(-1),
        ),
        (
            "MPC, learned model",
            f"{np.mean([perr(p) for p in learned_rows]):.3f}",
            returns[1 + S :].reshape(-1),
        ),
        ("behaviour cloning MLP", "-", bc_returns.reshape(-1)),
    ]
    for name, err, ret in table:
        print(f"{name:<28}{err:>14}{f'{np.mean(ret):.1f} ± {np.std(ret):.1f}':>24}")
    print()
    print("learned parameters per seed (true: mass 1, length 1, damping 0):")
    for s in range(S):
        a, b = init_rows[s], learned_rows[s]
        print(
            f"  seed {s}: mass {a['mass']:.3f} -> {b['mass']:.3f}, length {a['length']:.3f} "
            f"-> {b['length']:.3f}, damping {a['damping']:.3f} -> {b['damping']:.3f}"
        )
    print(
        f"time: data {t_data:.0f} s, learning {t_learn:.0f} s, behaviour cloning "
        f"{t_bc:.0f} s, evaluation {t_eval:.0f} s, total {time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
