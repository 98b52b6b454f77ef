"""Demo: ``python -m torch_constraints.demo`` trains a weight-clipped WGAN on the CPU.

The data are a synthetic mixture of 8 Gaussians on a circle (no download). The
critic is clipped the way Arjovsky et al. (2017) clip it, every parameter to
``[-c, c]`` after each optimizer step, but with this library:

.. code-block:: python

    constrain_all(critic, -clip, clip)           # the forward pass sees clipped weights
    project_after_step(critic_optimizer, critic)  # the raw weights are clipped after each step

Training follows the paper's recipe: RMSprop, ``n_critic`` critic steps per
generator step, ``c = 0.01``. At the end the demo writes a PNG (real and generated
samples over the critic's landscape, the histogram of the critic's weights with
the clip range marked, the loss curves) and prints a summary.

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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .functional import box_bounds
from .hooks import project_after_step
from .registration import constrain_all

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Config",
    "History",
    "Summary",
    "at_bounds_fraction",
    "main",
    "mode_coverage",
    "sample_mixture",
    "train",
]

INSTALL_HINT = "pip install 'torch-constraints[demo]'"
DEMO_DEPENDENCIES = ("matplotlib", "tqdm")

#: Geometry of the data: 8 Gaussians of standard deviation ``STD`` on a circle.
MODES, RADIUS, STD = 8, 2.0, 0.05


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the demo; the defaults are the command line's defaults.

    ``clip``, ``n_critic`` and RMSprop are the original WGAN recipe. The learning
    rate (four times the paper's 5e-5), the width and the number of steps are tuned
    so that the default run covers the 8 modes in about a minute on one CPU core.
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


@dataclass
class History:
    """Per generator step: the last critic loss and the generator loss."""

    critic_loss: list[float] = field(default_factory=list)
    generator_loss: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Summary:
    """What the demo prints at the end."""

    steps: int
    critic_loss: float
    at_bounds: float
    modes_covered: int
    seconds: float


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


def at_bounds_fraction(module: nn.Module, clip: float) -> float:
    r"""Return the fraction of ``module``'s parameters that sit exactly on ``-clip`` or ``clip``.

    The comparison uses the bounds the library applies in each tensor's dtype
    (:func:`~torch_constraints.functional.box_bounds`): they are rounded inward, so
    in float32 the bound 0.01 is 0.0099999998, and comparing with 0.01 would
    find no weight at the bound.

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
        >>> round(at_bounds_fraction(layer, 0.01), 2)
        0.9
        >>> at_bounds_fraction(layer, 0.02)  # nothing sits on bounds that were not applied
        0.0
    """
    at_bound = total = 0
    for parameter in module.parameters():
        lo, hi = box_bounds(parameter, -clip, clip)
        values = parameter.detach()
        on_bound = torch.zeros_like(values, dtype=torch.bool)
        for bound in (lo, hi):
            if bound is not None:
                on_bound |= values == bound
        at_bound += int(on_bound.sum())
        total += values.numel()
    return at_bound / total if total else 0.0


def train(
    config: Config, *, on_step: Callable[[int, History], None] | None = None
) -> tuple[nn.Module, nn.Module, History]:
    """Train the WGAN; return ``(generator, critic, history)``.

    Needs torch only. The critic's parameters are all constrained to
    ``[-clip, clip]`` and projected after every RMSprop step. Deterministic on the
    CPU for a given ``config.seed``.

    Args:
        config: the hyperparameters.
        on_step: called after every generator step with the step index (from 0)
            and the history so far (the command line updates its progress bar).

    Example:
        >>> from torch_constraints import named_constraints
        >>> from torch_constraints.demo import Config, train
        >>> generator, critic, history = train(Config(steps=3, hidden=8))
        >>> len(history.critic_loss), len(list(named_constraints(critic)))
        (3, 8)
        >>> all(bool(p.abs().max() <= 0.01) for p in critic.parameters())
        True
    """
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    generator = _mlp(config.noise_dim, config.hidden, 2, nn.ReLU).to(device)
    # A leaky critic: with weights as small as 0.01, a ReLU critic can lose every
    # active unit and stop giving the generator any gradient.
    critic = _mlp(2, config.hidden, 1, partial(nn.LeakyReLU, 0.05)).to(device)
    # The library part: clip every critic parameter, in the forward pass and after each step.
    constrain_all(critic, -config.clip, config.clip)
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
            critic_optimizer.step()  # project_after_step clips the critic here
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
    args = _parser().parse_args(argv)
    modules = _import_demo_dependencies()
    if modules is None:
        return 1
    _, tqdm = modules
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as error:  # unknown or unavailable device
        _parser().error(f"--device {args.device}: {error}")
    config = Config(
        steps=args.steps,
        clip=args.clip,
        n_critic=args.n_critic,
        lr=args.lr,
        batch_size=args.batch_size,
        hidden=args.hidden,
        seed=args.seed,
        device=args.device,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        summary, out = _run(config, args, tqdm)
    finally:
        torch.set_num_threads(threads)
    print(_report(summary, config, out))
    return 0


def _run(config: Config, args: argparse.Namespace, tqdm: Any) -> tuple[Summary, Path]:
    """Train with a progress bar, write the figure; return the summary and the figure's path."""
    bar = tqdm.tqdm(total=config.steps, desc="WGAN", unit="step", disable=args.no_progress)

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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _figure(config, critic, history, samples).savefig(out, dpi=100)
    summary = Summary(
        steps=config.steps,
        critic_loss=history.critic_loss[-1],
        at_bounds=at_bounds_fraction(critic, config.clip),
        modes_covered=mode_coverage(samples),
        seconds=time.perf_counter() - start,
    )
    return summary, out


# ----------------------------------------------------------------------------- helpers
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


def _figure(config: Config, critic: nn.Module, history: History, samples: Tensor) -> Figure:
    """Draw the samples over the critic's landscape, the critic's weights and the losses."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.6), layout="constrained")
    scatter, weights, losses = figure.subplots(1, 3)

    # Samples over the critic's landscape.
    lim = RADIUS + 1.0
    grid = torch.linspace(-lim, lim, 121)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    device = next(critic.parameters()).device
    with torch.no_grad():
        points = torch.stack([xx.flatten(), yy.flatten()], dim=1).to(device)
        landscape = critic(points).reshape(xx.shape).cpu()
    contour = scatter.contourf(xx.numpy(), yy.numpy(), landscape.numpy(), levels=20, cmap="Greys")
    figure.colorbar(contour, ax=scatter, label="critic value")
    real = sample_mixture(
        len(samples), generator=torch.Generator().manual_seed(config.seed + 2), device="cpu"
    )
    scatter.scatter(real[:, 0], real[:, 1], s=4, alpha=0.5, c="tab:blue", label="real")
    scatter.scatter(samples[:, 0], samples[:, 1], s=4, alpha=0.5, c="tab:orange", label="generated")
    scatter.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title="Samples")
    scatter.legend(loc="upper right", markerscale=3)

    # Critic weights against the clip range the library applies (float32-rounded).
    values = torch.cat([p.detach().flatten().cpu() for p in critic.parameters()])
    lo, hi = box_bounds(values, -config.clip, config.clip)
    weights.hist(values.numpy(), bins=60, color="tab:gray")
    for bound in (lo, hi):
        if bound is not None:
            weights.axvline(float(bound), color="tab:red", linestyle="--")
    weights.set(
        title=f"Critic weights (clip range ±{config.clip:g} dashed)",
        xlabel="value",
        ylabel="count",
        yscale="log",
    )
    weights.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))

    # Losses: the critic's on the left axis, the generator's (offset by the
    # critic's arbitrary constant) on the right one.
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
    losses.legend(handles=handles, loc="lower right")
    return figure


def _smooth(values: Tensor, window: int = 50) -> Tensor:
    """Moving average over up to ``window`` steps (shorter at the start)."""
    sums = torch.cat([torch.zeros(1, dtype=values.dtype), values.cumsum(0)])
    ends = torch.arange(1, len(values) + 1)
    starts = (ends - window).clamp(min=0)
    smoothed: Tensor = (sums[ends] - sums[starts]) / (ends - starts)
    return smoothed


def _report(summary: Summary, config: Config, out: Path) -> str:
    return "\n".join(
        [
            f"figure:        {out}",
            f"steps:         {summary.steps} generator steps x {config.n_critic} critic steps",
            f"critic loss:   {summary.critic_loss:+.6e} (final; minus the Wasserstein estimate)",
            f"at the bounds: {summary.at_bounds:.1%} of critic weights at ±{config.clip:g}",
            f"modes covered: {summary.modes_covered} of {MODES}",
            f"time:          {summary.seconds:.1f} s",
        ]
    )


def _parser() -> argparse.ArgumentParser:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m torch_constraints.demo",
        description="Train a weight-clipped WGAN on a mixture of 8 Gaussians and plot it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=_positive(int), default=defaults.steps, help="generator steps"
    )
    parser.add_argument(
        "--clip",
        type=_positive(float),
        default=defaults.clip,
        help="clip critic parameters to [-clip, clip]",
    )
    parser.add_argument(
        "--n-critic",
        type=_positive(int),
        default=defaults.n_critic,
        help="critic steps per generator step",
    )
    parser.add_argument(
        "--lr", type=_positive(float), default=defaults.lr, help="RMSprop learning rate"
    )
    parser.add_argument("--batch-size", type=_positive(int), default=defaults.batch_size)
    parser.add_argument(
        "--hidden", type=_positive(int), default=defaults.hidden, help="width of the hidden layers"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
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
