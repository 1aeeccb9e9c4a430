"""Classic-control dynamics in the array API, with learnable physical parameters.

Each model is a frozen dataclass of its fixed settings (time step, limits); the
physical parameters travel separately, as a dictionary of arrays, so that they can be
passed in ``args`` and differentiated. Both models reproduce, with their default
parameters, one step of Gymnasium's environments of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .._validate import check_positive
from .._xp import default_float, namespace

__all__ = ["CartPole", "Pendulum"]


def _params(defaults: dict, *, xp, dtype, **values) -> dict:
    dtype = default_float(xp) if dtype is None else dtype
    out = {}
    for name, default in defaults.items():
        value = values.pop(name, default)
        out[name] = xp.asarray(value, dtype=dtype)
    if values:
        msg = f"unknown parameters {sorted(values)}; known: {sorted(defaults)}"
        raise TypeError(msg)
    return out


@dataclass(frozen=True, kw_only=True)
class Pendulum:
    """The torque-controlled pendulum of Gymnasium's ``Pendulum-v1``.

    State ``x = (theta, theta_dot)`` (angle from upright, angular velocity), control
    ``u = (torque,)``. One step of length `dt` (semi-implicit Euler, as Gymnasium)::

        tau       = clip(u, -max_torque, max_torque) - damping * theta_dot
        theta_dot' = theta_dot + (3 g / (2 l) sin(theta) + 3 / (m l^2) tau) dt
        theta_dot' = clip(theta_dot', -max_speed, max_speed)
        theta'     = theta + theta_dot' dt

    (a uniform rod of mass ``m`` and length ``l`` pivoting at one end). With the
    default parameters (``gravity=10``, ``mass=1``, ``length=1``, ``damping=0``) this
    is Gymnasium's step exactly.

    Parameters
    ----------
    dt : float, default: 0.05
        Time step.
    max_speed : float, default: 8.0
        Clip of the angular velocity.
    max_torque : float, default: 2.0
        Clip of the torque.
    clip_speed : bool, default: True
        Whether to clip the angular velocity, as Gymnasium does. The clip makes the
        dynamics non-smooth where it is active, which a Newton method on the plan
        cannot converge across; a model used for planning may leave it out.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet.control import Pendulum
    >>> model = Pendulum()
    >>> params = model.default_params(xp=np)
    >>> x1 = model(np.array([0.1, 0.0]), np.array([0.0]), params)
    >>> np.round(x1, 4).tolist()
    [0.1037, 0.0749]
    """

    dt: float = 0.05
    max_speed: float = 8.0
    max_torque: float = 2.0
    clip_speed: bool = True

    state_size: ClassVar[int] = 2
    control_size: ClassVar[int] = 1
    param_names: ClassVar[tuple[str, ...]] = ("gravity", "mass", "length", "damping")

    def __post_init__(self):
        for name in ("dt", "max_speed", "max_torque"):
            check_positive(getattr(self, name), name)
        if not isinstance(self.clip_speed, bool):
            msg = f"`clip_speed` must be True or False, got {self.clip_speed!r}"
            raise TypeError(msg)

    def default_params(self, *, xp, dtype=None, **values) -> dict:
        """Gymnasium's parameters as 0-D arrays, overridden by keyword (e.g. ``mass=2``)."""
        defaults = {"gravity": 10.0, "mass": 1.0, "length": 1.0, "damping": 0.0}
        return _params(defaults, xp=xp, dtype=dtype, **values)

    def __call__(self, x, u, params):
        """The next state, for states ``x`` of shape ``(..., 2)`` and ``u`` ``(..., 1)``."""
        xp = namespace(x, u, *params.values())
        th, thdot = x[..., 0], x[..., 1]
        g, m, l = params["gravity"], params["mass"], params["length"]
        tau = xp.clip(u[..., 0], -self.max_torque, self.max_torque) - params["damping"] * thdot
        thdot = thdot + (3.0 * g / (2.0 * l) * xp.sin(th) + 3.0 / (m * l**2) * tau) * self.dt
        if self.clip_speed:
            thdot = xp.clip(thdot, -self.max_speed, self.max_speed)
        th = th + thdot * self.dt
        return xp.stack([th, thdot], axis=-1)

    def observe(self, x):
        """Gymnasium's observation ``(cos theta, sin theta, theta_dot)`` of states ``x``."""
        xp = namespace(x)
        return xp.stack([xp.cos(x[..., 0]), xp.sin(x[..., 0]), x[..., 1]], axis=-1)


@dataclass(frozen=True, kw_only=True)
class CartPole:
    """The cart-pole of Gymnasium's ``CartPole-v1``, with a continuous force.

    State ``x = (position, velocity, theta, theta_dot)`` (pole angle from upright),
    control ``u = (force,)``. The equations of motion are those of Gymnasium (Barto,
    Sutton and Anderson 1983, with the pole's half-length ``l``)::

        F     = u - damping * velocity
        temp  = (F + m_p l theta_dot^2 sin(theta)) / (m_c + m_p)
        theta_acc = (g sin(theta) - cos(theta) temp)
                    / (l (4/3 - m_p cos(theta)^2 / (m_c + m_p)))
        x_acc = temp - m_p l theta_acc cos(theta) / (m_c + m_p)

    integrated by explicit Euler over `dt` (Gymnasium's default ``"euler"``
    integrator: positions move with the old velocities). Gymnasium's discrete actions
    are the forces ``-10`` (action 0) and ``+10`` (action 1); with those forces and the
    default parameters (``gravity=9.8``, ``masscart=1``, ``masspole=0.1``,
    ``length=0.5``, ``damping=0``) this is Gymnasium's step exactly.

    Parameters
    ----------
    dt : float, default: 0.02
        Time step (Gymnasium's ``tau``).

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet.control import CartPole
    >>> model = CartPole()
    >>> x1 = model(np.zeros(4), np.array([10.0]), model.default_params(xp=np))
    >>> np.round(x1, 4).tolist()
    [0.0, 0.1951, 0.0, -0.2927]
    """

    dt: float = 0.02

    state_size: ClassVar[int] = 4
    control_size: ClassVar[int] = 1
    param_names: ClassVar[tuple[str, ...]] = (
        "gravity",
        "masscart",
        "masspole",
        "length",
        "damping",
    )

    def __post_init__(self):
        check_positive(self.dt, "dt")

    def default_params(self, *, xp, dtype=None, **values) -> dict:
        """Gymnasium's parameters as 0-D arrays, overridden by keyword."""
        defaults = {
            "gravity": 9.8,
            "masscart": 1.0,
            "masspole": 0.1,
            "length": 0.5,
            "damping": 0.0,
        }
        return _params(defaults, xp=xp, dtype=dtype, **values)

    def __call__(self, x, u, params):
        """The next state, for states ``x`` of shape ``(..., 4)`` and ``u`` ``(..., 1)``."""
        xp = namespace(x, u, *params.values())
        pos, vel, th, thdot = x[..., 0], x[..., 1], x[..., 2], x[..., 3]
        g, mc, mp, l = (params[k] for k in ("gravity", "masscart", "masspole", "length"))
        total = mc + mp
        force = u[..., 0] - params["damping"] * vel
        c, s = xp.cos(th), xp.sin(th)
        temp = (force + mp * l * thdot**2 * s) / total
        thacc = (g * s - c * temp) / (l * (4.0 / 3.0 - mp * c**2 / total))
        xacc = temp - mp * l * thacc * c / total
        dt = self.dt
        return xp.stack(
            [pos + dt * vel, vel + dt * xacc, th + dt * thdot, thdot + dt * thacc], axis=-1
        )
