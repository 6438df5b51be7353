"""Run by test_triton_ot.py in a subprocess with TRITON_INTERPRET=1 (set before triton is
imported): the Triton OT kernels on CPU tensors in Triton's interpreter against the log-domain
reference. Prints one JSON object."""

from __future__ import annotations

import contextlib
import json
import os

import torch

from trainables.reweight import ot, ot_loss, sinkhorn
from trainables.reweight.triton_ot import interpreted, triton_refusal

CASES = [  # (shape, eps, iterations)
    ((16, 10), 0.1, 200),
    ((16, 100), 0.1, 200),
    ((3, 7, 5), 0.05, 37),
    ((2, 32, 365), 0.1, 20),
    ((1, 1), 0.1, 3),
]


def _triton(c, a, b, **kw):
    """ot_loss through the kernels for one ``[N, M]`` problem or a stack; ``b`` of one
    problem broadcast over the stack (its gradient summed over problems)."""
    return ot_loss(c, a, b.expand(*c.shape[:-2], c.shape[-1]), impl="triton", **kw)


def _diff(x, y):
    """(max difference, the reference's max magnitude), in float64."""
    x, y = x.detach().double(), y.detach().double()
    return float((x - y).abs().max()), float(y.abs().max())


def _reference64(c, a, b, eps, n_iter, weighted=True):
    """Value and gradients of the log-domain reference in float64 on the same (float32)
    inputs, ``n_iter`` fixed iterations: the exact iterates the float32 kernels are held to
    (within the rounding bound test_triton_ot.py derives from the problem)."""
    c, a, b = (x.detach().double().requires_grad_() for x in (c, a, b))
    v = ot_loss(c, a, b.expand(*c.shape[:-2], c.shape[-1]), eps=eps, max_iter=n_iter,
                impl="reference")  # fmt: skip
    w = torch.arange(1, v.numel() + 1, dtype=v.dtype).reshape(v.shape) if weighted else 1.0
    return (v, *torch.autograd.grad((v * w).sum(), (c, a, b)))


def main() -> None:
    out = {"env": os.environ.get("TRITON_INTERPRET"), "interpreted": interpreted(), "cases": {}}
    for shape, eps, iters in CASES:
        g = torch.Generator().manual_seed(len(out["cases"]))
        c = torch.rand(*shape, generator=g).requires_grad_()
        a = torch.softmax(torch.randn(shape[:-1], generator=g), -1).requires_grad_()
        # one b for every problem of a batch: broadcast, its gradient summed over problems
        b = torch.softmax(torch.randn(shape[-1:], generator=g), -1).requires_grad_()
        got = {}
        for name, fn in {
            "triton": lambda c, a, b, e=eps, n=iters: _triton(c, a, b, eps=e, max_iter=n),
            "reference": lambda c, a, b, e=eps, n=iters, s=shape: ot_loss(
                c, a, b.expand(*s[:-2], s[-1]), eps=e, max_iter=n, impl="reference"
            ),
        }.items():
            # a weighted sum of the values: a different upstream gradient per problem
            v = fn(c, a, b)
            wsum = (v * torch.arange(1, v.numel() + 1, dtype=v.dtype).reshape(v.shape)).sum()
            got[name] = (v, *torch.autograd.grad(wsum, (c, a, b)))
        exact = _reference64(c, a, b, eps, iters)
        out["cases"][f"{shape}/{eps}/{iters}"] = {
            "shapes_equal": all(
                x.shape == y.shape and x.dtype == y.dtype
                for x, y in zip(got["triton"], got["reference"], strict=True)
            ),
            # against the float64 iterates (not the float32 reference, whose own rounding
            # would add to the kernels'), with what the tolerance is derived from
            "diff": [_diff(x, y) for x, y in zip(got["triton"], exact, strict=True)],
            "n_iter": iters,
            "eps": eps,
            "c_max": float(c.detach().abs().max()),
        }
    # early stopping on chip: one problem, the reference's rules at the same checks
    out["stopping"] = {}
    for shape, rule, tol, every in [
        ((16, 10), "potential_change", 0.1, 1),  # the released code's call
        ((16, 10), "potential_change", 1e-3, 3),
        ((12, 7), "marginal", 1e-4, 10),
    ]:
        g = torch.Generator().manual_seed(3)
        c = (torch.rand(*shape, generator=g) * 0.6).requires_grad_()
        a = torch.softmax(torch.randn(shape[0], generator=g), -1).requires_grad_()
        b = torch.softmax(torch.randn(shape[1], generator=g), -1).requires_grad_()
        kw = dict(eps=0.1, tol=tol, stop=rule, check_every=every)
        n_ref = sinkhorn(c.detach(), a.detach(), b.detach(), max_iter=300, **kw).n_iter
        got = {}
        for name, fn in {
            "triton": lambda c, a, b, kw=kw: _triton(c, a, b, max_iter=300, **kw),
            "reference": lambda c, a, b, kw=kw: ot_loss(
                c, a, b, max_iter=300, impl="reference", **kw
            ),
            "triton_fixed": lambda c, a, b, n=n_ref: _triton(c, a, b, eps=0.1, max_iter=n),
        }.items():
            v = fn(c, a, b)
            got[name] = (v, *torch.autograd.grad(v, (c, a, b)))
        # the exact iterates of the n_ref iterations the float32 reference ran
        exact = _reference64(c, a, b, 0.1, n_ref, weighted=False)
        out["stopping"][f"{shape}/{rule}/{tol}/{every}"] = {
            "n_ref": n_ref,
            "diff": [_diff(x, y) for x, y in zip(got["triton"], exact, strict=True)],
            "eps": 0.1,
            "c_max": float(c.detach().abs().max()),
            "vs_fixed": [
                _diff(x, y) for x, y in zip(got["triton"], got["triton_fixed"], strict=True)
            ],
        }
    out["population"] = _population()
    out["population_training"] = _population_training()
    errors = {}
    for name, (c, eps) in {
        "float64": (torch.rand(4, 3, dtype=torch.float64), 0.1),
        "too_wide": (torch.rand(32, 1000), 0.1),
        "beyond_range": (torch.rand(4, 3) * 10, 0.1),
    }.items():
        n, m = c.shape
        try:
            _triton(c, torch.ones(n, dtype=c.dtype) / n, torch.ones(m, dtype=c.dtype) / m,
                    eps=eps, max_iter=2)  # fmt: skip
        except ValueError as e:
            errors[name] = str(e)
    out["refusals"] = {
        str(shape): triton_refusal(torch.empty(shape))
        for shape in [(32, 16, 10), (4, 16, 1000), (4, 32, 365), (4, 32, 1000), (4, 1100, 10)]
    }
    out["errors"] = errors
    print(json.dumps(out))


# a population's batch: per member eps, iteration cap and tol (-inf: runs to its cap); with
# costs in [0, 1), eps 0.02 is past float32's scaling range and eps 0.002 past float64's:
# those two members go through the reference
POP_EPS = [0.1, 0.05, 0.02, 0.002, 0.2, 0.08]
POP_CAPS = [20, 50, 7, 30, 40, 300]
POP_TOLS = [float("-inf"), 1e-3, float("-inf"), 1e-2, float("-inf"), 1e-4]
POP_TRITON = [0, 1, 4, 5]  # the members the kernels solve
POP_REFERENCE = [2, 3]


def _population() -> dict:
    """Members of one ot_loss call (routed as on CUDA) against each member alone."""
    g = torch.Generator().manual_seed(11)
    p, n, m = len(POP_EPS), 16, 10
    cost = torch.rand(p, n, m, generator=g).requires_grad_()
    a = torch.softmax(torch.randn(p, n, generator=g), -1).requires_grad_()
    b = torch.softmax(torch.randn(p, m, generator=g), -1).requires_grad_()
    upstream = torch.arange(1, p + 1, dtype=torch.float32)
    tols = [None if t == float("-inf") else t for t in POP_TOLS]
    res = {}
    for rule, every in (("marginal", 3), ("potential_change", 2)):
        kw = dict(eps=POP_EPS, max_iter=POP_CAPS, tol=tols, stop=rule, check_every=every)
        with _as_on_cuda({"single": 0, "population": 0}):
            v = ot_loss(cost, a, b, **kw)
        got = (v, *torch.autograd.grad((v * upstream).sum(), (cost, a, b)))
        c64, a64, b64 = (x.detach().double().requires_grad_() for x in (cost, a, b))
        v64 = ot_loss(c64, a64, b64, **kw)
        truth = (v64, *torch.autograd.grad((v64 * upstream.double()).sum(), (c64, a64, b64)))
        alone = {}
        for group, impl in ((POP_TRITON, "triton"), (POP_REFERENCE, "reference")):
            # the members of a group stacked on their own: what they get without the others
            idx = torch.tensor(group)
            sub = [x.detach()[idx].clone().requires_grad_() for x in (cost, a, b)]
            settings = {k: [x[i] for i in group] if isinstance(x, list) else x
                        for k, x in kw.items()}  # fmt: skip
            vi = ot_loss(*sub, impl=impl, **settings)
            one = (vi, *torch.autograd.grad((vi * upstream[idx]).sum(), sub))
            for row, i in enumerate(group):
                alone[i] = all(torch.equal(x[i], y[row]) for x, y in zip(got, one, strict=True))
        vs64 = {i: [_diff(x[i], y[i]) for x, y in zip(got, truth, strict=True)] for i in range(p)}
        res[rule] = {"alone": alone, "vs_float64": vs64}
    return res


@contextlib.contextmanager
def _as_on_cuda(used: dict):
    """ot_loss's automatic choice as on CUDA (the interpreter's CPU tensors otherwise take the
    compiled CPU loop), its calls to the kernels counted in ``used``: one problem (a single
    trial) or a stack (a population)."""
    real_takes, real_triton = ot._compiled_takes, ot.triton_ot

    def counted(cost, *args, **kw):
        used["single" if cost.shape[0] == 1 else "population"] += 1
        return real_triton(cost, *args, **kw)

    ot._compiled_takes, ot.triton_ot = (lambda cost: False), counted
    try:
        yield
    finally:
        ot._compiled_takes, ot.triton_ot = real_takes, real_triton


@contextlib.contextmanager
def _float64_kernels():
    """float64 by default, and the kernels' dtype check widened to float64: the interpreter
    runs their programs on the tensors it is given, in their dtype (the float32 zeros an
    accumulator starts from are promoted at its first update), so the same programs run
    without float32's rounding. The settings (1 / eps, eps, tol) stay float32 in both paths."""
    real = ot.triton_refusal
    ot.triton_refusal = lambda cost: real(cost.detach().float())
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(torch.float32)
        ot.triton_refusal = real


def _population_training() -> dict:
    """Stage 2 as a population against each member's single trial, both with their OT losses
    through the kernels: two epochs in float64 (the whole trajectory), and the first step in
    float32 (what float32 can be held to: test_triton_ot.py derives the bound)."""
    used = {"single": 0, "population": 0}
    with _as_on_cuda(used), _float64_kernels():
        res = {"float64": _trajectories(torch.float64, epochs=2, batch_size=5)}
        res["float64"]["kernel_vs_reference"] = _one_problem_float64()
    res["float64"]["triton_calls"] = dict(used)
    used.update(single=0, population=0)
    # the whole training set (21 samples) in one batch: one epoch is one step
    with _as_on_cuda(used):
        res["float32"] = _trajectories(torch.float32, epochs=1, batch_size=21)
    res["float32"]["triton_calls"] = used
    return res


def _one_problem_float64() -> list:
    """One problem through the kernels in float64 against the float64 reference: they run
    in float64 (a float32 step anywhere would show as a difference near 1e-7)."""
    g = torch.Generator().manual_seed(7)
    c = torch.rand(16, 10, generator=g).requires_grad_()
    a = torch.softmax(torch.randn(16, generator=g), -1).requires_grad_()
    b = torch.softmax(torch.randn(10, generator=g), -1).requires_grad_()
    v = _triton(c, a, b, eps=0.1, max_iter=50)
    got = (v, *torch.autograd.grad(v, (c, a, b)))
    return [_diff(x, y) for x, y in zip(got, _reference64(c, a, b, 0.1, 50, False), strict=True)]


def _trajectories(dtype: torch.dtype, *, epochs: int, batch_size: int) -> dict:
    """Each member of a population (weight vectors, then weight nets) against its single
    trial (``test_population._single``: the same steps through f1, f1 an identity): the
    largest difference of a loss, a learned weight or weight mass, or a head parameter; of a
    per-epoch accuracy; whether they select the same epoch; what each member's bound needs
    (eps, iterations, the cost's terms, the step sizes); and the members whose single trial
    diverges, with their error in the population."""
    import dataclasses

    from tests.trainables import test_population as tp

    data = tp._data(dtype)
    res = {}
    for weights in ("vector", "net"):
        cfgs = [
            dataclasses.replace(c, epochs=epochs, batch_size=batch_size)
            for c in tp._settings(weights)
        ]
        outs, logs = tp._population(cfgs, data)
        members, diverged = [], []
        for i, cfg in enumerate(cfgs):
            try:
                single, log = tp._single(cfg, data)
            except FloatingPointError as err:  # as in float32 on the CPU: so must the member
                member = outs[i].error
                diverged.append([i, str(err), None if member is None else str(member)])
                continue
            members.append({"member": i, **_compared(single, log, outs[i], logs[i]),
                            **_bound_inputs(cfg)})  # fmt: skip
        res[weights] = {"members": len(cfgs), "compared": members, "diverged": diverged}
    return res


_RATES = ("acc", "error")  # per-epoch accuracies and error rates (percent): counts of samples


def _compared(single, log, outcome, member_log) -> dict:
    """The largest differences between a single trial and a population member: of the
    continuous quantities (losses, learned weights and weight masses, head parameters), and
    of the accuracies (a count of predictions, which a rounding flips only at a tie)."""
    assert len(log) == len(member_log)
    pairs = [(a[k], b[k], k) for a, b in zip(log, member_log, strict=True) for k in a]
    rates = [abs(x - y) for x, y, k in pairs if k.endswith(_RATES)]
    smooth = [_rel(x, y) for x, y, k in pairs if not k.endswith(_RATES)]
    if single.weight_mass:  # a weight net through f1 records no masses (they need f1)
        smooth.append(_rel(outcome.result.sample_weights, single.sample_weights))
        smooth.append(_rel(outcome.result.weight_mass, single.weight_mass))
    state = outcome.result.state
    smooth += [_rel(state[k], v) for k, v in single.state.items() if k.startswith("classifier.")]
    return {
        "smooth": max(smooth),
        "rates": max(rates),
        "same_epoch": outcome.result.selected["epoch"] == single.selected["epoch"],
        "error": None if outcome.error is None else str(outcome.error),
    }


def _rel(x, y) -> float:
    """max |x - y| / max(1, max |y|): a difference relative to the quantity's size, absolute
    for the quantities below 1 (probabilities, weights)."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    return float((x - y).abs().max() / max(1.0, float(y.abs().max())))


def _bound_inputs(cfg) -> dict:
    """What the float32 bound of a member's step is made of (test_triton_ot.py)."""
    return {
        "eps": cfg.eps,
        "max_iter": cfg.max_iter,
        # the cost's range: feature_weight (1 - cos, in [0, 2]) + label_weight (0 or 1)
        "c_max": 2 * cfg.feature_weight + cfg.label_weight,
        "lr": cfg.lr,
        "weight_lr": cfg.weight_lr,
    }


if __name__ == "__main__":
    main()
