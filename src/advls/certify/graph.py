"""A model read as a chain of operations that the bounds understand.

:func:`extract` traces a model with ``torch.fx`` (public API) and turns its graph into a
:class:`Chain`: a sequence of operations, each taking the previous one's output. Standard
layers and the known functions are read as leaves, so advls's functional forwards
(``F.relu``, ``x.flatten(1)``, :func:`advls.models.max_pool_2x2`, which branches on
``x.requires_grad`` and so cannot be traced through) and users' own models (``nn.Sequential``
or functional) read the same way.

=================================== ====================================================
operation                           read as
=================================== ====================================================
``nn.Linear``, ``F.linear``         :class:`Dense` (affine)
``nn.Conv2d``, ``F.conv2d``         :class:`Conv` (affine; zero padding)
``nn.BatchNorm1d/2d`` (running      :class:`Scale` (per-channel affine, as in eval mode)
stats), ``Normalize``, ``x - c``,
``x * c``, ``x / c``, ``x + c``
``nn.AvgPool2d``, ``F.avg_pool2d``, :class:`Pool` (linear, non-negative weights)
``adaptive_avg_pool2d``
``flatten``, ``view``, ``reshape``  :class:`Reshape`
``nn.ReLU``, ``F.relu``, ``relu``   :class:`ReLU`
``nn.MaxPool2d``, ``F.max_pool2d``, :class:`MaxPool`
``max_pool_2x2``
``nn.Dropout``, ``F.dropout``,      nothing (the identity in eval mode)
``nn.Identity``, ``contiguous``
=================================== ====================================================

Anything else is refused with a ``ValueError`` naming the layer or function and where it is
(``certify does not support nn.Tanh at 'features.3'``); so are graphs that branch and join
again (residual additions, as in ``resnet18``). Every operation holds live references to the
model's parameters and buffers, so bounds computed from a chain are differentiable with
respect to them (certified training). The chain is checked against the model's own forward
pass on an example before it is used.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from advls.attacks import eval_mode
from advls.models import Normalize, max_pool_2x2

__all__ = [
    "Chain",
    "Conv",
    "Dense",
    "LinearOp",
    "MaxPool",
    "Op",
    "Pool",
    "ReLU",
    "Reshape",
    "Scale",
    "extract",
]

Shape = tuple[int, ...]


# --------------------------------------------------------------------------- operations
@dataclass(frozen=True, eq=False)
class Op:
    """One operation of a chain: where it sits in the model and its per-example shapes."""

    name: str
    in_shape: Shape
    out_shape: Shape

    def forward(self, x: Tensor) -> Tensor:
        """The operation on a batch ``(B, *in_shape)``."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class LinearOp(Op):
    """An affine operation ``L x + b``: what interval and linear bounds need of it.

    ``tf32`` names the kind of kernel it runs on CUDA (``"conv"`` or ``"matmul"``), whose
    TensorFloat-32 switch changes its rounding (:func:`advls.certify.ibp.unit_roundoff`).
    """

    tf32: str | None = None

    @property
    def fan_in(self) -> int:
        """The most terms one output sums (for rounding-error bounds)."""
        return 1

    def apply(self, x: Tensor) -> Tensor:
        """``L x`` (no bias) on a batch."""
        raise NotImplementedError

    def apply_abs(self, x: Tensor) -> Tensor:
        """``|L| x`` on a batch: the radius an interval of half-widths ``x`` maps to."""
        raise NotImplementedError

    def transpose(self, a: Tensor) -> Tensor:
        """``L^T a`` for a batch ``(B, *out_shape)`` of linear functionals on the output."""
        raise NotImplementedError

    def bias(self, dtype: torch.dtype) -> Tensor | None:
        """``b``, broadcastable against ``(B, *out_shape)``; None when there is none."""
        return None

    def magnitude(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """An upper bound on ``|L| x + |b|`` for ``x >= 0``, broadcastable to the output.

        The default is exact; layers where that costs a pass of their own bound it cheaply.
        """
        out = self.apply_abs(x)
        b = self.bias(dtype)
        return out if b is None else out + b.abs()

    def forward(self, x: Tensor) -> Tensor:
        out = self.apply(x)
        b = self.bias(x.dtype)
        return out if b is None else out + b


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


@dataclass(frozen=True, eq=False)
class Dense(LinearOp):
    """``x W^T + b`` over the last dimension (``nn.Linear``, ``F.linear``)."""

    weight: Tensor = None  # type: ignore[assignment]
    bias_: Tensor | None = None

    @property
    def fan_in(self) -> int:
        return int(self.weight.shape[1])

    def apply(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))

    def apply_abs(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype).abs())

    def transpose(self, a: Tensor) -> Tensor:
        return a @ self.weight.to(a.dtype)

    def bias(self, dtype: torch.dtype) -> Tensor | None:
        return _cast(self.bias_, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), _cast(self.bias_, x.dtype))


@dataclass(frozen=True, eq=False)
class Conv(LinearOp):
    """2-D convolution with zero padding (``nn.Conv2d``, ``F.conv2d``)."""

    weight: Tensor = None  # type: ignore[assignment]
    bias_: Tensor | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def fan_in(self) -> int:
        return int(math.prod(self.weight.shape[1:]))

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def apply(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight.to(x.dtype))

    def apply_abs(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight.to(x.dtype).abs())

    def transpose(self, a: Tensor) -> Tensor:
        # The transposed convolution; output_padding restores the rows and columns a strided
        # convolution drops, so the result has exactly the input's shape.
        kernel = self.weight.shape[2:]
        output_padding = tuple(
            size - ((out - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, out, s, p, d, k in zip(
                self.in_shape[1:], self.out_shape[1:], self.stride, self.padding,
                self.dilation, kernel, strict=True,
            )
        )  # fmt: skip
        return F.conv_transpose2d(
            a, self.weight.to(a.dtype), None, self.stride, self.padding, output_padding,
            self.groups, self.dilation,
        )  # fmt: skip

    def bias(self, dtype: torch.dtype) -> Tensor | None:
        return None if self.bias_ is None else self.bias_.to(dtype).view(-1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight.to(x.dtype), _cast(self.bias_, x.dtype)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def magnitude(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        # |W| x bounded per output channel by the row sums of |W| against each input
        # channel's largest value: a small matrix product instead of a third convolution.
        batch, groups = x.shape[0], self.groups
        peak = x.amax(dim=(-2, -1)).view(batch, groups, -1)  # (B, G, Cin/G)
        weight = self.weight.to(dtype).abs().sum(dim=(2, 3))  # (Cout, Cin/G)
        weight = weight.view(groups, -1, weight.shape[1])  # (G, Cout/G, Cin/G)
        out = torch.einsum("bgi,goi->bgo", peak, weight).reshape(batch, -1, 1, 1)
        b = self.bias(dtype)
        return out if b is None else out + b.abs()


@dataclass(frozen=True, eq=False)
class Scale(LinearOp):
    """An elementwise affine map ``s x + t`` (batch norm in eval mode, normalisation).

    ``coefficients(dtype)`` returns ``(s, t)`` broadcastable to ``(B, *shape)``; it reads the
    layer's parameters and statistics when called, so they are never stale.
    """

    coefficients: Callable[[torch.dtype], tuple[Tensor, Tensor]] = None  # type: ignore[assignment]

    def apply(self, x: Tensor) -> Tensor:
        return x * self.coefficients(x.dtype)[0]

    def apply_abs(self, x: Tensor) -> Tensor:
        return x * self.coefficients(x.dtype)[0].abs()

    def transpose(self, a: Tensor) -> Tensor:
        return a * self.coefficients(a.dtype)[0]

    def bias(self, dtype: torch.dtype) -> Tensor | None:
        return self.coefficients(dtype)[1]

    @property
    def fan_in(self) -> int:
        return 2  # a product and a sum


@dataclass(frozen=True, eq=False)
class Pool(LinearOp):
    """A linear pooling with non-negative weights (average pooling), so ``|L| = L``."""

    call: Callable[[Tensor], Tensor] = None  # type: ignore[assignment]
    window: int = 1

    @property
    def fan_in(self) -> int:
        return self.window + 1  # the sum and the division

    def apply(self, x: Tensor) -> Tensor:
        return self.call(x)

    def apply_abs(self, x: Tensor) -> Tensor:
        return self.call(x)

    def transpose(self, a: Tensor) -> Tensor:
        # The pooling is linear, so its vector-Jacobian product is exactly L^T a.
        with torch.enable_grad():
            probe = torch.zeros((a.shape[0], *self.in_shape), dtype=a.dtype, device=a.device)
            probe.requires_grad_(True)
            (grad,) = torch.autograd.grad(self.call(probe), probe, a)
        return grad


@dataclass(frozen=True, eq=False)
class Reshape(LinearOp):
    """A change of shape that keeps the batch dimension (flatten, view, reshape)."""

    def apply(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def apply_abs(self, x: Tensor) -> Tensor:
        return self.apply(x)

    def transpose(self, a: Tensor) -> Tensor:
        return a.reshape(a.shape[0], *self.in_shape)


@dataclass(frozen=True, eq=False)
class ReLU(Op):
    """``max(x, 0)`` elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)


@dataclass(frozen=True, eq=False)
class MaxPool(Op):
    """2-D max pooling (padding counts as minus infinity, as in ``F.max_pool2d``)."""

    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def pads(self) -> tuple[int, int, int, int]:
        """``F.pad``'s (left, right, top, bottom): the padding, plus, with ``ceil_mode``, what
        the last windows reach past the input (both count as minus infinity)."""
        height, width = self.in_shape[1:]
        out_h, out_w = self.out_shape[1:]
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel, self.stride, self.padding, self.dilation
        )  # fmt: skip
        extra_h = max(0, (out_h - 1) * sh + dh * (kh - 1) + 1 - (height + 2 * ph))
        extra_w = max(0, (out_w - 1) * sw + dw * (kw - 1) + 1 - (width + 2 * pw))
        return (pw, pw + extra_w, ph, ph + extra_h)

    def forward(self, x: Tensor) -> Tensor:
        # The maximum of the kernel's strided views: on CPU ten times faster than
        # max_pool2d's kernel on small maps (benchmarks/bench_models.py), and differentiable.
        out_h, out_w = self.out_shape[1:]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        pads = self.pads()
        if any(pads):
            x = F.pad(x, pads, value=-math.inf)
        result = None
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + (out_h - 1) * sh + 1, sh)
                cols = slice(j * dw, j * dw + (out_w - 1) * sw + 1, sw)
                view = x[..., rows, cols]
                result = view if result is None else torch.maximum(result, view)
        return result


@dataclass(frozen=True)
class Chain:
    """A model as operations applied one after the other; ``input_shape`` is per example."""

    ops: tuple[Op, ...]
    input_shape: Shape
    num_classes: int

    def forward(self, x: Tensor) -> Tensor:
        """The logits the chain computes: the model's own, up to rounding."""
        for op in self.ops:
            x = op.forward(x)
        return x


# --------------------------------------------------------------------------- tracing
#: Modules read as one operation (never traced into).
_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.Flatten, nn.Dropout, nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, Normalize,
)  # fmt: skip
_RELU = (F.relu, torch.relu, torch.relu_)
_DROPOUT = (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout)
_RESHAPE_FUNCTIONS = (torch.flatten, torch.reshape)
_RESHAPE_METHODS = ("flatten", "view", "reshape")
_IDENTITY_METHODS = ("contiguous",)
_ARITHMETIC = {
    operator.add: "add", torch.add: "add", "add": "add",
    operator.sub: "sub", torch.sub: "sub", "sub": "sub",
    operator.mul: "mul", torch.mul: "mul", "mul": "mul",
    operator.truediv: "div", torch.div: "div", "div": "div",
    operator.neg: "neg", torch.neg: "neg", "neg": "neg",
}  # fmt: skip
_RESIDUAL_NOTE = (
    "certify reads models as chains of layers; graphs that branch and join again (residual "
    "connections, as in resnet18) are not supported"
)


class _Tracer(fx.Tracer):
    def __init__(self) -> None:
        # max_pool_2x2 branches on requires_grad, which a symbolic value cannot answer:
        # record it as one call instead of tracing into it.
        super().__init__(autowrap_functions=(max_pool_2x2,))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, module_qualified_name)


class _Recorder(fx.Interpreter):
    """Runs the traced graph once and keeps every node's value (shapes, constants)."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.values[n] = value
        return value


def _where(node: fx.Node) -> str:
    """The module a node belongs to, for messages."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        return str(list(stack)[-1]) or "the model"
    return "the model"


#: Public names of functions, for messages: ``F.gelu`` rather than a builtin's repr.
_NAMES: dict[int, str] = {
    **{
        id(v): f"torch.{k}" for k, v in vars(torch).items() if callable(v) and not k.startswith("_")
    },
    **{id(v): f"F.{k}" for k, v in vars(F).items() if callable(v) and not k.startswith("_")},
    **{
        id(v): f"operator.{k}"
        for k, v in vars(operator).items()
        if callable(v) and not k.startswith("_")
    },
}


def _describe(target: object) -> str:
    if isinstance(target, str):
        return f"the method .{target}()"
    if id(target) in _NAMES:
        return _NAMES[id(target)]
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{getattr(target, '__qualname__', repr(target))}"


def _module_label(module: nn.Module) -> str:
    cls = type(module)
    if cls.__module__.startswith("torch.nn"):
        return f"nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _bind(args: tuple, kwargs: dict, names: Sequence[str], defaults: dict) -> dict[str, Any]:
    """A call's arguments by parameter name (the first argument, the input, excluded)."""
    bound = dict(defaults)
    bound.update(zip(names, args[1:], strict=False))
    bound.update(kwargs)
    return bound


class _Reader:
    """Turns the traced graph, node by node, into operations."""

    def __init__(self, module: fx.GraphModule, values: dict[fx.Node, Any]) -> None:
        self.module = module
        self.values = values

    def value(self, arg: Any) -> Any:
        return self.values[arg] if isinstance(arg, fx.Node) else arg

    def shapes(self, node: fx.Node, source: fx.Node) -> tuple[Shape, Shape]:
        return tuple(self.values[source].shape[1:]), tuple(self.values[node].shape[1:])

    def unsupported(self, what: str, node: fx.Node) -> ValueError:
        return ValueError(f"certify does not support {what} at '{_where(node)}'")

    # -- one node ------------------------------------------------------------------------
    def read(self, node: fx.Node, source: fx.Node) -> Op | None:
        name = _where(node)
        in_shape, out_shape = self.shapes(node, source)
        if node.op == "call_module":
            module = self.module.get_submodule(str(node.target))
            return self.read_module(module, node, name, in_shape, out_shape)
        target = node.target
        if node.op == "call_method" and target in _IDENTITY_METHODS:
            return None
        if target in _RELU or (node.op == "call_method" and target == "relu"):
            return ReLU(name, in_shape, out_shape)
        if target in _DROPOUT:
            return None  # dropout is the identity in eval mode, where bounds are computed
        if target in _RESHAPE_FUNCTIONS or (
            node.op == "call_method" and target in _RESHAPE_METHODS
        ):
            return self.reshape(node, name, in_shape, out_shape)
        if target is max_pool_2x2:
            return MaxPool(name, in_shape, out_shape, (2, 2), (2, 2))
        if target is F.max_pool2d:
            options = _bind(
                node.args, node.kwargs,
                ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                 "return_indices": False},
            )  # fmt: skip
            return self.max_pool(node, name, in_shape, out_shape, options)
        if target is F.avg_pool2d or target is F.adaptive_avg_pool2d:
            rest, kwargs = tuple(self.value(a) for a in node.args[1:]), dict(node.kwargs)
            return self.pool(target, rest, kwargs, name, in_shape, out_shape)
        if target is F.linear:
            options = _bind(node.args, node.kwargs, ("weight", "bias"), {"bias": None})
            weight, bias = self.value(options["weight"]), self.value(options["bias"])
            return self.dense(node, name, in_shape, out_shape, weight, bias)
        if target is F.conv2d:
            options = _bind(
                node.args, node.kwargs,
                ("weight", "bias", "stride", "padding", "dilation", "groups"),
                {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1},
            )  # fmt: skip
            options = {k: self.value(v) for k, v in options.items()}
            return self.conv(node, name, in_shape, out_shape, **options, padding_mode="zeros")
        if target in _ARITHMETIC:
            return self.arithmetic(node, source, _ARITHMETIC[target], name, in_shape, out_shape)
        raise self.unsupported(_describe(target), node)

    def read_module(
        self, module: nn.Module, node: fx.Node, name: str, in_shape: Shape, out_shape: Shape
    ) -> Op | None:
        if isinstance(module, nn.Dropout | nn.Identity):
            return None
        if isinstance(module, nn.ReLU):
            return ReLU(name, in_shape, out_shape)
        if isinstance(module, nn.Flatten):
            return self.reshape(node, name, in_shape, out_shape)
        if isinstance(module, nn.Linear):
            return self.dense(node, name, in_shape, out_shape, module.weight, module.bias)
        if isinstance(module, nn.Conv2d):
            return self.conv(
                node, name, in_shape, out_shape, module.weight, module.bias, module.stride,
                module.padding, module.dilation, module.groups, module.padding_mode,
            )  # fmt: skip
        if isinstance(module, nn.MaxPool2d):
            options = {
                "kernel_size": module.kernel_size, "stride": module.stride,
                "padding": module.padding, "dilation": module.dilation,
                "ceil_mode": module.ceil_mode, "return_indices": module.return_indices,
            }  # fmt: skip
            return self.max_pool(node, name, in_shape, out_shape, options)
        if isinstance(module, nn.AvgPool2d):
            kwargs = {
                "kernel_size": module.kernel_size, "stride": module.stride,
                "padding": module.padding, "ceil_mode": module.ceil_mode,
                "count_include_pad": module.count_include_pad,
                "divisor_override": module.divisor_override,
            }  # fmt: skip
            return self.pool(F.avg_pool2d, (), kwargs, name, in_shape, out_shape)
        if isinstance(module, nn.AdaptiveAvgPool2d):
            kwargs = {"output_size": module.output_size}
            return self.pool(F.adaptive_avg_pool2d, (), kwargs, name, in_shape, out_shape)
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            return self.batch_norm(module, node, name, in_shape, out_shape)
        if isinstance(module, Normalize):
            return self.normalize(module, name, in_shape, out_shape)
        raise self.unsupported(_module_label(module), node)

    # -- the operations -----------------------------------------------------------------
    def reshape(self, node: fx.Node, name: str, in_shape: Shape, out_shape: Shape) -> Op:
        batch_in = self.values[node.all_input_nodes[0]].shape[0]
        if self.values[node].shape[0] != batch_in:
            raise ValueError(
                f"certify supports reshapes that keep the batch dimension; the one at "
                f"'{name}' maps {(batch_in, *in_shape)} to {tuple(self.values[node].shape)}"
            )
        return Reshape(name, in_shape, out_shape)

    def dense(
        self, node: fx.Node, name: str, in_shape: Shape, out_shape: Shape, weight: Any, bias: Any
    ) -> Op:
        if not isinstance(weight, Tensor) or (bias is not None and not isinstance(bias, Tensor)):
            raise self.unsupported("a linear layer whose weights depend on the input", node)
        return Dense(name, in_shape, out_shape, tf32="matmul", weight=weight, bias_=bias)

    def conv(
        self, node: fx.Node, name: str, in_shape: Shape, out_shape: Shape, weight: Any,
        bias: Any, stride: Any, padding: Any, dilation: Any, groups: int, padding_mode: str,
    ) -> Op:  # fmt: skip
        if not isinstance(weight, Tensor) or weight.dim() != 4:
            raise self.unsupported("a convolution whose weights depend on the input", node)
        if padding_mode != "zeros":
            raise self.unsupported(f"nn.Conv2d with padding_mode={padding_mode!r}", node)
        kernel, dilation = tuple(weight.shape[2:]), _pair(dilation)
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
            if any(total % 2 for total in totals):
                raise self.unsupported("padding='same' with an even kernel (asymmetric)", node)
            padding = tuple(total // 2 for total in totals)
        return Conv(
            name, in_shape, out_shape, tf32="conv", weight=weight, bias_=bias,
            stride=_pair(stride), padding=_pair(padding), dilation=dilation, groups=int(groups),
        )  # fmt: skip

    def max_pool(
        self, node: fx.Node, name: str, in_shape: Shape, out_shape: Shape, options: dict
    ) -> Op:
        if options["return_indices"]:
            raise self.unsupported("max pooling that returns indices", node)
        if len(in_shape) != 3:
            raise self.unsupported(f"max pooling of inputs shaped {in_shape}", node)
        kernel = _pair(options["kernel_size"])
        stride = kernel if options["stride"] in (None, ()) else _pair(options["stride"])
        return MaxPool(
            name, in_shape, out_shape, kernel, stride, _pair(options["padding"]),
            _pair(options["dilation"]), bool(options["ceil_mode"]),
        )  # fmt: skip

    def pool(
        self, function: Callable, rest: tuple, kwargs: dict, name: str,
        in_shape: Shape, out_shape: Shape,
    ) -> Op:  # fmt: skip
        def call(x: Tensor) -> Tensor:
            return function(x, *rest, **kwargs)

        if function is F.avg_pool2d:
            kernel = rest[0] if rest else kwargs["kernel_size"]
            window = math.prod(_pair(kernel))
        else:  # an adaptive window never exceeds the whole map
            window = math.prod(in_shape[-2:])
        return Pool(name, in_shape, out_shape, call=call, window=window)

    def batch_norm(
        self, module: nn.BatchNorm1d | nn.BatchNorm2d, node: fx.Node, name: str,
        in_shape: Shape, out_shape: Shape,
    ) -> Op:  # fmt: skip
        if module.running_mean is None or module.running_var is None:
            raise self.unsupported(
                f"{_module_label(module)} without running statistics (track_running_stats)", node
            )
        # Channels are dimension 1 of (N, C) or (N, C, L) or (N, C, H, W).
        view = (-1,) + (1,) * (len(in_shape) - 1)

        def coefficients(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
            mean, var = module.running_mean.to(dtype), module.running_var.to(dtype)
            scale = torch.rsqrt(var + module.eps)
            if module.weight is not None:
                scale = scale * module.weight.to(dtype)
            shift = -mean * scale
            if module.bias is not None:
                shift = shift + module.bias.to(dtype)
            return scale.view(view), shift.view(view)

        return Scale(name, in_shape, out_shape, coefficients=coefficients)

    def normalize(self, module: Normalize, name: str, in_shape: Shape, out_shape: Shape) -> Op:
        def coefficients(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
            mean, std = module.mean.to(dtype), module.std.to(dtype)
            return 1.0 / std, -mean / std

        return Scale(name, in_shape, out_shape, coefficients=coefficients)

    def arithmetic(
        self, node: fx.Node, source: fx.Node, kind: str, name: str,
        in_shape: Shape, out_shape: Shape,
    ) -> Op:  # fmt: skip
        if node.kwargs or in_shape != out_shape:
            raise self.unsupported(f"{_describe(node.target)} in this form", node)
        if kind == "neg":
            return self._scale(name, in_shape, -1.0, 0.0)
        left, right = node.args[0], node.args[1]
        if left is source and right is source:
            raise self.unsupported(f"{_describe(node.target)} of the input with itself", node)
        other = right if left is source else left
        constant = self.value(other)
        per_example = isinstance(constant, Tensor) and constant.dim() > len(in_shape)
        if per_example and (constant.dim() > len(in_shape) + 1 or constant.shape[0] != 1):
            raise self.unsupported(f"{_describe(node.target)} with a per-example term", node)
        if not isinstance(constant, Tensor | int | float) or isinstance(constant, bool):
            raise self.unsupported(f"{_describe(node.target)} with {constant!r}", node)
        on_left = left is source
        if kind == "add":
            return self._scale(name, in_shape, 1.0, constant)
        if kind == "sub":
            return self._scale(
                name, in_shape, 1.0 if on_left else -1.0, (-1 if on_left else 1) * constant
            )
        if kind == "mul":
            return self._scale(name, in_shape, constant, 0.0)
        if on_left:  # x / c
            return self._scale(name, in_shape, 1.0 / constant, 0.0)
        raise self.unsupported("division by the input (c / x)", node)

    @staticmethod
    def _scale(name: str, shape: Shape, scale: Any, shift: Any) -> Op:
        def coefficients(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
            s = scale.to(dtype) if isinstance(scale, Tensor) else torch.tensor(scale, dtype=dtype)
            t = shift.to(dtype) if isinstance(shift, Tensor) else torch.tensor(shift, dtype=dtype)
            return s, t

        return Scale(name, shape, shape, coefficients=coefficients)


def extract(model: nn.Module, example: Tensor) -> Chain:
    """Read ``model`` as a chain of supported operations.

    Args:
        model: a module mapping ``(N, *input_shape)`` inputs to ``(N, K)`` logits. The chain
            is the network in eval mode (dropout the identity, batch norm with its running
            statistics): it is traced and checked in eval mode, and the model's modes and
            ``requires_grad`` flags are restored afterwards.
        example: one or more inputs of the model (only their shape and a check of the
            chain's output against the model's are taken from them).

    Returns:
        The :class:`Chain` of the model's operations.

    Raises:
        ValueError: the model cannot be traced, uses a layer or function the bounds do not
            support (named, with where it is), branches, does not return ``(N, K)`` logits, or
            the chain does not reproduce its output.
    """
    # Two examples, so a reshape that folds the batch dimension in is told apart.
    example = example[:1].detach().expand(2, *example.shape[1:]).contiguous()
    with eval_mode(model):
        return _extract(model, example)


def _extract(model: nn.Module, example: Tensor) -> Chain:
    try:
        graph = _Tracer().trace(model)
    except Exception as error:  # fx raises several kinds; none of them is the user's fault
        raise ValueError(
            f"certify cannot read the model as a chain of operations: torch.fx could not "
            f"trace it ({type(error).__name__}: {error})"
        ) from error
    module = fx.GraphModule(model, graph)
    recorder = _Recorder(module)
    with torch.no_grad():
        recorder.run(example)
        expected = model(example)
    if not isinstance(expected, Tensor) or expected.dim() != 2 or expected.shape[0] != 2:
        shape = tuple(expected.shape) if isinstance(expected, Tensor) else type(expected).__name__
        raise ValueError(f"model must return logits of shape (N, K), got {shape} for N = 2")
    if expected.shape[1] < 2:
        raise ValueError(f"model must return at least 2 logits (K >= 2), got {expected.shape[1]}")

    reader = _Reader(module, recorder.values)
    depends: set[fx.Node] = set()
    end: fx.Node | None = None
    ops: list[Op] = []
    for node in graph.nodes:
        if node.op == "placeholder":
            if end is not None:
                raise ValueError("certify supports models with a single input")
            end = node
            depends.add(node)
            continue
        if not any(source in depends for source in node.all_input_nodes):
            continue  # a constant (a parameter, a buffer, a value computed from them)
        if node.op == "output":
            if node.args[0] is not end:
                raise ValueError("model must return a single tensor of logits (N, K)")
            break
        depends.add(node)
        if not isinstance(recorder.values[node], Tensor):
            continue  # a shape (x.size(0), x.shape): used only to reshape
        sources = [
            source
            for source in node.all_input_nodes
            if source in depends and isinstance(recorder.values[source], Tensor)
        ]
        if sources != [end]:
            raise ValueError(f"{_RESIDUAL_NOTE}: '{node.name}' at '{_where(node)}' is one")
        op = reader.read(node, end)
        if op is not None:
            ops.append(op)
        end = node
    chain = Chain(tuple(ops), tuple(example.shape[1:]), int(expected.shape[1]))
    with torch.no_grad():
        mine = chain.forward(example)
    scale = 1.0 + float(expected.abs().max())
    if mine.shape != expected.shape or not torch.allclose(
        mine.to(expected.dtype), expected, rtol=1e-4, atol=1e-5 * scale
    ):
        raise ValueError(
            "certify's reading of the model does not reproduce its output (a forward hook, "
            "or an operation with effects the trace cannot see?)"
        )
    return chain
