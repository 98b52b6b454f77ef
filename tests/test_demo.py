"""``python -m torch_constraints.demo``: a few steps end to end, determinism, missing extras."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matplotlib import image

from torch_constraints import demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ["--steps", "4", "--hidden", "16", "--batch-size", "64", "--no-progress"]


def run_demo(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> dict[str, str]:
    """Run the demo in-process; return the summary lines as ``{label: value}``."""
    assert demo.main([*FAST, "--out", str(out), *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return dict(re.match(r"([a-z ]+):\s+(.*)", line).groups() for line in lines)  # type: ignore[union-attr]


def test_writes_a_valid_figure_and_a_sane_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures" / "demo.png"
    summary = run_demo(capsys, out)

    assert out.read_bytes().startswith(PNG_SIGNATURE)
    pixels = image.imread(out)
    assert pixels.shape[:2] == (460, 1500)  # figsize (15, 4.6) at 100 dpi
    assert float(pixels[..., :3].std()) > 0.05  # drawn on, not blank

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
    assert demo.at_bounds_fraction(critic, 0.02) > 0


@pytest.mark.parametrize(
    "argument", [["--steps", "0"], ["--clip", "-1"], ["--lr", "x"], ["--device", "no-such-device"]]
)
def test_rejects_bad_arguments(argument: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        demo.main(argument)
    assert raised.value.code == 2
    assert argument[0] in capsys.readouterr().err


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
