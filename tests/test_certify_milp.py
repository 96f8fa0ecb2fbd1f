"""The certified bounds against the exact minimum margin, by mixed-integer programming.

For tiny ReLU networks (and one tiny convolutional one with max pooling) the exact minimum of
each margin ``z_y - z_k`` over the box ``[max(x - eps, 0), min(x + eps, 1)]`` is the optimum
of a mixed-integer linear program (``scipy.optimize.milp``, HiGHS): every unstable ReLU and
every pooling window gets binary variables in the big-M formulation, with M from interval
bounds computed here in float64, independently of advls.certify. The MILP's minimiser is
then run through the network itself, so the comparison does not rest on the encoding: a
bound above the margin at that point would be unsound, whatever the solver did.

Run with ``-s`` to see the gaps (recorded in ``docs/certify.md``); it takes about 10 s.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix
from torch import nn

from advls import certify
from random_networks import randomly_initialised

EPSILONS = (0.02, 0.05, 0.15, 0.3)
POINTS = 8


# --------------------------------------------------------------------------- the networks
def _mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for inputs, outputs in itertools.pairwise(widths):
        layers += [nn.Linear(inputs, outputs), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _conv() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)
    )


#: name -> (input shape, builder): at most 20 hidden ReLUs in the MLPs; the conv net has 32
#: ReLUs and 8 pooling windows of 4.
NETWORKS = {
    "mlp-4-10-3": ((1, 2, 2), lambda: _mlp(4, 10, 3)),
    "mlp-6-8-8-3": ((1, 2, 3), lambda: _mlp(6, 8, 8, 3)),
    "mlp-8-20-4": ((1, 2, 4), lambda: _mlp(8, 20, 4)),
    "conv-pool": ((1, 4, 4), _conv),
}


# --------------------------------------------------------------------------- the MILP
def _layers(model: nn.Sequential, shape: tuple[int, ...]) -> list[tuple]:
    """The network as dense affine maps, ReLUs and max-pool groups, in float64."""
    layers: list[tuple] = []
    with torch.no_grad():
        for module in model:
            size = math.prod(shape)
            if isinstance(module, nn.Flatten):
                shape = (size,)
            elif isinstance(module, nn.Linear | nn.Conv2d):
                basis = torch.eye(size, dtype=torch.float64).view(size, *shape)
                double = module.double()
                offset = double(torch.zeros(1, *shape, dtype=torch.float64))
                columns = double(basis) - offset
                layers.append(
                    ("affine", columns.reshape(size, -1).T.numpy(), offset.flatten().numpy())
                )
                shape = tuple(offset.shape[1:])
                module.float()
            elif isinstance(module, nn.ReLU):
                layers.append(("relu",))
            elif isinstance(module, nn.MaxPool2d):
                index = torch.arange(size, dtype=torch.float64).view(1, *shape)
                windows = nn.functional.unfold(
                    index.view(shape[0], 1, *shape[1:]), module.kernel_size, stride=module.stride
                )  # (C, k, L) positions per channel's window
                groups = windows.permute(0, 2, 1).reshape(-1, windows.shape[1]).long().numpy()
                layers.append(("maxpool", groups))
                out = module(torch.zeros(1, *shape))
                shape = tuple(out.shape[1:])
            else:
                raise TypeError(type(module).__name__)
    return layers


class _Program:
    """Rows of ``lb <= A v <= ub`` over variables with bounds, built layer by layer."""

    def __init__(self) -> None:
        self.rows: list[tuple[dict[int, float], float, float]] = []
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.integer: list[int] = []

    def variables(self, lower: np.ndarray, upper: np.ndarray, integer: bool = False) -> np.ndarray:
        start = len(self.lower)
        self.lower += list(lower)
        self.upper += list(upper)
        self.integer += [int(integer)] * len(lower)
        return np.arange(start, start + len(lower))

    def row(self, terms: dict[int, float], low: float, high: float) -> None:
        self.rows.append((terms, low, high))

    def solve(self, objective: dict[int, float]) -> tuple[float, np.ndarray]:
        size = len(self.lower)
        cost = np.zeros(size)
        for index, value in objective.items():
            cost[index] += value
        r, c, v = [], [], []
        for number, (terms, _, _) in enumerate(self.rows):
            for index, value in terms.items():
                r.append(number)
                c.append(index)
                v.append(value)
        matrix = coo_matrix((v, (r, c)), shape=(len(self.rows), size))
        constraint = LinearConstraint(
            matrix, [row[1] for row in self.rows], [row[2] for row in self.rows]
        )
        result = milp(
            cost,
            integrality=np.array(self.integer),
            bounds=Bounds(np.array(self.lower), np.array(self.upper)),
            constraints=constraint,
            options={"mip_rel_gap": 1e-9, "time_limit": 60},
        )
        assert result.status == 0, result.message
        return float(result.fun), result.x


def _encode(
    layers: list[tuple], lower: np.ndarray, upper: np.ndarray
) -> tuple[_Program, np.ndarray, np.ndarray]:
    """The network over the box as a MILP; the input's and the output's variables."""
    program = _Program()
    inputs = program.variables(lower, upper)
    current, low, high = inputs, lower, upper
    for layer in layers:
        if layer[0] == "affine":
            weight, bias = layer[1], layer[2]
            out_low = np.clip(weight, 0, None) @ low + np.clip(weight, None, 0) @ high + bias
            out_high = np.clip(weight, 0, None) @ high + np.clip(weight, None, 0) @ low + bias
            out = program.variables(out_low - 1e-9, out_high + 1e-9)
            for j in range(len(out)):
                terms = {int(out[j]): 1.0}
                for i in np.nonzero(weight[j])[0]:
                    terms[int(current[i])] = terms.get(int(current[i]), 0.0) - float(weight[j, i])
                program.row(terms, float(bias[j]), float(bias[j]))
            current, low, high = out, out_low, out_high
        elif layer[0] == "relu":
            out = program.variables(np.clip(low, 0, None), np.clip(high, 0, None))
            for j in range(len(out)):
                a, z, lo, hi = int(out[j]), int(current[j]), float(low[j]), float(high[j])
                if lo >= 0:
                    program.row({a: 1.0, z: -1.0}, 0.0, 0.0)
                elif hi > 0:  # unstable: a >= z, a <= z - lo (1 - d), a <= hi d
                    d = int(program.variables(np.zeros(1), np.ones(1), integer=True)[0])
                    program.row({a: 1.0, z: -1.0}, 0.0, math.inf)
                    program.row({a: 1.0, z: -1.0, d: -lo}, -math.inf, -lo)
                    program.row({a: 1.0, d: -hi}, -math.inf, 0.0)
            current, low, high = out, np.clip(low, 0, None), np.clip(high, 0, None)
        else:  # max pooling: m >= z_i, m <= z_i + (U - l_i)(1 - d_i), one d_i = 1
            groups = layer[1]
            out_low, out_high = low[groups].max(1), high[groups].max(1)
            out = program.variables(out_low, out_high)
            for g, members in enumerate(groups):
                picks = program.variables(
                    np.zeros(len(members)), np.ones(len(members)), integer=True
                )
                top = float(out_high[g])
                for member, d in zip(members, picks, strict=True):
                    m, z, spread = int(out[g]), int(current[member]), top - float(low[member])
                    program.row({m: 1.0, z: -1.0}, 0.0, math.inf)
                    program.row({m: 1.0, z: -1.0, int(d): spread}, -math.inf, spread)
                program.row({int(d): 1.0 for d in picks}, 1.0, 1.0)
            current, low, high = out, out_low, out_high
    return program, inputs, current


# --------------------------------------------------------------------------- the test
def test_every_bound_is_below_the_exact_minimum_margin() -> None:
    gaps: dict[tuple[str, float], dict[str, list[float]]] = {}
    for name, (shape, build) in NETWORKS.items():
        model = randomly_initialised(build(), seed=len(name))
        layers = _layers(model, shape)
        double = build().double().eval()
        double.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
        x = torch.rand((POINTS, *shape), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y = model(x).argmax(1)
        for eps in EPSILONS:
            bounds = {m: certify.margin_bounds(model, x, y, eps, m) for m in certify.METHODS}
            for n in range(POINTS):
                lower = (x[n].double() - eps).clamp(min=0).flatten().numpy()
                upper = (x[n].double() + eps).clamp(max=1).flatten().numpy()
                program, inputs, outputs = _encode(layers, lower, upper)
                samples = torch.from_numpy(
                    lower + (upper - lower) * np.random.default_rng(n).random((2000, lower.size))
                )
                with torch.no_grad():
                    sampled = double(samples.view(-1, *shape))
                for k in range(model(x[:1]).shape[1]):
                    if k == int(y[n]):
                        continue
                    objective = {int(outputs[int(y[n])]): 1.0, int(outputs[k]): -1.0}
                    exact, solution = program.solve(objective)
                    # The encoding is right: the minimiser's margin, by the network, is its value.
                    point = torch.from_numpy(solution[inputs]).view(1, *shape)
                    assert (point >= torch.from_numpy(lower).view_as(point) - 1e-9).all()
                    with torch.no_grad():
                        logits = double(point)[0]
                    achieved = float(logits[int(y[n])] - logits[k])
                    assert math.isclose(achieved, exact, abs_tol=1e-6), (achieved, exact)
                    # ... and it is the minimum: no sampled point goes below it.
                    assert float((sampled[:, int(y[n])] - sampled[:, k]).min()) >= exact - 1e-6
                    for method, bound in bounds.items():
                        value = float(bound[n, k])
                        assert value <= achieved + 1e-5, (name, eps, method, value, achieved)
                        gaps.setdefault((name, eps), {}).setdefault(method, []).append(
                            achieved - value
                        )
    solved = sum(len(per["ibp"]) for per in gaps.values())
    print(f"\nmean gap to the exact minimum margin ({solved} MILPs), per network, eps {EPSILONS}")
    for (name, eps), per_method in gaps.items():
        means = {m: float(np.mean(v)) for m, v in per_method.items()}
        print(f"  {name:12s} eps {eps:<5} " + "  ".join(f"{m} {v:.4f}" for m, v in means.items()))
        assert means["crown"] <= means["crown-ibp"] + 1e-9, (name, eps)
        # At eps 0.3 (boxes over 60% of the pixel range) IBP's box through one conv layer can
        # beat the linear relaxations of ReLU and pooling: not asserted there.
        if eps <= 0.15:
            assert means["crown"] < means["ibp"], (name, eps)
    closed = [
        1 - np.mean(per["crown"]) / np.mean(per["ibp"])
        for (_, eps), per in gaps.items()
        if eps <= 0.15
    ]
    print(
        f"  at eps <= 0.15 full CROWN closes {100 * np.mean(closed):.0f}% of IBP's gap on average"
    )
