r"""Matrix constraints as exact Euclidean projections: spectral ball, Stiefel set, PSD cone.

A weight of shape ``(out, *rest)`` is treated as the matrix
:math:`W = \text{weight.reshape(out, -1)}`, as :func:`torch.nn.utils.spectral_norm`
does with ``dim=0``: a ``Linear`` weight is its own matrix, a ``Conv2d`` weight
``(out, in, kh, kw)`` becomes ``(out, in * kh * kw)``. Once registered, extra
leading dimensions are a batch of such weights (``hard_project`` stacks
same-shaped weights and makes one batched :mod:`torch.linalg` call).

Each projection is a *spectral function*: with the singular value
decomposition :math:`W = U \operatorname{diag}(\sigma) V^\top`,

.. math::

    P(W) = U \operatorname{diag}(f(\sigma)) V^\top ,

with :math:`f(\sigma) = \min(\sigma, r)` for :class:`SpectralBall` and
:math:`f(\sigma) = 1` for :class:`Orthogonal` (for :class:`PSD`, the same with
the eigendecomposition of the symmetric part). Gradients do not go through
``torch.linalg.svd``'s backward, which is unstable when singular values repeat,
as they do on the boundary after a projection; they use the closed form of the
derivative of a spectral function (divided differences of :math:`f`, bounded
wherever :math:`f` is Lipschitz).

Decompositions run in float32 for float16/bfloat16 weights (and in float64 for
float64), and the result is rounded back to the weight's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

from . import _validation
from .base import Constraint

__all__ = ["PSD", "Orthogonal", "SpectralBall", "spectral_norm_bound"]


# ----------------------------------------------------------------------------- helpers
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _matmul_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff of a matrix product in ``dtype`` (TF32/bf16 when PyTorch allows them)."""
    if dtype == torch.float64:
        return 2.0**-53
    precision = torch.get_float32_matmul_precision()
    return {"highest": 2.0**-24, "high": 2.0**-11}.get(precision, 2.0**-8)


def _gamma(n: int, u: float) -> float:
    """The rounding bound :math:`\\gamma_n = nu / (1 - nu)` of an inner product of length n."""
    nu = n * u
    return math.inf if nu >= 1 else nu / (1 - nu)


def spectral_norm_bound(matrices: Tensor, *, iterations: int = 4) -> Tensor:
    r"""Return a certified upper bound on the largest singular value of each matrix.

    Gram iteration (Delattre et al., 2023): with :math:`G_0 = W W^\top` (the
    smaller side) and :math:`G_{t+1} = G_t G_t^\top`,
    :math:`\sigma_{\max}(G_t) = \sigma_{\max}(W)^{2^{t+1}}` and

    .. math::

        \sigma_{\max}(W) \le \lVert G_t \rVert_F^{1/2^{t+1}} ,

    which tightens quickly: the overshoot factor is
    :math:`(\sum_i (\sigma_i / \sigma_{\max})^{2^{t+2}})^{1/2^{t+2}}`, a few percent
    for a random square 768x768 matrix at the default 4 iterations. Every
    iterate is rescaled to unit Frobenius norm (no overflow), and the bound
    carries the rounding error of each product (:math:`|fl(AB) - AB| \le
    \gamma_n |A||B|`, :math:`\gamma_n = nu/(1-nu)`, in the compute dtype, TF32 or
    bf16 if PyTorch's float32 matmul precision allows them), so it is an upper
    bound on the exact :math:`\sigma_{\max}` of the stored matrix, not only in
    exact arithmetic. Costs one product :math:`m \times k \times m` and
    ``iterations`` products :math:`m \times m \times m`, no decomposition.

    Args:
        matrices: a matrix ``(m, n)`` or a batch ``(..., m, n)``, floating point.
        iterations: number of squarings after the first Gram product, ``>= 0``.
            Default: ``4``.

    Returns:
        A float64 tensor of shape ``matrices.shape[:-2]``.

    Raises:
        ValueError: if ``matrices`` has fewer than 2 dimensions or ``iterations < 0``.

    Example:
        >>> import torch
        >>> from torch_constraints import spectral_norm_bound
        >>> w = torch.diag(torch.tensor([3.0, 1.0, 0.5]))
        >>> bound = spectral_norm_bound(w)
        >>> bool(3.0 <= bound < 3.0 * 1.001)
        True
    """
    if matrices.ndim < 2:
        raise ValueError(
            f"spectral_norm_bound: expected a matrix or a batch of matrices, got shape "
            f"{tuple(matrices.shape)}"
        )
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"spectral_norm_bound: iterations must be an int >= 0, got {iterations!r}")
    a = matrices.to(_compute_dtype(matrices.dtype))
    if a.shape[-2] > a.shape[-1]:
        a = a.mT
    m, k = a.shape[-2], a.shape[-1]
    u = _matmul_roundoff(a.dtype)
    tiny = torch.finfo(a.dtype).tiny
    # Scale by the largest entry first: the Frobenius norm neither under- nor overflows.
    amax = a.abs().amax(dim=(-2, -1)).clamp_min(tiny)
    a = a / amax[..., None, None]
    fro = torch.linalg.matrix_norm(a)
    b = a / fro.clamp_min(tiny)[..., None, None]
    # sigma(b_t)^2 = sigma(b_t b_t^T) <= f_t * sigma(b_{t+1}) + err_t, with
    # ||b_t||_F = 1 up to rounding: err_t covers the product (gamma of its inner
    # length) and the normalisation (a few u, relative to ||b_{t+1}||_F = 1).
    norms: list[Tensor] = []
    errors: list[float] = []
    inner = k
    for _ in range(iterations + 1):
        g = b @ b.mT
        f = torch.linalg.matrix_norm(g).clamp_min(tiny)
        b = g / f[..., None, None]
        norms.append(f.double())
        errors.append(_gamma(inner + 2, u) * (1 + 4 * u))
        inner = m
    beta = torch.full_like(norms[0], 1 + 4 * m * u)  # bounds ||b_K||_F >= sigma(b_K)
    for f, err in zip(reversed(norms), reversed(errors), strict=True):
        beta = torch.sqrt(f * (beta + 2 * u) + err)
    # The two divisions above round each entry by u (2u in all, ||b||_F = 1).
    bound: Tensor = amax.double() * fro.double() * (beta + 3 * u) * (1 + 4 * u)
    return bound


def _unit_roundoff(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) / 2


def _safe_div(num: Tensor, den: Tensor, where: Tensor) -> Tensor:
    """``num / den`` where ``where`` holds, else 0 (no division by zero anywhere)."""
    return torch.where(where, num / torch.where(where, den, torch.ones_like(den)), 0.0)


def _svd_of_wide(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of wide ``w``, computed on ``w.mT``: LAPACK's tall path is faster on CPU."""
    u, s, vh = torch.linalg.svd(w.mT, full_matrices=False)
    return vh.mT, s, u.mT


def _saved(ctx: Any) -> tuple[Tensor, ...]:
    return tuple(ctx.saved_tensors)


def _pairs(s: Tensor) -> tuple[Tensor, Tensor]:
    return s[..., :, None], s[..., None, :]


# ----------------------------------------------------------------------------- autograd
def _spectral_vjp(grad: Tensor, u: Tensor, vh: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    r"""Apply the derivative of a spectral function :math:`U f(\Sigma) V^\top` to ``grad``.

    For a wide matrix (``u`` square, ``vh`` the thin :math:`V^\top`), with
    :math:`\tilde G = U^\top G V` and :math:`G_\perp = U^\top G (I - V V^\top)`:

    .. math::

        DF[G] = U \left( (A \circ \operatorname{sym}\tilde G
                + B \circ \operatorname{skew}\tilde G) V^\top
                + \operatorname{diag}(c)\, G_\perp \right),

    :math:`A_{ij} = (f_i - f_j)/(\sigma_i - \sigma_j)` (:math:`f'(\sigma_i)` on the
    diagonal), :math:`B_{ij} = (f_i + f_j)/(\sigma_i + \sigma_j)`,
    :math:`c_i = f_i / \sigma_i`. The derivative is self-adjoint (``F`` is the
    gradient of :math:`\sum_i \int f(\sigma_i)`), so this is also the VJP.
    """
    ut_g = u.mT @ grad
    gt = ut_g @ vh.mT
    g_perp = ut_g - gt @ vh
    sym = (gt + gt.mT) / 2
    skew = (gt - gt.mT) / 2
    inner = (a * sym + b * skew) @ vh + c[..., :, None] * g_perp
    return u @ inner


def _ball_excess_coefficients(s: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """A, B, c of the excess :math:`e(\\sigma) = \\max(\\sigma - r, 0)`, without 0/0."""
    e = (s - radius).clamp_min(0)
    over = s > radius
    si, sj = _pairs(s)
    ei, ej = _pairs(e)
    oi, oj = _pairs(over)
    mixed = oi ^ oj
    a = torch.where(mixed, _safe_div(ei - ej, si - sj, mixed), (oi & oj).to(s.dtype))
    b = _safe_div(ei + ej, si + sj, (ei + ej) > 0)
    c = _safe_div(e, s, e > 0)
    return a, b, c


def _orthogonal_coefficients(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A, B, c of :math:`f(\\sigma) = 1` (the polar factor); 0 where rank-deficient."""
    si, sj = _pairs(s)
    a = torch.zeros_like(si * sj)
    b = _safe_div(torch.full_like(a, 2.0), si + sj, (si + sj) > 0)
    c = _safe_div(torch.ones_like(s), s, s > 0)
    return a, b, c


class _SpectralBallFn(Function):
    """:math:`U \\min(\\Sigma, r) V^\\top` for wide ``W``, with the closed-form VJP."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, radius: float) -> Tensor:
        u, s, vh = _svd_of_wide(w)
        ctx.save_for_backward(u, s, vh)
        ctx.radius = radius
        # U min(S, r) V^T is accurate to rounding relative to r; a matrix with no
        # singular value above r is returned as it is (bit for bit).
        clipped = (u * s.clamp_max(radius)[..., None, :]) @ vh
        outside = (s > radius).any(dim=-1)
        return torch.where(outside[..., None, None], clipped, w)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        u, s, vh = _saved(ctx)
        coefficients = _ball_excess_coefficients(s, ctx.radius)
        # Exactly the identity when no singular value exceeds the radius.
        return grad - _spectral_vjp(grad, u, vh, *coefficients), None


class _PolarFn(Function):
    """The polar factor :math:`U V^\\top` of wide ``W``, with the closed-form VJP."""

    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:
        u, s, vh = _svd_of_wide(w)
        ctx.save_for_backward(u, s, vh)
        return torch.matmul(u, vh)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        u, s, vh = _saved(ctx)
        return _spectral_vjp(grad, u, vh, *_orthogonal_coefficients(s))


class _PSDFn(Function):
    """:math:`S - Q \\min(\\Lambda, 0) Q^\\top` with :math:`S = (W + W^\\top)/2`."""

    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:
        sym = (w + w.mT) * 0.5
        lam, q = torch.linalg.eigh(sym)
        negative = lam.clamp_max(0)
        out = sym - (q * negative[..., None, :]) @ q.mT
        ctx.save_for_backward(lam, q)
        return torch.mul(out + out.mT, 0.5)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        lam, q = _saved(ctx)
        gs = (grad + grad.mT) * 0.5
        neg = lam.clamp_max(0)
        below = lam < 0
        li, lj = _pairs(lam)
        ni, nj = _pairs(neg)
        bi, bj = _pairs(below)
        mixed = bi ^ bj
        a = torch.where(mixed, _safe_div(ni - nj, li - lj, mixed), (bi & bj).to(lam.dtype))
        inner = a * (q.mT @ gs @ q)
        correction = q @ inner @ q.mT
        return gs - (correction + correction.mT) * 0.5


# ----------------------------------------------------------------------------- constraints
class _MatrixConstraint(Constraint):
    """Base of the constraints on ``weight.reshape(out, -1)``."""

    def check(self, x: Tensor, where: str) -> None:
        super().check(x, where)
        if x.ndim < 2:
            raise ValueError(
                f"{where}: {type(self).__name__} needs a tensor with at least 2 dimensions "
                f"(out, *rest), got shape {tuple(x.shape)}"
            )

    def matrices(self, x: Tensor) -> Tensor:
        """``x`` as matrices ``(*batch, out, prod(rest))`` in the compute dtype."""
        lead = self.batch_ndim(x) + 1
        return x.reshape(*x.shape[:lead], -1).to(_compute_dtype(x.dtype))

    def fusion_key(self) -> Hashable | None:
        if self._event_ndim is None:
            return None
        config = tuple(sorted(self.get_config().items()))
        return (type(self).__name__, config, self._event_ndim)

    def project(self, x: Tensor) -> Tensor:
        if x.ndim < 2:
            raise ValueError(
                f"{type(self).__name__} needs a tensor with at least 2 dimensions, "
                f"got shape {tuple(x.shape)}"
            )
        return self._project_matrices(self.matrices(x)).reshape(x.shape).to(x.dtype)

    def _project_matrices(self, m: Tensor) -> Tensor:
        raise NotImplementedError

    def project_many_(self, xs: Sequence[Tensor], *, foreach: bool | None = None) -> None:
        """Project in place, stacking same-shaped tensors for one batched call per shape."""
        del foreach
        self._project_stacked_(xs)


def _wide(fn: Any, m: Tensor, *args: Any) -> Tensor:
    """Apply ``fn`` (written for wide matrices) to ``m`` of any shape."""
    if m.shape[-2] > m.shape[-1]:
        return fn(m.mT, *args).mT  # type: ignore[no-any-return]
    return fn(m, *args)  # type: ignore[no-any-return]


class SpectralBall(_MatrixConstraint):
    r"""Keep the spectral norm (largest singular value) of the weight at most ``radius``.

    .. math::

        C = \{W : \sigma_{\max}(W) \le r\}, \qquad
        P_C(W) = U \operatorname{diag}(\min(\sigma, r)) V^\top .

    A matrix whose computed singular values are all at most :math:`r` is
    returned unchanged, bit for bit, and its Jacobian is exactly the identity.
    In float32 the result's :math:`\sigma_{\max}` may exceed :math:`r` by the
    SVD's rounding, a few :math:`10^{-6}` relative for 768x768 matrices; use
    ``method="rescale"`` where the bound must hold exactly.

    ``hard_project`` (:meth:`project_`) runs the SVD only on matrices not
    certified inside by :func:`spectral_norm_bound`, so the feasible case costs
    no SVD; matrices with a row or column longer than :math:`r` (a lower bound
    on :math:`\sigma_{\max}`) go to the SVD without computing the bound, and a
    bound with a single Gram squaring is tried before the full one. Deciding
    takes at most three host-device synchronisations per batch of same-shaped
    matrices. The forward map (:meth:`project`) never synchronises: it always
    computes the SVD.

    For a convolution weight ``(out, in, kh, kw)`` this bounds the spectral norm
    of the reshaped kernel ``(out, in*kh*kw)``, not the operator norm of the
    convolution: the convolution's Lipschitz constant (zero or circular padding,
    stride 1) is at most :math:`\sqrt{k_h k_w}` times the reshaped kernel's
    spectral norm (each output pixel reads at most :math:`k_h k_w` overlapping
    patches), a bound which is attained by some kernels.

    ``method="rescale"`` is a cheaper feasible map, **not** the Euclidean
    projection: :math:`W \cdot \min(1, r / \bar u)` with :math:`\bar u`
    :func:`spectral_norm_bound`'s certified bound (so never an under-estimate;
    the scale also covers the rounding of the product, so the stored result is
    inside). It shrinks every singular value, and a bit more than needed when the
    bound overshoots.

    Args:
        radius: :math:`r \ge 0`. Default: ``1.0``.
        method: ``"svd"`` (the exact projection) or ``"rescale"``. Default: ``"svd"``.
        iterations: Gram iterations of the bound. Default: ``4``.

    Raises:
        ValueError: for a negative or non-finite ``radius``, an unknown ``method``,
            or ``iterations`` not an int in ``[0, 30]``; at registration, for a
            tensor with fewer than 2 dimensions.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import SpectralBall, constrain, hard_project
        >>> layer = constrain(nn.Linear(16, 8), "weight", SpectralBall(0.5))
        >>> bool(torch.linalg.matrix_norm(layer.weight, ord=2) <= 0.5 * (1 + 1e-5))
        True
        >>> inside = torch.diag(torch.tensor([0.5, 0.25]))
        >>> torch.equal(SpectralBall(1.0).project(inside), inside)
        True
    """

    def __init__(self, radius: float = 1.0, *, method: str = "svd", iterations: int = 4) -> None:
        super().__init__()
        self.radius = _validation.number("SpectralBall", "radius", radius, at_least=0)
        if method not in ("svd", "rescale"):
            raise ValueError(f"SpectralBall: method must be 'svd' or 'rescale', got {method!r}")
        self.method = method
        if isinstance(iterations, bool) or not isinstance(iterations, int):
            raise ValueError(f"SpectralBall: iterations must be an int, got {iterations!r}")
        if not 0 <= iterations <= 30:
            raise ValueError(f"SpectralBall: iterations must be in [0, 30], got {iterations}")
        self.iterations = iterations

    def _project_matrices(self, m: Tensor) -> Tensor:
        if self.method == "rescale":
            return self._rescale(m, m.dtype)
        return _wide(_SpectralBallFn.apply, m, self.radius)

    def project(self, x: Tensor) -> Tensor:
        if self.method == "rescale":
            if x.ndim < 2:
                super().project(x)  # raises
            m = self.matrices(x)
            return self._rescale(m, x.dtype).reshape(x.shape).to(x.dtype)
        return super().project(x)

    def _rescale(self, m: Tensor, out_dtype: torch.dtype) -> Tensor:
        bound = spectral_norm_bound(m, iterations=self.iterations)
        u = _unit_roundoff(out_dtype)
        fro = torch.linalg.matrix_norm(m).double()
        # fl(c * W) = c*W + E with ||E||_2 <= u ||c*W||_F; c itself rounds by u.
        scale = self.radius / ((1 + 2 * u) * (bound + u * fro))
        factor = torch.where(bound <= self.radius, 1.0, scale).to(m.dtype)
        return m * factor[..., None, None]

    @torch.no_grad()
    def project_(self, x: Tensor) -> Tensor:
        """Project in place; the SVD runs only on matrices not certified inside."""
        if self.method == "rescale":
            x.copy_(self.project(x))
            return x
        lead = self.batch_ndim(x) + 1
        flat = x.reshape(-1, *x.shape[lead - 1 : lead], math.prod(x.shape[lead:]))
        outside = _certainly_outside(flat, self.radius)  # sync 1
        unsure = [i for i in range(flat.shape[0]) if i not in set(outside)]
        # A cheap bound first (one squaring) certifies matrices well inside; the
        # full one only what it leaves (syncs 2 and 3).
        for iterations in sorted({min(1, self.iterations), self.iterations}):
            if not unsure:
                break
            chosen = flat if len(unsure) == flat.shape[0] else flat[unsure]
            bound = spectral_norm_bound(chosen, iterations=iterations)
            unsure = [unsure[i] for i in (bound > self.radius).nonzero().flatten().tolist()]
        outside = sorted(outside + unsure)
        if not outside:
            return x
        chosen = flat if len(outside) == flat.shape[0] else flat[outside]
        m = chosen.to(_compute_dtype(x.dtype))
        projected = _wide(_SpectralBallFn.apply, m, self.radius).to(x.dtype)
        if len(outside) == flat.shape[0]:
            flat.copy_(projected)
        else:
            flat[outside] = projected
        if flat.data_ptr() != x.data_ptr() or not x.is_contiguous():
            x.copy_(flat.reshape(x.shape))
        return x


def _certainly_outside(flat: Tensor, radius: float) -> list[int]:
    r"""Indices of the matrices whose cheap lower bound on sigma_max exceeds ``radius``.

    :math:`\sigma_{\max} \ge` every row's and column's norm: O(mn), and it spares
    the clearly infeasible matrices the Gram iterations before their SVD.
    """
    m = flat.to(_compute_dtype(flat.dtype))
    rows = torch.linalg.vector_norm(m, dim=-1).amax(dim=-1)
    columns = torch.linalg.vector_norm(m, dim=-2).amax(dim=-1)
    # Rounding of the norms: a relative (n + 2) u, inflated, keeps this a lower bound.
    n = max(m.shape[-1], m.shape[-2]) + 2
    lower = torch.maximum(rows, columns) * (1 - 2 * _gamma(n, _unit_roundoff(m.dtype)))
    return (lower > radius).nonzero().flatten().tolist()


class Orthogonal(_MatrixConstraint):
    r"""Keep the weight on the Stiefel manifold: orthonormal rows (or columns if tall).

    .. math::

        C = \{W \in \mathbb{R}^{m \times n} : W W^\top = I_m\} \ (m \le n), \quad
        \{W : W^\top W = I_n\} \ (m > n), \qquad
        P_C(W) = U V^\top ,

    the polar factor of the thin SVD :math:`W = U \Sigma V^\top`: the nearest
    matrix with orthonormal rows (columns) in Frobenius norm. It is unique when
    :math:`W` has full rank; for rank-deficient :math:`W` this returns the one
    the SVD picks.

    PyTorch's :func:`torch.nn.utils.parametrizations.orthogonal` maps a raw
    unconstrained matrix through the matrix exponential, Cayley map or
    Householder products: every raw value gives an orthogonal weight, but the raw
    tensor is a different object (the optimizer moves it, not the weight), and
    assigning a weight goes through an inverse map. Here the raw tensor *is* the
    weight, kept orthogonal by projecting it: ``hard_project`` after each step
    (projected gradient descent onto the Stiefel manifold, a retraction), or the
    polar factor in every forward pass.

    Raises:
        ValueError: at registration, for a tensor with fewer than 2 dimensions.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import Orthogonal, constrain
        >>> layer = constrain(nn.Linear(6, 4), "weight", Orthogonal())
        >>> w = layer.weight
        >>> torch.allclose(w @ w.T, torch.eye(4), atol=1e-5)
        True
    """

    def __init__(self) -> None:
        super().__init__()

    def _project_matrices(self, m: Tensor) -> Tensor:
        return _wide(_PolarFn.apply, m)


class PSD(_MatrixConstraint):
    r"""Keep a square weight symmetric positive semidefinite.

    .. math::

        C = \{W = W^\top : W \succeq 0\}, \qquad
        P_C(W) = Q \operatorname{diag}(\max(\lambda, 0)) Q^\top ,

    with :math:`Q \operatorname{diag}(\lambda) Q^\top` the eigendecomposition of
    the symmetric part :math:`S = (W + W^\top)/2` (Higham, 1988). Computed as
    :math:`S - Q \operatorname{diag}(\min(\lambda, 0)) Q^\top`, so a symmetric
    matrix whose eigenvalues are all non-negative is returned unchanged.

    Raises:
        ValueError: at registration, unless the weight is square once reshaped to
            ``(out, -1)``.

    Example:
        >>> import torch
        >>> from torch_constraints import PSD
        >>> PSD().project(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
        tensor([[1., 0.],
                [0., 0.]])
    """

    def __init__(self) -> None:
        super().__init__()

    def check(self, x: Tensor, where: str) -> None:
        super().check(x, where)
        rest = math.prod(x.shape[1:])
        if x.shape[0] != rest:
            raise ValueError(
                f"{where}: PSD needs a square weight (out == prod(rest)), got shape "
                f"{tuple(x.shape)}, a {x.shape[0]}x{rest} matrix"
            )

    def _project_matrices(self, m: Tensor) -> Tensor:
        if m.shape[-2] != m.shape[-1]:
            raise ValueError(f"PSD needs square matrices, got {m.shape[-2]}x{m.shape[-1]}")
        return _PSDFn.apply(m)  # type: ignore[no-any-return,no-untyped-call]
