"""torch-constraints: keep PyTorch weights inside a feasible set.

``constrain(model.fc, "weight", -1, 1)`` registers a clamp parametrization, so
the forward pass always sees feasible values (``parametrize=False`` leaves the
module untouched instead); ``hard_project(model)`` writes the projection back
into the raw parameters in place after each optimizer step. The documentation
lives in ``docs/``; ``python -m torch_constraints.demo`` trains a weight-clipped
WGAN, ``python -m torch_constraints.bench`` measures.
"""

from .base import Constraint
from .box import Box, NonNeg
from .checkpoint import CHECKPOINT_FORMAT, plain_state_dict
from .hooks import project_after_step
from .matrix import PSD, Orthogonal, SpectralBall, spectral_norm_bound
from .monitoring import saturation, violation
from .norm import MaxNorm, MinMaxNorm, UnitNorm
from .packing import PackedProjection
from .projection import hard_project
from .registration import constrain, constrain_all, named_constraints, unconstrain
from .registry import get, serialize
from .sets import L1Ball, L2Ball, L2Sphere, LinfBall, Simplex

__version__ = "0.1.0"

__all__ = [
    "CHECKPOINT_FORMAT",
    "PSD",
    "Box",
    "Constraint",
    "L1Ball",
    "L2Ball",
    "L2Sphere",
    "LinfBall",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "Orthogonal",
    "PackedProjection",
    "Simplex",
    "SpectralBall",
    "UnitNorm",
    "__version__",
    "constrain",
    "constrain_all",
    "get",
    "hard_project",
    "named_constraints",
    "plain_state_dict",
    "project_after_step",
    "saturation",
    "serialize",
    "spectral_norm_bound",
    "unconstrain",
    "violation",
]
