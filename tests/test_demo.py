"""``python -m torch_constraints.demo``: both critics end to end, determinism, missing extras."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib import image
from matplotlib.backends.backend_agg import FigureCanvasAgg

from torch_constraints import SpectralBall, constrain_all, demo, named_constraints

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ["--steps", "4", "--hidden", "16", "--batch-size", "64", "--no-progress"]


def run_demo(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> dict[str, str]:
    """Run the demo in-process; return the summary lines as ``{label: value}``."""
    assert demo.main([*FAST, "--out", str(out), *args]) == 0
    summary = {}
    for line in capsys.readouterr().out.strip().splitlines():
        match = re.fullmatch(r"([a-z ]+):\s+(.*)", line)
        assert match, f"not a 'label: value' line: {line!r}"
        summary[match[1]] = match[2]
    return summary


def run_compare(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> dict[str, list[str]]:
    """Run ``--compare``; return ``{label: [clip column, spectral column]}`` (one cell for
    the lines about both runs)."""
    summary = run_demo(capsys, out, "--compare", *args)
    return {label: re.split(r"\s{2,}", value) for label, value in summary.items()}


def check_figure(out: Path, rows: int) -> None:
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    pixels = image.imread(out)
    assert pixels.shape[:2] == (460 * rows, 1500)  # figsize (15, 4.6 per row) at 100 dpi
    assert float(pixels[..., :3].std()) > 0.05  # drawn on, not blank


def linear_weights(critic: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in critic.modules() if isinstance(m, torch.nn.Linear)]


#: The certified bound of a weight projected onto the spectral ball exceeds the radius
#: by the float32 SVD's rounding (1e-6) and the certificate's own slack (the Gram
#: iteration with many singular values at the radius, about 1e-3 per layer).
CERTIFICATE_SLACK = 1e-2


def test_writes_a_valid_figure_and_a_sane_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures" / "demo.png"
    summary = run_demo(capsys, out)
    check_figure(out, rows=1)

    # The clip run (the default) prints the lines it always printed, in order.
    assert list(summary) == [
        "figure",
        "steps",
        "critic loss",
        "at the bounds",
        "modes covered",
        "time",
    ]
    assert summary["figure"] == str(out)
    assert summary["steps"] == "4 generator steps x 5 critic steps"
    critic_loss = float(summary["critic loss"].split()[0])
    assert math.isfinite(critic_loss) and abs(critic_loss) < 1.0
    # A fresh Linear starts uniform in +-1/sqrt(fan_in) >> 0.01: clipping puts most
    # parameters on a bound, and a few RMSprop steps move only some of them off it.
    at_bounds = float(summary["at the bounds"].split("%")[0]) / 100
    assert 0.5 < at_bounds < 1.0
    assert summary["at the bounds"].endswith("of critic weights at ±0.01")
    covered, of = re.fullmatch(r"(\d) of (\d)", summary["modes covered"]).groups()  # type: ignore[union-attr]
    assert 0 <= int(covered) <= int(of) == 8
    assert float(summary["time"].removesuffix(" s")) > 0


def test_same_seed_same_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def numbers(*args: str) -> tuple[str, str, str]:
        summary = run_demo(capsys, tmp_path / "demo.png", *args)
        return summary["critic loss"], summary["at the bounds"], summary["modes covered"]

    first = numbers("--seed", "3")
    assert numbers("--seed", "3") == first
    assert numbers("--seed", "4")[0] != first[0]


def test_clip_option_sets_the_bounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = run_demo(capsys, tmp_path / "demo.png", "--clip", "0.05")
    assert summary["at the bounds"].endswith("at ±0.05")
    assert float(summary["at the bounds"].split("%")[0]) > 10


def test_main_restores_the_thread_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    run_demo(capsys, tmp_path / "demo.png", "--threads", str(threads + 1))
    assert torch.get_num_threads() == threads


def test_training_keeps_every_raw_critic_parameter_in_range() -> None:
    config = demo.Config(steps=5, hidden=16, batch_size=32, clip=0.02, lr=1e-2)
    _, critic, history = demo.train(config)
    assert len(history.critic_loss) == len(history.generator_loss) == 5
    for parameter in critic.parameters():
        assert parameter.abs().max() <= 0.02
    assert demo.at_bounds_fraction(critic) > 0


def test_at_bounds_fraction_pools_saturation_by_size() -> None:
    first, second = torch.nn.Linear(10, 10), torch.nn.Linear(10, 1)
    with torch.no_grad():
        first.weight.fill_(0.0)  # 100 entries, none at a bound
        first.bias.fill_(1.0)  # 10 entries, all at the upper bound after clipping
        second.weight.fill_(-1.0)  # 10 entries, all at the lower bound
        second.bias.fill_(0.0)  # 1 entry, inside
    critic = torch.nn.Sequential(first, second)
    constrain_all(critic, -0.5, 0.5)
    assert demo.at_bounds_fraction(critic) == pytest.approx(20 / 121)
    # Only box-constrained tensors count: a box on the first layer alone.
    other = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 1))
    constrain_all(other, 2.0, 3.0, include=lambda qualname, module, name: qualname == "0.weight")
    assert demo.at_bounds_fraction(other) == 1.0


def test_spectral_training_keeps_every_weight_in_the_ball() -> None:
    radius = 0.5
    config = demo.Config(
        steps=5, hidden=16, batch_size=32, lr=1e-2, critic="spectral", radius=radius
    )
    _, critic, history = demo.train(config)
    assert len(history.critic_loss) == len(history.generator_loss) == 5
    # Every weight, and nothing else, carries a SpectralBall of the radius.
    constraints = dict(named_constraints(critic))
    assert list(constraints) == ["0.weight", "2.weight", "4.weight", "6.weight"]
    assert all(isinstance(c, SpectralBall) and c.radius == radius for c in constraints.values())
    # The raw weights the optimizer updates are inside (the module is not
    # parametrized: its weights are the raw tensors), and the ball is active.
    norms = [float(torch.linalg.matrix_norm(w.double(), ord=2)) for w in linear_weights(critic)]
    assert max(norms) <= radius * (1 + 1e-5)
    assert max(norms) >= radius * (1 - 1e-3)
    # The certified bound on the critic's Lipschitz constant: at most radius ** 4.
    bound = demo.lipschitz_bound(critic)
    assert math.prod(norms) <= bound <= radius**4 * (1 + CERTIFICATE_SLACK)
    assert demo.at_bounds_fraction(critic) == 0.0  # no box anywhere


def test_unknown_critic_is_an_error() -> None:
    with pytest.raises(ValueError, match="critic must be one of"):
        demo.train(demo.Config(steps=1, critic="gradient-penalty"))


def test_spectral_run_writes_a_figure_and_a_certified_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "spectral.png"
    summary = run_demo(capsys, out, "--critic", "spectral", "--radius", "0.8")
    check_figure(out, rows=1)
    assert list(summary) == [
        "figure",
        "steps",
        "critic loss",
        "lipschitz bound",
        "modes covered",
        "time",
    ]
    bound, explanation = summary["lipschitz bound"].split(" ", 1)
    assert 0 < float(bound) <= 0.8**4 * (1 + CERTIFICATE_SLACK)
    assert explanation == "(certified: the product of the 4 weights' spectral norms, each ≤ 0.8)"
    assert math.isfinite(float(summary["critic loss"].split()[0]))
    assert re.fullmatch(r"\d of 8", summary["modes covered"])


def test_compare_trains_both_critics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare.png"
    table = run_compare(capsys, out, "--seed", "3")
    check_figure(out, rows=2)
    assert list(table) == [
        "figure",
        "steps",
        "critic",
        "critic loss",
        "at the bounds",
        "lipschitz bound",
        "modes covered",
        "time",
        "note",
    ]
    assert table["figure"] == [str(out)]
    assert table["critic"] == ["clip ±0.01", "spectral ≤ 1"]
    clip_bound, spectral_bound = map(float, table["lipschitz bound"])
    # Entries in [-c, c] bound a weight's spectral norm by c * sqrt(its size) (the
    # Frobenius norm), which the certified bound does not exceed.
    sizes = [16 * 2, 16 * 16, 16 * 16, 1 * 16]
    assert 0 < clip_bound <= math.prod(0.01 * math.sqrt(n) for n in sizes) * (1 + 1e-3)
    assert 0 < spectral_bound <= 1 + CERTIFICATE_SLACK
    assert table["at the bounds"][1] == "no box"
    for cell in table["modes covered"]:
        assert re.fullmatch(r"\d of 8", cell)
    assert all(cell.endswith(" s") for cell in table["time"]) and len(table["time"]) == 2
    assert "certified" in table["note"][0]

    # The clip column is the clip run, unchanged: the same numbers as `--critic clip`.
    single = run_demo(capsys, tmp_path / "clip.png", "--seed", "3")
    assert table["critic loss"][0] == single["critic loss"].split()[0]
    assert table["at the bounds"][0] == single["at the bounds"].split()[0]
    assert table["modes covered"][0] == single["modes covered"]
    assert float(table["lipschitz bound"][0]) > 0


@pytest.mark.parametrize(
    "argument",
    [
        ["--steps", "0"],
        ["--clip", "-1"],
        ["--radius", "0"],
        ["--critic", "gradient-penalty"],
        ["--compare", "--critic", "spectral"],  # --compare trains both
        ["--lr", "x"],
        ["--device", "no-such-device"],
    ],
)
def test_rejects_bad_arguments(argument: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        demo.main(argument)
    assert raised.value.code == 2
    assert argument[0] in capsys.readouterr().err


def test_help_gives_every_option_a_meaning_and_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    for option in ["--batch-size", "--seed", "--steps", "--clip", "--radius", "--hidden"]:
        match = re.search(rf"{option} [A-Z_]+ (.+?) \(default: ([^)]+)\)", text)
        assert match, option
        assert match[1] and float(match[2]) == getattr(demo.Config(), option[2:].replace("-", "_"))


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (["--critic", "spectral", "--clip", "0.5"], "--clip applies to the clip critic only"),
        (["--critic=spectral", "--clip=0.5"], "--clip applies to the clip critic only"),
        (["--radius", "0.5"], "--radius applies to the spectral critic only"),
        (["--critic", "clip", "--rad", "0.5"], "--radius applies to the spectral critic only"),
    ],
)
def test_an_option_of_the_other_critic_is_refused(
    argument: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        demo.main([*FAST, *argument])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_compare_takes_the_options_of_both_critics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs: list[demo.Config] = []

    def record(config: demo.Config, *args: object) -> None:
        configs.append(config)
        raise KeyboardInterrupt  # stop before training

    monkeypatch.setattr(demo, "_run", record)
    argument = ["--compare", "--clip", "0.05", "--radius", "0.5", "--out", str(tmp_path / "x.png")]
    with pytest.raises(KeyboardInterrupt):
        demo.main([*FAST, *argument])
    assert (configs[0].clip, configs[0].radius) == (0.05, 0.5)


def test_no_legend_covers_a_panel(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    figures: list[Any] = []
    original = demo._figure
    monkeypatch.setattr(demo, "_figure", lambda runs: figures.append(original(runs)) or figures[0])
    run_demo(capsys, tmp_path / "demo.png", "--compare")  # both critics: every panel kind
    canvas = FigureCanvasAgg(figures[0])
    canvas.draw()
    renderer = canvas.get_renderer()
    panels = [axes.get_window_extent(renderer) for axes in figures[0].axes]
    legends = [axes.get_legend() for axes in figures[0].axes if axes.get_legend()]
    assert len(legends) == 5  # samples, singular values and losses; none on the histogram
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(panel) for panel in panels)


@pytest.mark.parametrize("missing", ["matplotlib", "tqdm"])
def test_missing_extra_says_how_to_install_it(
    missing: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` fail

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the demo trained without its dependencies")

    monkeypatch.setattr(demo, "train", no_training)
    out = tmp_path / "demo.png"
    assert demo.main([*FAST, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"needs {missing}" in err
    assert "pip install 'torch-constraints[demo]'" in err
    assert not out.exists()


def test_missing_extra_exits_nonzero_from_the_command_line(tmp_path: Path) -> None:
    code = (
        "import runpy, sys; sys.modules['tqdm'] = None; "
        "runpy.run_module('torch_constraints.demo', run_name='__main__')"
    )
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-c", code, "--out", str(tmp_path / "demo.png")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "pip install 'torch-constraints[demo]'" in result.stderr


def test_tutorial_lists_every_option_with_its_default() -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "tutorial-wgan.md"
    rows = re.findall(
        r"^\| `(--[\w-]+)` \|\s*([^|]*?)\s*\|", page.read_text(encoding="utf-8"), re.M
    )
    documented = {option: default.strip().strip("`") for option, default in rows}
    parser = demo._parser()
    options = {
        action.option_strings[-1]: action.default
        for action in parser._actions
        if action.option_strings[-1] != "--help"
    }
    assert documented.keys() == options.keys()
    for option, default in options.items():
        if isinstance(default, bool):
            assert documented[option] == "", option
        elif isinstance(default, float):
            assert float(documented[option]) == default, option
        else:
            assert documented[option] == str(default), option
