"""The compile-time benchmark runs, and reports as many graphs with constraints as without."""

from __future__ import annotations

import pytest

from torch_constraints import bench_compile

pytestmark = pytest.mark.slow


def test_the_benchmark_runs_and_constraints_add_no_graphs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = bench_compile.main(
        ["--layers", "10", "--width", "8", "--repeats", "1", "--backend", "eager"]
    )
    rows = {(r["mode"], r["variant"]): r for r in results["rows"]}
    assert set(rows) == {(m, v) for m in bench_compile.MODES for v in bench_compile.VARIANTS}
    assert rows[("whole", "constrained")]["graphs"] == 1
    assert (
        rows[("regional", "constrained")]["graphs"] == rows[("regional", "unconstrained")]["graphs"]
    )
    assert rows[("regional", "constrained")]["graphs"] < 10  # not one per block
    assert rows[("whole", "unconstrained")]["ratio"] == 1.0
    assert "median s" in capsys.readouterr().out
