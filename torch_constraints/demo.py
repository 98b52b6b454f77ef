"""Demo: ``python -m torch_constraints.demo`` trains a WGAN on the CPU, its critic constrained.

The data are a synthetic mixture of 8 Gaussians on a circle (no download). By
default (``--critic clip``) the critic is clipped the way Arjovsky et al. (2017)
clip it, every parameter to ``[-c, c]`` after each optimizer step, but with this
library:

.. code-block:: python

    constrain_all(critic, -clip, clip, parametrize=False)  # the critic is left as it is
    project_after_step(critic_optimizer, critic)  # and clipped after each step

``--critic spectral`` instead keeps the spectral norm of every critic weight at
most ``radius`` (:class:`~torch_constraints.SpectralBall`, projected after each
step only), so the critic is certified ``radius ** 4``-Lipschitz (its
activations are 1-Lipschitz); ``--compare`` trains both and draws them side by
side.

Training follows the paper's recipe: RMSprop, ``n_critic`` critic steps per
generator step, ``c = 0.01``. At the end the demo writes a PNG (real and generated
samples over the critic's landscape, the critic's weights or singular values
against their bound, the loss curves) and prints a summary.

The training itself (:func:`train`) needs torch only; the command line adds a
progress bar (tqdm) and the figure (matplotlib), the ``demo`` extra.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .functional import box_bounds
from .hooks import project_after_step
from .matrix import SpectralBall, spectral_norm_bound
from .monitoring import saturation
from .registration import constrain_all

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Config",
    "History",
    "Summary",
    "at_bounds_fraction",
    "lipschitz_bound",
    "main",
    "mode_coverage",
    "sample_mixture",
    "train",
]

INSTALL_HINT = "pip install 'torch-constraints[demo]'"
DEMO_DEPENDENCIES = ("matplotlib", "tqdm")

#: Geometry of the data: 8 Gaussians of standard deviation ``STD`` on a circle.
MODES, RADIUS, STD = 8, 2.0, 0.05

#: The critics :func:`train` knows: ``"clip"`` (weight clipping) and ``"spectral"``
#: (a spectral-norm ball on every weight).
CRITICS = ("clip", "spectral")


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the demo; the defaults are the command line's defaults.

    ``clip``, ``n_critic`` and RMSprop are the original WGAN recipe. The learning
    rate (four times the paper's 5e-5), the width and the number of steps are tuned
    so that the default run covers the 8 modes in one to two and a half minutes on
    one CPU core (59 to 149 s measured on a shared 2-core machine).
    ``critic`` chooses the constraint (``"clip"`` or ``"spectral"``): ``clip`` applies
    to the ``"clip"`` critic, ``radius`` (the bound on each weight's spectral norm)
    to the ``"spectral"`` one.
    """

    steps: int = 5000
    clip: float = 0.01
    n_critic: int = 5
    lr: float = 2e-4
    batch_size: int = 256
    hidden: int = 128
    noise_dim: int = 2
    seed: int = 0
    device: str = "cpu"
    critic: str = "clip"
    radius: float = 1.0


@dataclass
class History:
    """Per generator step: the last critic loss and the generator loss."""

    critic_loss: list[float] = field(default_factory=list)
    generator_loss: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Summary:
    """What the demo prints at the end.

    ``at_bounds`` is :func:`at_bounds_fraction` of the critic, ``None`` for a critic
    without box constraints (the spectral one); ``lipschitz_bound`` is the
    critic's certified Lipschitz bound (``lipschitz_bound(critic)``); ``critic``
    is ``config.critic``.
    """

    steps: int
    critic_loss: float
    at_bounds: float | None
    modes_covered: int
    seconds: float
    critic: str = "clip"
    lipschitz_bound: float = math.nan


def sample_mixture(n: int, *, generator: torch.Generator, device: str | torch.device) -> Tensor:
    r"""Draw ``n`` points from the 8-Gaussian mixture, shape ``(n, 2)``.

    Mode :math:`k` is centred at :math:`r(\cos 2\pi k/8, \sin 2\pi k/8)` with
    :math:`r` = ``RADIUS``, standard deviation ``STD`` per coordinate.

    Example:
        >>> import torch
        >>> from torch_constraints.demo import sample_mixture
        >>> x = sample_mixture(1000, generator=torch.Generator().manual_seed(0), device="cpu")
        >>> x.shape, bool(x.norm(dim=1).sub(2.0).abs().max() < 0.5)
        (torch.Size([1000, 2]), True)
    """
    mode = torch.randint(MODES, (n,), generator=generator, device=device)
    centres = _centres(device)[mode]
    noise = torch.randn(n, 2, generator=generator, device=device)
    return centres + STD * noise


def mode_coverage(samples: Tensor, *, min_share: float = 0.25, within: float = 4.0) -> int:
    """Count the modes that ``samples`` cover.

    A sample belongs to a mode when it lies within ``within`` standard deviations
    (``within * STD``) of the mode's centre; a mode is covered when at least
    ``min_share`` of its fair share of the samples (``len(samples) / 8``) belongs
    to it.

    Example:
        >>> import torch
        >>> from torch_constraints.demo import mode_coverage, sample_mixture
        >>> real = sample_mixture(2000, generator=torch.Generator().manual_seed(0), device="cpu")
        >>> mode_coverage(real), mode_coverage(torch.zeros(2000, 2))
        (8, 0)
    """
    distances = torch.cdist(samples.float(), _centres(samples.device))
    near = distances < within * STD
    counts = near.sum(dim=0)
    return int((counts >= min_share * len(samples) / MODES).sum())


def at_bounds_fraction(module: nn.Module) -> float:
    r"""Return the share of ``module``'s box-constrained entries that sit on a bound.

    Pools :func:`~torch_constraints.saturation` (one share per box-constrained
    tensor) over the tensors, weighted by their sizes. The bounds are those
    registered, in each tensor's dtype: rounded inward, so in float32 the bound
    0.01 is 0.0099999998, and comparing with 0.01 would find no weight at the
    bound. Returns 0.0 when no tensor carries a box (the spectral critic).

    Example:
        A ``Linear(100, 100)`` starts uniform in :math:`\pm 0.1`; clipping it to
        :math:`\pm 0.01` puts about 90% of its parameters on a bound:

        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints import constrain_all
        >>> from torch_constraints.demo import at_bounds_fraction
        >>> _ = torch.manual_seed(0)
        >>> layer = nn.Linear(100, 100)
        >>> _ = constrain_all(layer, -0.01, 0.01)
        >>> round(at_bounds_fraction(layer), 2)
        0.9
        >>> at_bounds_fraction(nn.Linear(100, 100))  # nothing constrained, nothing on a bound
        0.0
    """
    shares = saturation(module)
    sizes = {name: _numel(module, name) for name in shares}
    total = sum(sizes.values())
    return sum(shares[name] * size for name, size in sizes.items()) / total if total else 0.0


def lipschitz_bound(critic: nn.Module, *, iterations: int = 16) -> float:
    r"""Return a certified upper bound on the Lipschitz constant of an MLP ``critic``.

    The product, over the ``nn.Linear`` layers of ``critic`` in order, of
    :func:`~torch_constraints.spectral_norm_bound` of each weight (as the forward
    pass sees it): a bound on the critic's Lipschitz constant in the Euclidean
    norm when the rest of the network is 1-Lipschitz, as the demo's leaky ReLUs
    are (biases do not count). Each factor is an upper bound on the exact
    :math:`\sigma_{\max}` of the stored float32 weight, rounding included.

    After a projection onto a :class:`~torch_constraints.SpectralBall` many
    singular values sit at the radius, where the Gram iteration needs many
    squarings to be tight: 16 leave a slack of about 1e-3 per 128x128 layer
    (float32 rounding), where 4 leave several percent.

    Args:
        critic: the module; its ``nn.Linear`` layers are taken in
            ``critic.modules()`` order.
        iterations: Gram iterations of each bound. Default: ``16``.

    Raises:
        ValueError: if ``critic`` has no ``nn.Linear`` layer.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch_constraints.demo import lipschitz_bound
        >>> critic = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = critic[0].weight.copy_(torch.diag(torch.tensor([3.0, 0.5])))
        ...     _ = critic[2].weight.copy_(torch.tensor([[0.0, 2.0]]))
        >>> bound = lipschitz_bound(critic)  # 3 * 2, certified: never below
        >>> bool(6.0 <= bound < 6.0 * 1.001)
        True
    """
    bound = 1.0
    layers = [layer for layer in critic.modules() if isinstance(layer, nn.Linear)]
    if not layers:
        raise ValueError(f"lipschitz_bound: {type(critic).__name__} has no nn.Linear layer")
    with torch.no_grad():
        for layer in layers:
            bound *= float(spectral_norm_bound(layer.weight, iterations=iterations))
    return bound


def train(
    config: Config, *, on_step: Callable[[int, History], None] | None = None
) -> tuple[nn.Module, nn.Module, History]:
    """Train the WGAN; return ``(generator, critic, history)``.

    Needs torch only. With ``config.critic == "clip"`` the critic's parameters
    are all constrained to ``[-clip, clip]``; with ``"spectral"`` every critic
    weight is kept in a :class:`~torch_constraints.SpectralBall` of
    ``config.radius`` and the biases are free. Both use ``parametrize=False``: the
    critic's forward pass is the plain one, and its stored parameters are projected
    after every RMSprop step, as the WGAN paper clips them (a parametrization would
    train the same critic, at the cost of a clamp, or an SVD, in every forward
    pass). Deterministic on the CPU for a given ``config.seed``; both critics start
    from the same initial weights.

    Args:
        config: the hyperparameters.
        on_step: called after every generator step with the step index (from 0)
            and the history so far (the command line updates its progress bar).

    Raises:
        ValueError: if ``config.critic`` is not ``"clip"`` or ``"spectral"``.

    Example:
        >>> from torch_constraints import named_constraints
        >>> from torch_constraints.demo import Config, train
        >>> generator, critic, history = train(Config(steps=3, hidden=8))
        >>> len(history.critic_loss), len(list(named_constraints(critic)))
        (3, 8)
        >>> all(bool(p.abs().max() <= 0.01) for p in critic.parameters())
        True
        >>> _, critic, _ = train(Config(steps=3, hidden=8, critic="spectral"))
        >>> [name for name, _ in named_constraints(critic)]
        ['0.weight', '2.weight', '4.weight', '6.weight']
    """
    if config.critic not in CRITICS:
        raise ValueError(f"Config.critic must be one of {CRITICS}, got {config.critic!r}")
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    generator = _mlp(config.noise_dim, config.hidden, 2, nn.ReLU).to(device)
    # A leaky critic: with weights as small as 0.01, a ReLU critic can lose every
    # active unit and stop giving the generator any gradient.
    critic = _mlp(2, config.hidden, 1, partial(nn.LeakyReLU, 0.05)).to(device)
    # The library part: constrain the critic, and project it after each step.
    if config.critic == "clip":  # every parameter in [-clip, clip]
        constrain_all(critic, -config.clip, config.clip, parametrize=False)
    else:  # every weight's spectral norm <= radius; the biases are free
        constrain_all(critic, SpectralBall(config.radius), include={"weight"}, parametrize=False)
    critic_optimizer = torch.optim.RMSprop(critic.parameters(), lr=config.lr)
    project_after_step(critic_optimizer, critic)
    generator_optimizer = torch.optim.RMSprop(generator.parameters(), lr=config.lr)

    rng = torch.Generator(device=device).manual_seed(config.seed)
    history = History()
    for step in range(config.steps):
        for _ in range(config.n_critic):
            real = sample_mixture(config.batch_size, generator=rng, device=device)
            with torch.no_grad():
                fake = generator(_noise(config, rng, device))
            # The critic maximizes E[f(real)] - E[f(fake)]: minimize the negative.
            # (One pass over both batches: the critic treats each sample alone.)
            f_real, f_fake = critic(torch.cat([real, fake])).split(config.batch_size)
            critic_loss = f_fake.mean() - f_real.mean()
            critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            critic_optimizer.step()  # project_after_step projects the critic here
        generator_loss = -critic(generator(_noise(config, rng, device))).mean()
        generator_optimizer.zero_grad(set_to_none=True)
        generator_loss.backward()
        generator_optimizer.step()
        history.critic_loss.append(critic_loss.item())
        history.generator_loss.append(generator_loss.item())
        if on_step is not None:
            on_step(step, history)
    return generator, critic, history


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo from the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    _refuse_options_of_the_other_critic(parser, args)
    modules = _import_demo_dependencies()
    if modules is None:
        return 1
    _, tqdm = modules
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as error:  # unknown or unavailable device
        parser.error(f"--device {args.device}: {error}")
    config = Config(
        steps=args.steps,
        clip=args.clip,
        n_critic=args.n_critic,
        lr=args.lr,
        batch_size=args.batch_size,
        hidden=args.hidden,
        seed=args.seed,
        device=args.device,
        critic=args.critic,
        radius=args.radius,
    )
    configs = [replace(config, critic=critic) for critic in CRITICS] if args.compare else [config]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # fails before training, not after
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        runs = [_run(run_config, args, tqdm) for run_config in configs]
        _figure(runs).savefig(out, dpi=100)
    finally:
        torch.set_num_threads(threads)
    if len(runs) == 1:  # one run's time includes its figure
        runs = [replace(runs[0], summary=replace(runs[0].summary, seconds=_since(start)))]
    print(_report(runs, out))
    return 0


@dataclass(frozen=True)
class _Run:
    """One trained WGAN, with what the figure and the report need."""

    config: Config
    critic: nn.Module
    history: History
    samples: Tensor
    summary: Summary


def _run(config: Config, args: argparse.Namespace, tqdm: Any) -> _Run:
    """Train with a progress bar and evaluate the result (timed, without the figure)."""
    bar = tqdm.tqdm(
        total=config.steps, desc=f"WGAN {config.critic}", unit="step", disable=args.no_progress
    )

    def on_step(step: int, history: History) -> None:
        bar.update(1)
        if step % 25 == 0 or step + 1 == config.steps:
            bar.set_postfix(
                critic=f"{history.critic_loss[-1]:+.2e}",
                generator=f"{history.generator_loss[-1]:+.2e}",
                refresh=False,
            )

    start = time.perf_counter()
    generator, critic, history = train(config, on_step=on_step)
    bar.close()

    samples = _generate(generator, config, 2000)
    summary = Summary(
        steps=config.steps,
        critic_loss=history.critic_loss[-1],
        at_bounds=at_bounds_fraction(critic) if config.critic == "clip" else None,
        modes_covered=mode_coverage(samples),
        seconds=_since(start),
        critic=config.critic,
        lipschitz_bound=lipschitz_bound(critic),
    )
    return _Run(config, critic, history, samples, summary)


# ----------------------------------------------------------------------------- helpers
def _since(start: float) -> float:
    return time.perf_counter() - start


def _numel(module: nn.Module, qualname: str) -> int:
    """Number of entries of the tensor ``qualname`` (``"0.weight"``) of ``module``."""
    owner, _, name = qualname.rpartition(".")
    with torch.no_grad():
        tensor = getattr(module.get_submodule(owner), name)
    return int(tensor.numel())


def _centres(device: str | torch.device) -> Tensor:
    angles = torch.arange(MODES, dtype=torch.float32) * (2 * math.pi / MODES)
    return (RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)).to(device)


def _mlp(
    inputs: int, hidden: int, outputs: int, activation: Callable[[], nn.Module]
) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        activation(),
        nn.Linear(hidden, hidden),
        activation(),
        nn.Linear(hidden, hidden),
        activation(),
        nn.Linear(hidden, outputs),
    )


def _noise(config: Config, rng: torch.Generator, device: torch.device) -> Tensor:
    return torch.randn(config.batch_size, config.noise_dim, generator=rng, device=device)


@torch.no_grad()
def _generate(generator: nn.Module, config: Config, n: int) -> Tensor:
    device = next(generator.parameters()).device
    rng = torch.Generator(device=device).manual_seed(config.seed + 1)
    noise = torch.randn(n, config.noise_dim, generator=rng, device=device)
    samples: Tensor = generator(noise).cpu()
    return samples


def _import_demo_dependencies() -> tuple[Any, Any] | None:
    """Import matplotlib and tqdm, or print how to install them and return None."""
    missing = []
    modules = []
    for name in DEMO_DEPENDENCIES:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        print(
            f"torch_constraints.demo needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed.\n"
            f"Install the demo extra:  {INSTALL_HINT}",
            file=sys.stderr,
        )
        return None
    return modules[0], modules[1]


def _figure(runs: Sequence[_Run]) -> Figure:
    """One row per run: samples over the critic's landscape, the constraint, the losses."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.6 * len(runs)), layout="constrained")
    rows = figure.subplots(len(runs), 3, squeeze=False)
    for run, (scatter, constraint, losses) in zip(runs, rows, strict=True):
        # One run: the titles of the original figure; several: each row says whose it is.
        prefix = f"{run.config.critic} critic: " if len(runs) > 1 else ""
        _draw_samples(figure, scatter, run)
        if run.config.critic == "clip":
            _draw_weights(constraint, run)
        else:
            _draw_singular_values(constraint, run)
        _draw_losses(losses, run)
        if prefix:
            summary = run.summary
            scatter.set_title(f"{prefix}samples ({summary.modes_covered} of {MODES} modes)")
            title = constraint.get_title().removeprefix("Critic ")
            constraint.set_title(
                f"{prefix}{title}\ncertified Lipschitz bound {summary.lipschitz_bound:.4g}"
            )
            losses.set_title(f"{prefix}losses")
    return figure


def _draw_samples(figure: Figure, scatter: Any, run: _Run) -> None:
    """Real and generated samples over the critic's landscape."""
    lim = RADIUS + 1.0
    grid = torch.linspace(-lim, lim, 121)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    device = next(run.critic.parameters()).device
    with torch.no_grad():
        points = torch.stack([xx.flatten(), yy.flatten()], dim=1).to(device)
        landscape = run.critic(points).reshape(xx.shape).cpu()
    contour = scatter.contourf(xx.numpy(), yy.numpy(), landscape.numpy(), levels=20, cmap="Greys")
    figure.colorbar(contour, ax=scatter, label="critic value")
    samples = run.samples
    real = sample_mixture(
        len(samples), generator=torch.Generator().manual_seed(run.config.seed + 2), device="cpu"
    )
    scatter.scatter(real[:, 0], real[:, 1], s=4, alpha=0.5, c="tab:blue", label="real")
    scatter.scatter(samples[:, 0], samples[:, 1], s=4, alpha=0.5, c="tab:orange", label="generated")
    scatter.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title="Samples")
    _legend_below(scatter, scatter.get_legend_handles_labels()[0], markerscale=3)


def _draw_weights(weights: Any, run: _Run) -> None:
    """The clipped critic's parameters against the clip range the library applies."""
    clip = run.config.clip
    values = torch.cat([p.detach().flatten().cpu() for p in run.critic.parameters()])
    lo, hi = box_bounds(values, -clip, clip)  # float32-rounded, as applied
    weights.hist(values.numpy(), bins=60, color="tab:gray")
    for bound in (lo, hi):
        if bound is not None:
            weights.axvline(float(bound), color="tab:red", linestyle="--")
    weights.set(
        title=f"Critic weights (clip range ±{clip:g} dashed)",
        xlabel="value",
        ylabel="count",
        yscale="log",
    )
    weights.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))


def _draw_singular_values(axes: Any, run: _Run) -> None:
    """The singular values of each spectral critic weight against the radius."""
    radius = run.config.radius
    layers = [layer for layer in run.critic.modules() if isinstance(layer, nn.Linear)]
    for i, layer in enumerate(layers, start=1):
        values = torch.linalg.svdvals(layer.weight.detach().cpu().double())
        out_features, in_features = layer.weight.shape
        axes.plot(
            torch.arange(1, len(values) + 1).numpy(),
            values.numpy(),
            marker="o" if len(values) < 8 else None,
            label=f"layer {i} ({out_features}x{in_features})",
        )
    axes.axhline(radius, color="tab:red", linestyle="--")
    axes.set(
        title=f"Critic singular values (radius {radius:g} dashed)",
        xlabel="index (largest first)",
        ylabel="singular value",
        ylim=(0, 1.1 * radius),
    )
    _legend_below(axes, axes.get_legend_handles_labels()[0])


def _draw_losses(losses: Any, run: _Run) -> None:
    """The critic's loss on the left axis, the generator's (offset by the critic's
    arbitrary constant) on the right one."""
    history = run.history
    steps = torch.arange(1, len(history.critic_loss) + 1).numpy()
    critic_loss = torch.tensor(history.critic_loss)
    losses.plot(steps, critic_loss.numpy(), lw=0.5, alpha=0.3, color="tab:blue")
    losses.plot(
        steps,
        _smooth(critic_loss).numpy(),
        lw=1.5,
        color="tab:blue",
        label="critic: E[f(fake)] - E[f(real)]",
    )
    losses.set(title="Losses", xlabel="generator step")
    losses.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    losses.tick_params(axis="y", colors="tab:blue")
    right = losses.twinx()
    right.plot(
        steps,
        _smooth(torch.tensor(history.generator_loss)).numpy(),
        lw=1.5,
        color="tab:orange",
        label="generator: -E[f(fake)]",
    )
    right.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    right.tick_params(axis="y", colors="tab:orange")
    handles = losses.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    _legend_below(losses, handles)


def _legend_below(axes: Any, handles: list[Any], **options: Any) -> None:
    """A legend under the axes' x label, where it covers nothing whatever the run."""
    axes.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, **options
    )


def _smooth(values: Tensor, window: int = 50) -> Tensor:
    """Moving average over up to ``window`` steps (shorter at the start)."""
    sums = torch.cat([torch.zeros(1, dtype=values.dtype), values.cumsum(0)])
    ends = torch.arange(1, len(values) + 1)
    starts = (ends - window).clamp(min=0)
    smoothed: Tensor = (sums[ends] - sums[starts]) / (ends - starts)
    return smoothed


def _report(runs: Sequence[_Run], out: Path) -> str:
    """The summary: ``label: value`` lines, one value column per run."""
    config = runs[0].config
    rows: list[tuple[str, list[str]]] = [
        ("figure", [str(out)]),
        ("steps", [f"{config.steps} generator steps x {config.n_critic} critic steps"]),
    ]
    if len(runs) == 1:
        summary = runs[0].summary
        rows.append(
            ("critic loss", [f"{summary.critic_loss:+.6e} (final; minus the Wasserstein estimate)"])
        )
        if summary.at_bounds is not None:
            rows.append(
                (
                    "at the bounds",
                    [f"{summary.at_bounds:.1%} of critic weights at ±{config.clip:g}"],
                )
            )
        else:
            rows.append(("lipschitz bound", [_lipschitz_text(runs[0])]))
        rows += [
            ("modes covered", [f"{summary.modes_covered} of {MODES}"]),
            ("time", [f"{summary.seconds:.1f} s"]),
        ]
    else:
        summaries = [run.summary for run in runs]
        rows += [
            ("critic", [_critic_text(run.config) for run in runs]),
            ("critic loss", [f"{s.critic_loss:+.6e}" for s in summaries]),
            (
                "at the bounds",
                ["no box" if s.at_bounds is None else f"{s.at_bounds:.1%}" for s in summaries],
            ),
            ("lipschitz bound", [f"{s.lipschitz_bound:.6g}" for s in summaries]),
            ("modes covered", [f"{s.modes_covered} of {MODES}" for s in summaries]),
            ("time", [f"{s.seconds:.1f} s" for s in summaries]),
            (
                "note",
                [
                    "the lipschitz bound is certified: the product of the layers' "
                    "spectral_norm_bound (the leaky ReLUs are 1-Lipschitz)"
                ],
            ),
        ]
    width = max(len(label) for label, _ in rows) + 2
    column = 22
    lines = []
    for label, values in rows:
        cells = [value.ljust(column) for value in values[:-1]] + values[-1:]
        lines.append(f"{label + ':':<{width}}{''.join(cells)}")
    return "\n".join(lines)


def _critic_text(config: Config) -> str:
    if config.critic == "clip":
        return f"clip ±{config.clip:g}"
    return f"spectral ≤ {config.radius:g}"


def _lipschitz_text(run: _Run) -> str:
    layers = sum(isinstance(layer, nn.Linear) for layer in run.critic.modules())
    return (
        f"{run.summary.lipschitz_bound:.6g} (certified: the product of the {layers} weights' "
        f"spectral norms, each ≤ {run.config.radius:g})"
    )


def _parser() -> argparse.ArgumentParser:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m torch_constraints.demo",
        description=(
            "Train a WGAN on a mixture of 8 Gaussians, its critic weight-clipped or "
            "spectrally constrained, and plot it."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--critic",
        choices=CRITICS,
        default=defaults.critic,
        help="clip every critic parameter, or bound every critic weight's spectral norm",
    )
    which.add_argument(
        "--compare",
        action="store_true",
        help="train both critics (same seed) and draw them side by side",
    )
    parser.add_argument(
        "--steps", type=_positive(int), default=defaults.steps, help="generator steps"
    )
    parser.add_argument(
        "--clip",
        type=_positive(float),
        default=defaults.clip,
        action=_Given,
        help="clip critic parameters to [-clip, clip] (clip critic only)",
    )
    parser.add_argument(
        "--radius",
        type=_positive(float),
        default=defaults.radius,
        action=_Given,
        help="bound on each critic weight's spectral norm (spectral critic only)",
    )
    parser.set_defaults(given=frozenset())
    parser.add_argument(
        "--n-critic",
        type=_positive(int),
        default=defaults.n_critic,
        help="critic steps per generator step",
    )
    parser.add_argument(
        "--lr", type=_positive(float), default=defaults.lr, help="RMSprop learning rate"
    )
    parser.add_argument(
        "--batch-size",
        type=_positive(int),
        default=defaults.batch_size,
        help="real and generated samples per batch",
    )
    parser.add_argument(
        "--hidden", type=_positive(int), default=defaults.hidden, help="width of the hidden layers"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="same seed, same numbers on the CPU"
    )
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda, ...")
    parser.add_argument(
        "--threads",
        type=_positive(int),
        default=1,
        help="CPU threads (one is fastest for networks this small)",
    )
    parser.add_argument("--out", default="wgan-demo.png", help="where to write the figure")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


class _Given(argparse.Action):
    """Store the value, and record in ``given`` that the option was on the command line."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = namespace.given | {self.dest}


def _refuse_options_of_the_other_critic(parser: argparse.ArgumentParser, args: Any) -> None:
    """``--clip`` means nothing to the spectral critic, ``--radius`` nothing to the clip one."""
    if args.compare:
        return
    for option, critic in (("clip", "clip"), ("radius", "spectral")):
        if option in args.given and args.critic != critic:
            parser.error(
                f"--{option} applies to the {critic} critic only, not to --critic "
                f"{args.critic}: drop it, use --critic {critic}, or --compare to train both"
            )


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


if __name__ == "__main__":
    sys.exit(main())
