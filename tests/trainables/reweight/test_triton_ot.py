"""The Triton OT kernels (trainables/reweight/triton_ot.py) on a machine without a GPU: run in
Triton's interpreter on CPU tensors (a subprocess, since the interpreter is chosen when triton
is imported) against the log-domain reference, and compiled ahead of time for an H100
(sm_90) through Triton's own ptxas, which checks that they build for the GPU they target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables.reweight import ot_loss, triton_ot

from ._tolerance import float32_tolerance

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def interpreted_run() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.trainables.reweight._triton_interpret"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _within(diffs, tol) -> bool:
    """Each (max difference, float64 reference's max magnitude) of value, dC, da, db within
    ``tol`` of that magnitude. An output that is exactly zero (the 1 x 1 problem's db) is held
    to the case's largest magnitude instead: the size of the terms whose rounding is left."""
    top = max(scale for _, scale in diffs)
    return all(diff <= tol * (scale or top) for diff, scale in diffs)


@pytest.mark.slow  # one interpreter run of the kernels, shared: about 40 s
def test_the_kernels_equal_the_reference_in_the_interpreter(interpreted_run):
    assert interpreted_run["interpreted"] is True
    assert len(interpreted_run["cases"]) == 5
    for case, res in interpreted_run["cases"].items():
        assert res["shapes_equal"], case
        # float32 kernels against the reference's float64 iterates: within the rounding bound
        # derived from the problem (iterations, max|C| / eps; _tolerance.py), not a fixed rtol
        tol = float32_tolerance(res["n_iter"], res["eps"], res["c_max"])
        assert _within(res["diff"], tol), (case, tol, res["diff"])


@pytest.mark.slow  # one interpreter run of the kernels, shared: about 40 s
def test_early_stopping_on_chip_equals_the_reference(interpreted_run):
    stopping = interpreted_run["stopping"]
    assert len(stopping) == 3
    for case, res in stopping.items():
        assert 1 <= res["n_ref"] < 300, case  # the reference did stop early
        # ... after n_ref iterations: the float64 iterates of as many, to float32 rounding
        tol = float32_tolerance(res["n_ref"], res["eps"], res["c_max"])
        assert _within(res["diff"], tol), (case, tol, res["diff"])
        # the kernel ran exactly the reference's iterations: n_ref fixed ones agree to rounding
        for diff, scale in res["vs_fixed"]:
            assert diff <= 1e-6 * scale or diff < 1e-9, (case, res["vs_fixed"])


@pytest.mark.slow  # one interpreter run of the kernels, shared: about 40 s
def test_a_population_batch_gives_each_member_what_it_gets_alone(interpreted_run):
    """One ot_loss call for a population's members, routed as on CUDA, each with its own eps,
    iteration cap and tol: the members the kernels take get bit for bit what they get stacked
    on their own through the kernels (the same program on the same data: the smaller caps and
    the early stops are per program); the two beyond float32's scaling range bit for bit what
    the reference gives them; every member is within float32 rounding of the float64
    solution, stopping where float64 stops."""
    pop = interpreted_run["population"]
    for rule in ("marginal", "potential_change"):
        res = pop[rule]
        assert sorted(map(int, res["alone"])) == [0, 1, 2, 3, 4, 5], rule
        assert all(res["alone"].values()), (rule, res["alone"])
        for member, diffs in res["vs_float64"].items():
            # largest seen, relative to the output's largest entry: 3.8e-6 for the
            # scaling-domain members; 4.4e-3 for the log-domain one (eps 0.002, max|C| / eps
            # near 500: the reference in float32)
            rtol = 1e-2 if member == "3" else 1e-4
            assert _within(diffs, rtol), (rule, member, diffs)


@pytest.mark.slow  # one interpreter run of the kernels, shared: about 40 s
def test_a_population_trains_through_the_kernels_as_its_single_trials_do(interpreted_run):
    """Stage 2 as a population (weight vectors, and weight nets) with the OT losses through
    the kernels, as on CUDA, against each member's single trial through them too, over two
    epochs in float64 (the kernels' programs run in float64 in the interpreter; each problem
    gets bit for bit what it gets alone): every per-epoch metric, learned weight and head
    parameter equal to 1e-9 (largest seen 1.3e-13, the log-domain weight net; a member whose
    kernel launch got its eps off by a relative 1e-6 was 3.8e-8 off), the same selected epoch,
    no member lost.

    Not in float32: over many steps its rounding, which differs between the stacked heads'
    kernels and the single head's, is amplified by the weight nets' large step (weight_lr 2)
    at a rate no bound follows (seen: 3.8e-5 on an AMD EPYC, 6.0e-3 and two members diverging
    on an Intel Xeon with AVX-512 and AMX). The first float32 step is held to its bound below."""
    res = interpreted_run["population_training"]["float64"]
    assert _within(res["kernel_vs_reference"], 1e-12), res["kernel_vs_reference"]
    assert res["triton_calls"]["single"] > 0 and res["triton_calls"]["population"] > 0
    for weights in ("vector", "net"):
        r = res[weights]
        assert r["diverged"] == [] and len(r["compared"]) == r["members"], (weights, r)
        for m in r["compared"]:
            assert m["smooth"] < 1e-9 and m["rates"] < 1e-9, (weights, m)
            assert m["same_epoch"] and m["error"] is None, (weights, m)


# The dot products on one stage-2 step's path besides the OT's, by length: the head's two
# layers (8 features, 6 hidden), the weight net's two (8, 100 hidden), the softmax over 3
# classes and the sums over the batch of 21 (tests/trainables/test_population.py's setup)
STEP_WIDTHS = 8 + 6 + 8 + 100 + 3 + 21


def _first_step_bound(m: dict) -> float:
    """How far the first float32 step of a population member may lie from its single
    trial's, relative to each quantity's size (at least 1): a first-order rounding bound.

    Both start from the same state and differ in rounding only (the OT problems go through the
    same kernel program). Each is within E of the exact step, so they are within 2 E:
    E = float32_tolerance(max_iter, eps, max|C|) for the OT value and gradients
    (_tolerance.py; max|C| <= 2 feature_weight + label_weight, the cost's range) plus u W for
    every other dot product (length k: k u, the classical bound; W = STEP_WIDTHS). The step
    then moves the weights by weight_lr times their gradient and the head by lr times its, so
    what follows it carries (1 + weight_lr)(1 + lr) E. E.g. a weight net at eps 0.1, 30
    iterations, max|C| 3, lr 0.1, weight_lr 2: 2 * 3 * 1.1 * (1.4e-5 + 1.7e-5) = 2.1e-4 (seen:
    1.1e-6)."""
    u = torch.finfo(torch.float32).eps
    e = float32_tolerance(m["max_iter"], m["eps"], m["c_max"]) + u * STEP_WIDTHS
    return 2 * (1 + m["weight_lr"]) * (1 + m["lr"]) * e


@pytest.mark.slow  # one interpreter run of the kernels, shared: about 40 s
def test_a_population_s_first_float32_step_is_within_rounding_of_its_single_trials(interpreted_run):
    """The same population and single trials in float32, one step (the 21 training samples
    in one batch, one epoch): losses, learned weights and head parameters within the derived
    bound (_first_step_bound); a member whose single trial diverges diverges in the population,
    alike. The accuracies are left to the float64 run: a rounding flips a prediction that sits
    at a tie, which no tolerance bounds."""
    res = interpreted_run["population_training"]["float32"]
    assert res["triton_calls"]["single"] > 0 and res["triton_calls"]["population"] > 0
    for weights in ("vector", "net"):
        r = res[weights]
        assert len(r["compared"]) + len(r["diverged"]) == r["members"], (weights, r)
        for m in r["compared"]:
            assert m["smooth"] <= _first_step_bound(m), (weights, m, _first_step_bound(m))
            assert m["error"] is None, (weights, m)
        for _, single, member in r["diverged"]:
            assert member == single, (weights, r["diverged"])


@pytest.mark.slow  # one interpreter run of the kernels, shared: about 40 s
def test_the_kernels_refuse_what_they_do_not_take(interpreted_run):
    errors = interpreted_run["errors"]
    assert errors["float64"].startswith("impl='triton' takes float32 problems, got torch.float64")
    assert "problems of one tile (16384 padded entries), got 32 x 1000" in errors["too_wide"]
    assert "float32's scaling domain, which max|C|/eps" in errors["beyond_range"]
    assert all(e.endswith("; use impl='auto'") for e in errors.values())
    # what ot_loss's automatic choice sends to the kernels on CUDA: stacks of one tile
    refusals = interpreted_run["refusals"]
    assert refusals["(32, 16, 10)"] is None and refusals["(4, 32, 365)"] is None
    assert refusals["(4, 16, 1000)"] is None  # 16 x 1024 entries: one tile
    assert "one tile" in refusals["(4, 32, 1000)"] and "one tile" in refusals["(4, 1100, 10)"]


def test_cpu_tensors_need_the_interpreter():
    c = torch.rand(4, 3)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ot_loss(c, torch.ones(4) / 4, torch.ones(3) / 3, eps=0.1, max_iter=2, impl="triton")


@pytest.mark.parametrize(
    "n, m, kernels",
    [
        (16, 100, "_ot_forward _ot_backward"),
        (32, 365, "_ot_forward _ot_backward"),
        (16, 1000, "_ot_forward _ot_backward"),
    ],
)
def test_the_kernels_compile_for_an_h100(n, m, kernels):
    sizes = triton_ot.compile_for(90, n, m)
    assert set(sizes) == set(kernels.split())
    assert all(size > 1000 for size in sizes.values())


@pytest.mark.parametrize("stop", ["marginal", "potential_change"])
def test_the_early_stopping_kernels_compile_for_an_h100(stop):
    assert set(triton_ot.compile_for(90, 16, 10, stop=stop)) == {"_ot_forward", "_ot_backward"}


@pytest.mark.parametrize("warps", [1, 2])
def test_the_one_tile_kernels_compile_with_fewer_warps(monkeypatch, warps):
    # bench/ot_speed.py times 1-8 warps per program on a GPU: each must build
    monkeypatch.setattr(triton_ot, "NUM_WARPS", warps)
    assert triton_ot._launch_args(16, 100)["num_warps"] == warps
    assert set(triton_ot.compile_for(90, 16, 100)) == {"_ot_forward", "_ot_backward"}
