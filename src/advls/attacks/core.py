"""The attack contract, enforced once: every registered attack writes only its algorithm.

An algorithm is a function ``algorithm(model, x, y, *, <parameters>)`` returning the
adversarial inputs (or ``(x_adv, logits)`` when it already holds the model's logits at them).
:func:`register` turns it into the public attack, which

1. checks the parameters every attack shares, by name, with one rule each: ``eps`` (against
   the attack's ``norm``; ``None`` where an attack may also run unbounded), ``norm``,
   ``steps``/``restarts``/``queries``/``binary_search_steps``/``eot_iter``/
   ``target_classes``, ``step_size``, ``random_start``/``abort_early``/``targeted`` and
   ``seed``;
2. checks ``x`` (floats in [0, 1]) and ``y`` (1-D integer labels of the same length);
3. puts the model in eval mode with its parameters frozen (restored afterwards), and wraps it
   to count forward passes and to check its first output (``(N, K)`` logits, labels in range);
4. runs the algorithm on a detached ``x`` and int64 labels;
5. clips the result into [0, 1] and, for bounded attacks, into the eps-ball; and
6. scores it: success is re-predicting the returned points (one forward pass, unless the
   algorithm returned the logits of exactly these points), with per-example L2 and L-inf
   sizes and the number of model calls.

The algorithm checks only its own parameters (``rho``, ``p_init``, ...). Registration also
puts the attack in :data:`ATTACKS`, which :func:`from_config` builds attacks from.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advls.attacks.geometry import Norm, geometry, norms
from advls.attacks.validation import (
    check_batch,
    check_eps,
    check_int,
    check_logits,
    check_number,
    check_seed,
)

__all__ = [
    "ATTACKS",
    "NORMS",
    "Attack",
    "AttackResult",
    "CountingModel",
    "eval_mode",
    "from_config",
    "keyword_parameters",
    "register",
]


@dataclass(frozen=True)
class AttackResult:
    """Adversarial inputs with per-example outcome and perturbation sizes.

    ``success[i]`` is True when the model misclassifies ``x_adv[i]`` (an input that was
    misclassified to begin with counts as a success: robust accuracy is ``1 - success``).
    ``model_calls`` counts forward passes over the batch (a forward+backward counts once).
    """

    x_adv: Tensor
    success: Tensor
    l2: Tensor
    linf: Tensor
    model_calls: int

    @property
    def robust_accuracy(self) -> float:
        """Share of the attacked points the attack did not fool (NaN for none)."""
        return 1.0 - float(self.success.float().mean()) if self.success.numel() else float("nan")

    @property
    def success_rate(self) -> float:
        """Share of the attacked points the attack fooled (NaN for none)."""
        return float(self.success.float().mean()) if self.success.numel() else float("nan")

    def cpu(self) -> AttackResult:
        """The same result with every tensor on the CPU."""
        tensors = (self.x_adv, self.success, self.l2, self.linf)
        return AttackResult(*(t.cpu() for t in tensors), self.model_calls)

    @staticmethod
    def concat(parts: Sequence[AttackResult]) -> AttackResult:
        """The results of consecutive batches as one (model calls add up)."""
        fields = zip(*((p.x_adv, p.success, p.l2, p.linf) for p in parts), strict=True)
        tensors = [torch.cat(list(field)) for field in fields]
        return AttackResult(*tensors, sum(p.model_calls for p in parts))


class CountingModel(nn.Module):
    """Wraps a model to count its forward passes (the attack's ``model_calls``).

    Given ``labels``, it also checks the first output against them (shape and label range),
    so an attack validates the model without spending a forward pass on it.
    """

    def __init__(self, model: nn.Module, labels: Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self._unchecked_labels = labels

    def forward(self, x: Tensor) -> Tensor:
        """The wrapped model's logits, counting the pass (and checking the first output)."""
        self.calls += 1
        logits = self.model(x)
        if self._unchecked_labels is not None:
            check_logits(logits, self._unchecked_labels)
            self._unchecked_labels = None
        return logits


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the attack; the previous state comes back."""
    # Per module: a model in train mode may hold submodules frozen in eval (a fixed BN).
    modes = [(module, module.training) for module in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for parameter, _ in grads:
        parameter.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in grads:
            parameter.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


Attack = Callable[..., AttackResult]
Algorithm = Callable[..., Tensor | tuple[Tensor, Tensor]]

#: Every attack by name, in the order registered.
ATTACKS: dict[str, Attack] = {}
#: The norms each attack takes (``None``: the attack passes its norm on, as transfer does).
NORMS: dict[str, tuple[Norm, ...] | None] = {}

#: Integer parameters shared by several attacks; each must be >= 1.
_COUNTS = ("steps", "restarts", "queries", "binary_search_steps", "eot_iter", "target_classes")
#: Switches shared by several attacks; each must be a bool.
_SWITCHES = ("random_start", "abort_early", "targeted")
#: What the shared parameters mean, added to an attack's docstring unless it says otherwise.
_SHARED_DOCS = {
    "loss": "``ce``, ``margin``, ``dlr``, ``smoothed`` (the model's own training loss) or a "
    "callable ``(logits, labels) -> (N,)`` (see ``attack_loss``).",
    "smoothing": 'for ``loss="smoothed"``: the model\'s ``{"method", "alpha", "temperature"}``.',
    "eot_iter": "gradients averaged over this many forward+backward passes at each point "
    "(expectation over transformation, for randomized models; 1 for deterministic ones).",
    "target_classes": "how many of the model's top runner-up classes at the clean input are "
    "targeted in turn (1 <= target_classes < K); a point is attacked for the next target only "
    "while no earlier one fooled it.",
    "seed": "an integer seeds a private generator on the input's device, so the result is "
    "reproducible and the global RNG is left alone; a ``torch.Generator`` is drawn from as it "
    "is; ``None`` draws from the global RNG.",
}


def _check_shared(arguments: dict[str, Any], norms_allowed: tuple[Norm, ...] | None) -> Norm:
    """Check (and normalise in place) the parameters every attack names alike; the norm."""
    norm = arguments.get("norm", norms_allowed[0] if norms_allowed else "linf")
    if norms_allowed is not None:
        if norm not in norms_allowed:
            allowed = " or ".join(repr(n) for n in norms_allowed)
            raise ValueError(f"norm must be {allowed}, got {norm!r}")
        # ``eps=None`` is a minimal-perturbation run of an attack that takes a budget (FAB).
        if arguments.get("eps") is not None:
            arguments["eps"] = check_eps(arguments["eps"], norm)
    for name in _COUNTS:
        if name in arguments:
            check_int(arguments[name], name)
    if arguments.get("step_size") is not None:
        arguments["step_size"] = check_number(arguments["step_size"], "step_size", positive=True)
    for name in _SWITCHES:
        if name in arguments and not isinstance(arguments[name], bool):
            raise ValueError(f"{name} must be True or False, got {arguments[name]!r}")
    if "seed" in arguments:
        check_seed(arguments["seed"])
    return norm


def register(
    name: str, *, norms: tuple[Norm, ...] | None = ("linf",)
) -> Callable[[Algorithm], Attack]:
    """Make ``algorithm`` the attack ``name``: the contract around it, and a registry entry.

    ``norms`` are the norms the attack takes (the first is the default when it has no
    ``norm`` parameter); an attack with an ``eps`` parameter is then bounded and its result
    is clipped into the eps-ball. ``None`` leaves ``norm`` and ``eps`` to the algorithm (a
    transfer attack passes them to the attack it wraps).
    """

    def decorate(algorithm: Algorithm) -> Attack:
        signature = inspect.signature(algorithm)
        bounded = norms is not None and "eps" in signature.parameters

        @functools.wraps(algorithm)
        def attack(*args: Any, **params: Any) -> AttackResult:
            arguments = signature.bind(*args, **params)
            arguments.apply_defaults()
            model, x, y, *_ = arguments.arguments.values()
            norm = _check_shared(arguments.arguments, norms)
            with eval_mode(model):
                check_batch(x, y)
                labels = y.long()
                counted = CountingModel(model, labels=labels)
                x0 = x.detach()
                found = algorithm(counted, x0, labels, **arguments.kwargs)
                x_adv, logits = found if isinstance(found, tuple) else (found, None)
                x_adv = x_adv.detach()
                if bounded and arguments.arguments["eps"] is not None:
                    contained = geometry(norm).enforce(x_adv, x0, arguments.arguments["eps"])
                else:
                    contained = x_adv.clamp(0.0, 1.0)
                if logits is not None and not torch.equal(contained, x_adv):
                    logits = None  # the algorithm's logits are of other points now
                return _score(counted, x0, contained, labels, logits)

        attack.__doc__ = _document_shared(algorithm.__doc__ or "", signature.parameters)
        attack.__signature__ = signature.replace(return_annotation="AttackResult")  # type: ignore[attr-defined]
        ATTACKS[name] = attack
        NORMS[name] = norms
        return attack

    return decorate


def _document_shared(doc: str, parameters: Mapping[str, inspect.Parameter]) -> str:
    """``doc`` with the shared parameters it takes but does not describe added to its Args."""
    indent = {"initial_indent": " " * 8, "subsequent_indent": " " * 12}
    missing = [
        textwrap.fill(f"{name}: {text}", 92, break_on_hyphens=False, **indent)
        for name, text in _SHARED_DOCS.items()
        if name in parameters and f"    {name}:" not in doc
    ]
    head, args, tail = doc.partition("    Args:\n")
    if not missing or not args:
        return doc
    block, blank, rest = tail.partition("\n\n")
    return head + args + block + "\n" + "\n".join(missing) + blank + rest


def _score(
    model: CountingModel, x: Tensor, x_adv: Tensor, y: Tensor, logits: Tensor | None
) -> AttackResult:
    """Success by re-predicting ``x_adv`` (or from its full-batch ``logits``), and the sizes."""
    if logits is None:
        with torch.no_grad():
            logits = model(x_adv)
    l2, linf = norms(x_adv - x)
    return AttackResult(x_adv, logits.argmax(dim=1) != y, l2, linf, model.calls)


def keyword_parameters(attack: Attack) -> list[inspect.Parameter]:
    """The parameters an attack takes by keyword (everything but model, x and y)."""
    return [
        p
        for p in inspect.signature(attack).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]


def from_config(config: Mapping[str, Any]) -> Callable[[nn.Module, Tensor, Tensor], AttackResult]:
    """An attack configured from a dict such as ``{"name": "bim", "eps": 0.1, "steps": 10}``.

    Unknown attack names and parameters the attack does not take are errors here, before
    anything runs; parameter values are checked by the attack itself.
    """
    if not isinstance(config, Mapping) or "name" not in config:
        raise ValueError("an attack config must be a mapping with a 'name' key")
    params = {key: value for key, value in config.items() if key != "name"}
    name = config["name"]
    if name not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {name!r}")
    attack = ATTACKS[name]
    accepted = [p.name for p in keyword_parameters(attack)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"attack {name!r} takes no parameter(s) {', '.join(unknown)}; "
            f"it takes {', '.join(accepted)}"
        )
    configured = functools.partial(attack, **params)
    functools.update_wrapper(configured, attack)
    return configured
