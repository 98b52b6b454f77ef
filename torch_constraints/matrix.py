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
float64), and the result is rounded back to the weight's dtype. An SVD that
fails to converge (``torch.linalg.LinAlgError``, which LAPACK raises on rare
matrices with clustered singular values, depending on the build and the thread
count) is retried on the transpose, with cuSOLVER's ``gesvd`` on CUDA, then in
float64, instead of failing the training step. A matrix with a NaN or infinite
entry projects to all NaN (the other matrices of a batch are unaffected), and a
tensor with no elements is returned as it is.
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


def _gamma(n: int, u: float) -> float:
    """The rounding bound :math:`\\gamma_n = nu / (1 - nu)` of an inner product of length n."""
    nu = n * u
    return math.inf if nu >= 1 else nu / (1 - nu)


def _product_error(n: int, dtype: torch.dtype) -> float:
    r""":math:`\delta_n` with :math:`|fl(XY) - XY| \le \delta_n |X||Y|` (inner length n).

    float32 products may run in TF32 or bf16 wherever PyTorch's matmul precision
    settings allow it, on any backend (``set_float32_matmul_precision("high")``
    or ``"medium"`` set oneDNN's CPU matmuls too): the operands are then rounded
    (relative error ``v``, exact products) and accumulated in float32 at four
    times its unit roundoff, :math:`2^{-22}`, which covers accumulators that
    truncate (tensor cores do) rather than round.
    """
    if dtype == torch.float64:
        return _gamma(n, 2.0**-53)
    mkldnn = torch.backends.mkldnn
    settings = {
        getattr(torch.backends, "fp32_precision", "ieee"),  # each "none" defers to this one
        torch.backends.cuda.matmul.fp32_precision,
        mkldnn.fp32_precision,
        getattr(getattr(mkldnn, "matmul", None), "fp32_precision", "ieee"),
    }
    if settings <= {"ieee", "none"}:
        return _gamma(n, 2.0**-24)
    v = 2.0**-10 if settings <= {"ieee", "none", "tf32"} else 2.0**-7  # TF32, else bf16
    return (1 + v) ** 2 * (1 + _gamma(n, 2.0**-22)) - 1


def _exponent(values: Tensor, dtype: torch.dtype) -> Tensor:
    """``e`` with ``values`` in ``[2**(e-1), 2**e)``, clamped so that ``2**±e`` is normal."""
    limit = -math.frexp(torch.finfo(dtype).tiny)[1] + 1
    return torch.frexp(values).exponent.clamp(-limit, limit)


def _pow2(e: Tensor, dtype: torch.dtype) -> Tensor:
    """``2**e`` exactly (a constant: no gradient flows into ``e``)."""
    return torch.ldexp(torch.ones_like(e, dtype=dtype), e)


def _frobenius_bound(x: Tensor) -> Tensor:
    """An upper bound on each matrix's exact Frobenius norm, in float64.

    A sum of squares in float64 (``vector_norm`` upcasts each entry), in any
    order, then a square root: within
    :math:`\\gamma_{N+2}` relative of the exact norm (``N`` entries), plus what the
    squares below float64's normal range lose, :math:`\\sqrt{N \\cdot 2^{-1022}}`.
    """
    numel = x.shape[-2] * x.shape[-1]
    norm: Tensor = torch.linalg.vector_norm(x, dim=(-2, -1), dtype=torch.float64)
    return norm * (1 + _gamma(numel + 2, 2.0**-53)) + math.sqrt(numel) * 2.0**-511


def spectral_norm_bound(matrices: Tensor, *, iterations: int = 4) -> Tensor:
    r"""Return a certified upper bound on the largest singular value of each matrix.

    Gram iteration (Delattre et al., 2023): with :math:`X_0 = W` (the wide
    orientation, :math:`m \le k`) and :math:`X_{t+1} = X_t X_t^\top`,
    :math:`\sigma_{\max}(X_t) = \sigma_{\max}(W)^{2^t}` and

    .. math::

        \sigma_{\max}(W) \le \lVert X_{T+1} \rVert_F^{1/2^{T+1}} , \qquad
        T = \texttt{iterations},

    which tightens quickly: the overshoot factor is
    :math:`(\sum_i (\sigma_i / \sigma_{\max})^{2^{T+2}})^{1/2^{T+2}}`, a few percent
    for a random square 768x768 matrix at the default 4 iterations. Costs one
    product :math:`m \times k \times m` and ``iterations`` products
    :math:`m \times m \times m`, no decomposition.

    The bound holds for the exact :math:`\sigma_{\max}` of the stored matrix,
    rounding included, at every float32 matmul precision setting. The proof,
    which the code follows step by step:

    * **Scaling.** Each iterate is multiplied by a power of two
      :math:`2^{-e}`, a float built exactly by :func:`torch.ldexp` and kept in
      the normal range (the first by the one that brings its largest entry into
      :math:`[1/2, 1)`, the others by the one that brings the computed norm of
      the product there). That is exact, except for results below the normal
      range, which lose less than ``tiny`` (the smallest normal number; this
      also covers flush-to-zero) each: :math:`\sigma(Z) \le 2^{e}(\sigma(\hat X)
      + \sqrt{N}\,\text{tiny})` for :math:`\hat X = fl(2^{-e} Z)` with ``N``
      entries.
    * **Products.** Matrix products are classical (as BLAS and cuBLAS compute
      them: no Strassen-type algorithm). For any order of summation (blocked,
      pairwise, split over threads or SIMD lanes, with or without FMA), an
      inner product of length :math:`n` computed in floating point satisfies
      :math:`|fl(x^\top y) - x^\top y| \le \gamma_n |x|^\top |y|`,
      :math:`\gamma_n = nu/(1 - nu)` (Higham, *Accuracy and Stability of
      Numerical Algorithms*, §3.1): each term passes through at most :math:`n`
      roundings, whatever the tree, so the CPU's and the GPU's reduction
      orders give the same bound. Where PyTorch allows TF32 or bf16
      for float32 products (``"high"``, ``"medium"``, or the backends'
      ``fp32_precision``), the operands are rounded first, so
      :math:`\delta_n = (1 + v)^2 (1 + \gamma_n(2^{-22})) - 1` with
      :math:`v = 2^{-10}` (TF32) or :math:`2^{-7}` (bf16), both with
      truncation, and float32 accumulation at four times its unit roundoff; else
      :math:`\delta_n = \gamma_n(u)`. With :math:`\hat G = fl(X X^\top)`,
      :math:`\lVert \hat G - X X^\top \rVert_2 \le \delta_n \lVert |X||X|^\top
      \rVert_2 + 16 m n\,\text{tiny} \le \delta_n \lVert X \rVert_F^2 + 16 m n\,
      \text{tiny}` (the last term bounds underflow), so
      :math:`\sigma(X)^2 = \sigma(X X^\top) \le \sigma(\hat G) + \delta_n
      \lVert X \rVert_F^2 + 16 m n\,\text{tiny}`.
    * **Norms.** Each :math:`\lVert \hat G_t \rVert_F` (and
      :math:`\lVert X_0 \rVert_F`) is bounded above from a float64 sum of
      squares (within :math:`\gamma_{N+2}(2^{-53})` relative, any order), and
      so :math:`\bar F_{t+1} = 2^{-e_t} \lVert \hat G_t \rVert_F + m\,\text{tiny}
      \ge \lVert X_{t+1} \rVert_F`.
    * **The chain.** From :math:`\beta_{T+1} = \bar F_{T+1} \ge
      \sigma(X_{T+1})` back to 0, :math:`\beta_t = (2^{e_t}(\beta_{t+1} +
      m\,\text{tiny}) + \delta_{n_t} \bar F_t^2 + 16 m n_t\,\text{tiny})^{1/2}
      \ge \sigma(X_t)`, and the result is :math:`2^{e}(\beta_0 +
      \sqrt{mk}\,\text{tiny})`. It is evaluated in float64: its values are
      non-negative and its operations monotone, each rounding by at most
      :math:`2^{-53}` relative, and the square roots halve what comes from the
      step before, so the computed result is within :math:`(1 + 2^{-53})^{20}`
      of the exact one; it is multiplied by :math:`1 + 2^{-45}`, which covers
      that and the rounding of the constants (:math:`\gamma_n`, computed in
      Python floats), before the exact scaling by :math:`2^{e}`. Only a result
      below float64's normal range (float64 matrices of subnormal entries) is
      rounded by that scaling, by at most half its spacing :math:`2^{-1074}`,
      which is added.

    Args:
        matrices: a matrix ``(m, n)`` or a batch ``(..., m, n)``, floating point.
        iterations: number of squarings after the first Gram product, ``>= 0``.
            Default: ``4``.

    Returns:
        A float64 tensor of shape ``matrices.shape[:-2]``: 0 for a zero or empty
        matrix, ``inf`` for a matrix with an infinite entry, NaN for one with a
        NaN (float64 matrices whose :math:`\sigma_{\max}` exceeds float64's
        range get ``inf`` too).

    Raises:
        ValueError: if ``matrices`` has fewer than 2 dimensions or ``iterations < 0``.

    Example:
        >>> import torch
        >>> from torch_constraints import spectral_norm_bound
        >>> w = torch.diag(torch.tensor([3.0, 1.0, 0.5]))
        >>> bound = spectral_norm_bound(w)
        >>> bool(3.0 <= bound < 3.0 * 1.001)
        True
        >>> float(spectral_norm_bound(torch.ones(1000, 1000), iterations=0)) >= 1000
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
    a = a.mT if a.shape[-2] > a.shape[-1] else a
    m, k = a.shape[-2], a.shape[-1]
    if m == 0:
        return torch.zeros(a.shape[:-2], dtype=torch.float64, device=a.device)
    dtype, tiny = a.dtype, torch.finfo(a.dtype).tiny
    amax = a.abs().amax(dim=(-2, -1))
    shift = _exponent(amax, dtype)
    x = a * _pow2(-shift, dtype)[..., None, None]
    fro, inner = _frobenius_bound(x), k  # bar F_t >= ||X_t||_F, and X_t's inner length
    steps: list[tuple[Tensor, int, Tensor]] = []  # (bar F_t, n_t, e_t)
    for _ in range(iterations + 1):
        g = x @ x.mT
        g_norm = _frobenius_bound(g)
        e = _exponent(g_norm, dtype)
        x = g * _pow2(-e, dtype)[..., None, None]  # X_{t+1}, up to underflow
        steps.append((fro, inner, e))
        fro, inner = g_norm * _pow2(-e, torch.float64) + m * tiny, m
    beta = fro  # >= ||X_{T+1}||_F >= sigma(X_{T+1}); then beta >= sigma(X_t) back to t = 0
    for fro, inner, e in reversed(steps):
        sigma_g = (beta + m * tiny) * _pow2(e, torch.float64)
        beta = torch.sqrt(sigma_g + _product_error(inner, dtype) * fro**2 + 16 * m * inner * tiny)
    bound = (beta + math.sqrt(m * k) * tiny) * (1 + 2.0**-45) * _pow2(shift, torch.float64)
    bound = bound + 2.0**-1074  # the scaling rounds a result below float64's normal range
    return torch.where(amax.isfinite(), torch.where(amax > 0, bound, 0.0), amax.double())


def _safe_div(num: Tensor, den: Tensor, where: Tensor) -> Tensor:
    """``num / den`` where ``where`` holds, else 0 (no division by zero anywhere)."""
    return torch.where(where, num / torch.where(where, den, torch.ones_like(den)), 0.0)


def _finite(w: Tensor) -> tuple[Tensor, Tensor]:
    """``w`` with its non-finite matrices zeroed (LAPACK refuses them), and where they were."""
    finite = w.isfinite().all(dim=-1).all(dim=-1)[..., None, None]
    return torch.where(finite, w, 0.0), finite


def _svd(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of finite wide ``w``, computed on ``w.mT`` (LAPACK's tall path is faster on CPU).

    One that fails to converge is retried on ``w``, with ``gesvd`` on CUDA, then in float64.
    """
    attempts: list[tuple[bool, str | None, torch.dtype]] = [(True, None, w.dtype)]
    attempts += [(False, None, w.dtype)]
    attempts += [(True, "gesvd", w.dtype)] if w.is_cuda else []
    attempts += [(True, None, torch.float64)] if w.dtype != torch.float64 else []
    for i, (transpose, driver, dtype) in enumerate(attempts):
        a = w.to(dtype).mT if transpose else w.to(dtype)
        try:
            u, s, vh = torch.linalg.svd(a, full_matrices=False, driver=driver)
            break
        except torch.linalg.LinAlgError:  # type: ignore[attr-defined]
            if i + 1 == len(attempts):
                raise
    u, vh = (vh.mT, u.mT) if transpose else (u, vh)
    return u.to(w.dtype), s.to(w.dtype), vh.to(w.dtype)


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
        w0, finite = _finite(w)
        u, s, vh = _svd(w0)
        ctx.save_for_backward(u, s, vh)
        ctx.radius = radius
        # U min(S, r) V^T is accurate to rounding relative to r; a matrix with no
        # singular value above r is returned as it is (bit for bit).
        clipped = (u * s.clamp_max(radius)[..., None, :]) @ vh
        outside = (s > radius).any(dim=-1)[..., None, None]
        return torch.where(finite, torch.where(outside, clipped, w), torch.nan)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        u, s, vh = ctx.saved_tensors
        # Exactly the identity when no singular value exceeds the radius.
        return grad - _spectral_vjp(grad, u, vh, *_ball_excess_coefficients(s, ctx.radius)), None


class _PolarFn(Function):
    """The polar factor :math:`U V^\\top` of wide ``W``, with the closed-form VJP."""

    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:
        w0, finite = _finite(w)
        u, s, vh = _svd(w0)
        ctx.save_for_backward(u, s, vh)
        return torch.where(finite, u @ vh, torch.nan)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        u, s, vh = ctx.saved_tensors
        return _spectral_vjp(grad, u, vh, *_orthogonal_coefficients(s))


class _PSDFn(Function):
    """:math:`S - Q \\min(\\Lambda, 0) Q^\\top` with :math:`S = (W + W^\\top)/2`."""

    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:
        # Decomposed at unit scale (P(cW) = c P(W)); entries beyond the dtype's
        # range, which only a huge W can have, saturate at its largest value.
        w0, finite = _finite(w)
        e = _exponent(w0.abs().amax(dim=(-2, -1), keepdim=True), w.dtype).clamp_min(0)
        x = w0 * _pow2(-e, w.dtype)
        sym = (x + x.mT) * 0.5
        lam, q = torch.linalg.eigh(sym)
        out = sym - (q * lam.clamp_max(0)[..., None, :]) @ q.mT
        ctx.save_for_backward(lam, q)
        fmax = torch.finfo(w.dtype).max
        out = ((out + out.mT) * 0.5 * _pow2(e, w.dtype)).clamp(-fmax, fmax)
        return torch.where(finite, out, torch.nan)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        lam, q = ctx.saved_tensors
        gs = (grad + grad.mT) * 0.5
        # min(lambda, 0) = -max(-lambda - 0, 0): the ball's excess at radius 0.
        inner = _ball_excess_coefficients(-lam, 0.0)[0] * (q.mT @ gs @ q)
        correction: Tensor = q @ inner @ q.mT
        return gs - (correction + correction.mT) * 0.5


# ----------------------------------------------------------------------------- constraints
class _MatrixConstraint(Constraint):
    """Base of the constraints on ``weight.reshape(out, -1)``."""

    def check(self, x: Tensor, where: str) -> None:
        super().check(x, where)
        try:
            self.matrices(x)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    def matrices(self, x: Tensor) -> Tensor:
        """``x`` as matrices ``(*batch, out, prod(rest))`` in the compute dtype."""
        if x.ndim < 2:
            raise ValueError(
                f"{type(self).__name__} needs a tensor with at least 2 dimensions "
                f"(out, *rest), got shape {tuple(x.shape)}"
            )
        lead = self.batch_ndim(x) + 1
        return x.reshape(*x.shape[:lead], math.prod(x.shape[lead:])).to(_compute_dtype(x.dtype))

    def fusion_key(self) -> Hashable | None:
        if self._event_ndim is None:
            return None
        config = tuple(sorted(self.get_config().items()))
        return (type(self).__name__, config, self._event_ndim)

    def project(self, x: Tensor) -> Tensor:
        """Return the projection; a tensor with no elements is in the set, returned as is."""
        m = self.matrices(x)
        if m.numel() == 0:
            return x.clone()
        return self._project_matrices(m, x.dtype).reshape(x.shape).to(x.dtype)

    def _project_matrices(self, m: Tensor, dtype: torch.dtype) -> Tensor:
        """Project the matrices ``m`` (compute dtype) for a result rounded to ``dtype``."""
        raise NotImplementedError

    def project_many_(self, xs: Sequence[Tensor], *, foreach: bool | None = None) -> None:
        """Project in place, stacking same-shaped tensors for one batched call per shape."""
        del foreach
        # one batched decomposition per stack: worth it up to 1 MiB matrices, unlike a norm
        self._project_stacked_(xs, stack_bytes=64 * 2**20, small_bytes=2**20)


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
    SVD's rounding: 1e-6 to 4e-6 relative for full-rank weights up to 768x768,
    and at most about :math:`2nu` (``n`` the larger side, :math:`u = 2^{-24}`:
    9e-5 at 768) when singular values that are zero up to rounding are clipped
    too, as for a rank-deficient matrix far outside the ball (float32 singular
    vectors of such a cluster are orthonormal only to about :math:`nu`). Use
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
        torch.linalg.LinAlgError: only if the SVD fails to converge on every retry.

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
        if type(iterations) is not int or not 0 <= iterations <= 30:
            message = f"iterations must be an int in [0, 30], got {iterations!r}"
            raise ValueError(f"SpectralBall: {message}")
        self.iterations = iterations

    def _project_matrices(self, m: Tensor, dtype: torch.dtype) -> Tensor:
        if self.method == "svd":
            return _wide(_SpectralBallFn.apply, m, self.radius)
        bound = spectral_norm_bound(m, iterations=self.iterations)
        u = torch.finfo(dtype).eps / 2
        fro = _frobenius_bound(m)
        # fl(c * W) = c*W + E with ||E||_2 <= u ||c*W||_F; c itself rounds by u.
        scale = self.radius / ((1 + 2 * u) * (bound + u * fro))
        factor = torch.where(bound <= self.radius, 1.0, scale).to(m.dtype)[..., None, None]
        return torch.where(_finite(m)[1], m * factor, torch.nan)

    @torch.no_grad()
    def project_(self, x: Tensor) -> Tensor:
        """Project in place; the SVD runs only on matrices not certified inside."""
        if self.method == "rescale" or x.numel() == 0:
            return x.copy_(self.project(x))
        lead = self.batch_ndim(x) + 1
        flat = x.reshape(-1, *x.shape[lead - 1 : lead], math.prod(x.shape[lead:]))
        m = flat.to(_compute_dtype(x.dtype))
        # sigma_max >= every row's and column's norm, and 2 gamma_{n+2} covers their
        # rounding: O(mn) spares clearly infeasible matrices the bound before their SVD.
        rows, columns = (torch.linalg.vector_norm(m, dim=d).amax(dim=-1) for d in (-1, -2))
        slack = 2 * _gamma(max(m.shape[-2:]) + 2, torch.finfo(m.dtype).eps / 2)
        lower = torch.maximum(rows, columns) * (1 - slack)
        outside = (lower > self.radius).nonzero().flatten().tolist()  # sync 1
        unsure = [i for i in range(flat.shape[0]) if i not in set(outside)]
        # A cheap bound first (one squaring) certifies matrices well inside; the
        # full one only what it leaves (syncs 2 and 3).
        for iterations in sorted({min(1, self.iterations), self.iterations}):
            if unsure:  # NaN bounds (non-finite matrices) stay unsure
                bound = spectral_norm_bound(m[unsure], iterations=iterations)
                unsure = [unsure[i] for i in (~(bound <= self.radius)).nonzero().flatten().tolist()]
        chosen = sorted(outside + unsure)
        if not chosen:
            return x
        flat[chosen] = _wide(_SpectralBallFn.apply, m[chosen], self.radius).to(x.dtype)
        if flat.data_ptr() != x.data_ptr() or not x.is_contiguous():
            x.copy_(flat.reshape(x.shape))
        return x


class Orthogonal(_MatrixConstraint):
    r"""Keep the weight on the Stiefel manifold: orthonormal rows (or columns if tall).

    .. math::

        C = \{W \in \mathbb{R}^{m \times n} : W W^\top = I_m\} \ (m \le n), \quad
        \{W : W^\top W = I_n\} \ (m > n), \qquad
        P_C(W) = U V^\top ,

    the polar factor of the thin SVD :math:`W = U \Sigma V^\top`: the nearest
    matrix with orthonormal rows (columns) in Frobenius norm. It is unique when
    :math:`W` has full rank; for rank-deficient :math:`W` this returns the one
    the SVD picks. An empty weight, ``(n, 0)`` or ``(0, n)``, has orthonormal
    columns or rows vacuously, and is returned as it is.

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
        torch.linalg.LinAlgError: only if the SVD fails to converge on every retry.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import Orthogonal, constrain
        >>> layer = constrain(nn.Linear(6, 4), "weight", Orthogonal())
        >>> w = layer.weight
        >>> torch.allclose(w @ w.T, torch.eye(4), atol=1e-5)
        True
    """

    def _project_matrices(self, m: Tensor, dtype: torch.dtype) -> Tensor:
        return _wide(_PolarFn.apply, m)


class PSD(_MatrixConstraint):
    r"""Keep a square weight symmetric positive semidefinite.

    .. math::

        C = \{W = W^\top : W \succeq 0\}, \qquad
        P_C(W) = Q \operatorname{diag}(\max(\lambda, 0)) Q^\top ,

    with :math:`Q \operatorname{diag}(\lambda) Q^\top` the eigendecomposition of
    the symmetric part :math:`S = (W + W^\top)/2` (Higham, 1988). Computed as
    :math:`S - Q \operatorname{diag}(\min(\lambda, 0)) Q^\top`, so a symmetric
    matrix whose eigenvalues are all non-negative is returned unchanged. A matrix
    with entries above 1 is decomposed scaled by a power of two
    (:math:`P_C(cW) = c P_C(W)`), so huge finite weights give finite results: an
    entry of the projection beyond the dtype's range (it can exceed the input's
    largest entry) saturates at the largest finite value.

    Raises:
        ValueError: at registration (and from :meth:`project`), unless the weight
            is square once reshaped to ``(out, -1)``; an empty ``(0, 0)`` weight is.

    Example:
        >>> import torch
        >>> from torch_constraints import PSD
        >>> PSD().project(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
        tensor([[1., 0.],
                [0., 0.]])
    """

    def matrices(self, x: Tensor) -> Tensor:
        m = super().matrices(x)
        if m.shape[-2] != m.shape[-1]:
            raise ValueError(
                f"PSD needs a square weight (out == prod(rest)), got shape {tuple(x.shape)}, "
                f"a {m.shape[-2]}x{m.shape[-1]} matrix"
            )
        return m

    def _project_matrices(self, m: Tensor, dtype: torch.dtype) -> Tensor:
        return _PSDFn.apply(m)  # type: ignore[no-any-return,no-untyped-call]
