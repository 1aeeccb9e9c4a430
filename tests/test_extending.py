"""Extending implicitnet as docs/contributing.md says: a toy fixed-point/root solver and a
toy linear solver, each one class plus one registration line, used through the public
API (and the linear solver as the adjoint solver of a differentiated solve)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import problems
import pytest

import implicitnet as inet
from implicitnet.linalg import AbstractLinearSolver
from implicitnet.linalg._base import make_result, prepare, resolve_namespace, tolerance
from implicitnet.linalg._iterate import Step as LinearStep
from implicitnet.linalg._iterate import iterate
from implicitnet.solvers import AbstractIterativeSolver, Step
from implicitnet.testing import assert_close

# Solve tolerance, and the agreement asked of the answers.
RTOL = {"float32": 1e-5, "float64": 1e-11}
CLOSE = {"float32": 1e-3, "float64": 1e-8}
DTYPES = ["float32", "float64"]


# -- the toy solver, as on the page --------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ToyRelaxed(AbstractIterativeSolver):
    """Iterate ``x <- x + omega * g(x)``."""

    omega: float = 0.5

    def init(self, g, x, gx, *, xp):
        return None

    def step(self, g, x, gx, state, *, xp):
        x_new = x + self.omega * gx
        return Step(x_new, g(x_new), state)


inet.solvers.register("toy_relaxed", ToyRelaxed, overwrite=True)


# -- the toy linear solver, as on the page --------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ToyRichardson(AbstractLinearSolver):
    """Damped Richardson iteration ``x <- x + omega * (b - A x)``."""

    omega: float = 1.0
    rtol: float = 1e-6
    atol: float = 0.0
    maxiter: int | None = None

    def solve(self, A, b, /, *, x0=None, batch_axis=None, xp=None):
        xp = resolve_namespace(b, x0, xp, A)
        p = prepare(A, b, x0, None, batch_axis, xp=xp)
        out = iterate(
            p,
            init=lambda p, x, r, *, xp: None,
            step=self._step,
            matvecs_per_step=1,
            tol=tolerance(p, self.rtol, self.atol, xp=xp),
            maxiter=100 if self.maxiter is None else self.maxiter,
            callback=None,
            verify=False,
            xp=xp,
        )
        return make_result(p, out, xp=xp)

    def _step(self, p, x, r, state, k, *, xp):
        dx = self.omega * r
        return LinearStep(x=x + dx, r=r - p.matvec(dx), state=None)


inet.linalg.register_solver("toy_richardson", ToyRichardson, overwrite=True)


def _contraction(dtype, xp):
    A, c, z = problems.slow_contraction(n=6, rho=0.6, seed=3)
    return tuple(xp.asarray(a, dtype=getattr(xp, dtype)) for a in (A, c, z)), (A, c, z)


# -- tests -----------------------------------------------------------------------------


def test_registered_names_are_listed():
    assert "toy_relaxed" in inet.solvers.available_methods()
    assert isinstance(inet.linalg.get_solver("TOY_RICHARDSON"), ToyRichardson)
    with pytest.raises(ValueError, match="already registered"):
        inet.solvers.register("toy_relaxed", ToyRelaxed)
    with pytest.raises(ValueError, match="already registered"):
        inet.linalg.register_solver("toy_richardson", ToyRichardson)


@pytest.mark.parametrize("dtype", DTYPES)
def test_toy_solver_solves_a_fixed_point_and_a_root_problem(xp, dtype):
    (A, c, z), _ = _contraction(dtype, xp)
    res = inet.fixed_point(
        problems.affine,
        xp.zeros_like(c),
        (A, c),
        method="toy_relaxed",
        omega=0.9,
        rtol=RTOL[dtype],
        maxiter=2000,
    )
    assert res.success and res.nit > 1
    assert_close(res.x, z, rtol=CLOSE[dtype], atol=CLOSE[dtype])

    # The same map as a root problem F(z) = f(z) - z, whose model Jacobian -I suits
    # the relaxed step; batched, each system converges on its own.
    c2 = xp.stack([c, 2 * c])
    res = inet.root(
        lambda z, A, c: problems.affine(z, A, c) - z,
        xp.zeros_like(c2),
        (A, c2),
        method="toy_relaxed",
        rtol=RTOL[dtype],
        maxiter=2000,
        batch_axis=0,
        arg_batch_axes=(None, 0),
    )
    assert res.success
    assert_close(res.x, xp.stack([z, 2 * z]), rtol=CLOSE[dtype], atol=CLOSE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_toy_linear_solver_solves_a_linear_system(xp, dtype):
    (A, c, z), _ = _contraction(dtype, xp)
    solver = dataclasses.replace(
        inet.linalg.get_solver("toy_richardson"), rtol=RTOL[dtype], maxiter=2000
    )
    res = solver.solve(lambda v: v - problems.affine(v, A, 0.0 * c), c)
    assert res.success and res.nit > 1
    assert_close(res.x, z, rtol=CLOSE[dtype], atol=CLOSE[dtype])


def test_differentiating_with_the_toy_linear_solver_as_adjoint(xp):
    (A, c, _), (A_np, _, _) = _contraction("float64", xp)
    z0 = xp.zeros_like(c)

    def loss(c, backward):
        res = inet.fixed_point(problems.affine, z0, (A, c), rtol=1e-13, backward=backward)
        return inet.ops.sum(res.x)

    adjoint = inet.ImplicitAdjoint(linear_solver="toy_richardson", rtol=1e-12, maxiter=500)
    grad = inet.grad(loss)(c, adjoint)
    # z* = (I - A)^{-1} c, so d sum(z*) / dc = (I - A)^{-T} 1.
    expected = np.linalg.solve(np.eye(6) - A_np.T, np.ones(6))
    assert_close(grad, xp.asarray(expected), rtol=1e-9, atol=1e-10)
    assert_close(grad, inet.grad(loss)(c, "implicit"), rtol=1e-8, atol=1e-10)
