"""torch-constraints: keep PyTorch weights inside a feasible set.

``constrain(model.fc, "weight", -1, 1)`` registers a clamp parametrization, so
the forward pass always sees feasible values; ``hard_project(model)`` writes the
projection back into the raw parameters in place, fused, after each optimizer
step. See https://github.com/ for the documentation in ``docs/``.
"""

from .base import Constraint
from .box import Box, NonNeg
from .checkpoint import CHECKPOINT_FORMAT, plain_state_dict
from .hooks import project_after_step
from .projection import hard_project
from .registration import constrain, constrain_all, named_constraints, unconstrain

__version__ = "0.1.0"

__all__ = [
    "CHECKPOINT_FORMAT",
    "Box",
    "Constraint",
    "NonNeg",
    "__version__",
    "constrain",
    "constrain_all",
    "hard_project",
    "named_constraints",
    "plain_state_dict",
    "project_after_step",
    "unconstrain",
]
