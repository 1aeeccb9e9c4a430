"""Optimizers and learning-rate schedules over pytrees of arrays.

Optimizers are ``init``/``update`` pairs::

    state = opt.init(model)
    model, state = opt.update(model, grads, state)

Their state is a pytree of arrays (the step count is a 0-d integer array), so it is
saved and restored with the model.
"""

from ._optimizers import SGD as SGD
from ._optimizers import AbstractOptimizer as AbstractOptimizer
from ._optimizers import Adam as Adam
from ._optimizers import AdamState as AdamState
from ._optimizers import AdamW as AdamW
from ._optimizers import ClipByGlobalNorm as ClipByGlobalNorm
from ._optimizers import SGDState as SGDState
from ._optimizers import clip_by_global_norm as clip_by_global_norm
from ._optimizers import global_norm as global_norm
from ._schedules import constant as constant
from ._schedules import cosine_schedule as cosine_schedule
from ._schedules import step_schedule as step_schedule

__all__ = [
    "SGD",
    "AbstractOptimizer",
    "Adam",
    "AdamState",
    "AdamW",
    "ClipByGlobalNorm",
    "SGDState",
    "clip_by_global_norm",
    "constant",
    "cosine_schedule",
    "global_norm",
    "step_schedule",
]
