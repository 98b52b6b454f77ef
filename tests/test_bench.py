"""The shipped benchmark runs end to end and reports every row it promises.

Timing stays out of the tests: this checks the table and the JSON, not the
numbers. The parameter sets and the training case are shrunk to keep it fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torch_constraints import bench, bench_sets


@pytest.fixture
def small_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench.PARAMETER_SETS, "small-2000", lambda: [(8, 8)] * 20)
    monkeypatch.setitem(bench.TRAINING_CASES, "cpu", [("mlp-2x16", 16, 2, 4, torch.float32)])
    monkeypatch.setattr(
        bench_sets, "MATRIX_SETS", {"small-matrices": lambda: [(8, 6)] * 3 + [(4, 2, 3)]}
    )
    monkeypatch.setattr(bench_sets, "SORT_SHAPES", [(4, 16), (3, 5)])


def test_the_benchmark_prints_every_row_and_writes_json(
    small_bench: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    assert (
        bench.main(["--device", "cpu", "--sets", "small-2000", "--rounds", "2", "--json", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith("torch-constraints benchmark | torch ")
    for row in [
        "blog recipe",
        "WGAN loop",
        "foreach pair",
        "flat clamp_ (floor)",
        "copy (ceiling)",
        "hard_project",
        "  parametrize=False",
        "PackedProjection",
    ]:
        assert row in printed
    for mode in [*bench.MODES, bench.PROJECTION_ALONE]:
        assert mode in printed
    results = json.loads(out.read_text())
    (projection,) = results["projection"]
    assert projection["tensors"] == 20 and projection["elements"] == 20 * 64
    # both modes vs the WGAN loop, packing vs the hand loops and the floor
    assert len(projection["checks"]) == 4
    (read,) = results["read"]
    assert set(read["microseconds"]) == {"stock parametrize, one-line clamp", "constrain"}
    assert "reading a constrained weight" in printed
    (training,) = results["training"]
    assert training["ratios"]["unconstrained"] == 1.0
    assert set(training["seconds"]) == {*bench.MODES, bench.PROJECTION_ALONE}
    assert len(training["checks"]) == len(bench.TRAINING_TARGETS)


@pytest.mark.parametrize("packed", [False, True])
def test_the_timed_projections_leave_every_tensor_in_range(small_bench: None, packed: bool) -> None:
    # The benchmark times hard_project and a PackedProjection: their result must be the clamp.
    constrained = bench.parameter_set("small-2000", "cpu", torch.float32)
    reference = [p.detach().clamp(bench.LOW, bench.HIGH) for p in constrained.parameters()]
    bench.constrain_all(constrained, bench.LOW, bench.HIGH)
    if packed:
        bench.PackedProjection(constrained)()
    else:
        bench.hard_project(constrained)
    raws = [m.parametrizations.weight.original for m in constrained]
    assert all(torch.equal(r, e) for r, e in zip(raws, reference, strict=True))


@pytest.mark.slow
def test_the_training_part_runs_compiled(
    small_bench: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        bench.main(
            [
                *["--device", "cpu", "--skip-projection", "--skip-norms"],
                *["--compile", "default", "--rounds", "2"],
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "torch.compile(mode='default')" in printed
    assert "method" not in printed  # no projection table
    for mode in bench.MODES:
        assert mode in printed


def test_the_matrix_rows(
    small_bench: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--skip-projection", "--skip-training", "--skip-norms"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for row in ["svd loop", "hard_project exact", "hard_project feasible", "hard_project rescale"]:
        assert row in printed
    (matrix,) = json.loads(out.read_text())["matrix"]
    assert matrix["parameter_set"] == "small-matrices" and matrix["tensors"] == 4
    assert len(matrix["checks"]) == len(bench_sets.MATRIX_TARGETS)


def test_the_norm_rows(
    small_bench: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--sets", "small-2000", "--rounds", "2", "--json", str(out)]
    assert bench.main([*argv, "--skip-projection", "--skip-training", "--skip-matrix"]) == 0
    printed = capsys.readouterr().out
    for row in ["renorm_ loop", "hard_project MaxNorm", "plain L1 (sort)", "Simplex.project"]:
        assert row in printed
    parts = {r["part"]: r for r in json.loads(out.read_text())["norms"]}
    assert list(parts) == [
        "eegnet 16x22 float32, warm",
        "small-2000 float32",
        "small-2000 float64",
        "gpt2-small block, L1 and simplex per row",
        "training step, mlp-2x16 float32 batch 4, MaxNorm",
    ]
    assert len(parts["eegnet 16x22 float32, warm"]["checks"]) == 4
    assert parts["small-2000 float64"]["checks"][0].endswith("(target <= 2)")
    training = parts["training step, mlp-2x16 float32 batch 4, MaxNorm"]
    assert training["ratios"]["unconstrained"] == 1.0 and len(training["checks"]) == 2


def test_the_norm_baselines_are_the_projections_they_stand_for() -> None:
    # The renorm_ loop projects what hard_project does (to renorm's epsilon), and the
    # plain sort-based code what L1Ball and Simplex do.
    x = torch.randn(5, 7) * 3
    column = torch.tensor([3.0, -0.2, 0.7])
    views = bench_sets._renorm_views([x.clone(), column.clone()])
    for view, tensor in zip(views, (x, column), strict=True):
        expected = bench_sets.MaxNorm(bench.NORM).project(tensor)
        assert torch.allclose(view.renorm_(2, 0, bench.NORM).view_as(tensor), expected, atol=1e-6)
    l1 = bench_sets.L1Ball(1.0, dim=0).project(x)
    assert torch.allclose(bench_sets._sort_l1(x, 1.0), l1, atol=1e-6)
    simplex = bench_sets.Simplex(1.0, dim=0).project(x)
    assert torch.allclose(bench_sets._sort_simplex(x, 1.0), simplex, atol=1e-6)


def test_the_projection_checks_judge_each_target() -> None:
    medians = {
        "hard_project": 2.0,
        "  parametrize=False": 1.5,
        "WGAN loop": 1.6,
        "PackedProjection": 0.25,
        "flat clamp_ (floor)": 0.1,
        "clamp_ loop": 8.0,
        "foreach pair": 1.0,
    }
    checks = bench._projection_checks("small-2000", "cpu", medians, copy_gbps=1.0, nbytes=1)
    assert checks == [
        "ok   parametrize=False vs the WGAN loop: 0.94 (target <= 1)",
        "MISS hard_project vs the WGAN loop: 1.25 (target <= 1.2)",
        "ok   PackedProjection vs the best hand-written loop: 0.25 (target <= 1)",
        "MISS PackedProjection vs the floor: 2.50 (target <= 1.5)",
    ]
    gpu = bench._projection_checks("gpt2-medium", "cuda", medians, copy_gbps=1.0, nbytes=1)
    assert gpu[-1] == "MISS at least 85% of the copy ceiling: 0.00 (target >= 0.85)"
