"""The method registry: the one table of compressed-activation training methods.

One :class:`MethodSpec` per method holds its name, the parameters it takes and their
validation, how it wraps a layer (``build``), and what the budget planner may do with it
(``cheaper``: the methods to fall back to, in order; ``eps`` is varied down a ladder when the
method takes it). Everything else reads this table: ``wrap_last_layers``, the experiment
schema (``common.config.Method`` and ``CompressionConfig``), the planner, the training loop's
``wrap_params``, ``edgefed methods`` and the dashboard's ``GET /api/methods``.

This module imports no torch: ``build`` functions import the layer code when called, so the
schema, the CLI and the dashboard can read the table without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .layers import Method
    from .rank import BudgetLedger

RADII = (2, 4, 7)
DEFAULT_EPS = 0.8
DEFAULT_RADIUS = 2

Budget = tuple["BudgetLedger", int] | None
Builder = Callable[[Mapping[str, Any], str, Budget], "Method"]
"""(validated parameters, layer name, (ledger, layer index) or None) -> the layer's method."""


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_rank(value: Any) -> bool:
    ranks = value if isinstance(value, Sequence) else (value,)
    return bool(ranks) and all(is_int(k) and k >= 1 for k in ranks)


@dataclass(frozen=True)
class Param:
    """A method parameter: ``valid(value)`` holds for an accepted value, ``rule`` says which
    values are accepted (in error messages and the API), ``tag`` prefixes its value in short
    experiment names (``eps0.8``, ``r2``)."""

    name: str
    rule: str
    valid: Callable[[Any], bool]
    tag: str

    def check(self, value: Any) -> None:
        """``ValueError`` naming the parameter and the rule unless ``value`` is valid."""
        if not self.valid(value):
            raise ValueError(f"{self.name}={value!r} must be {self.rule}")


EPS = Param("eps", "a number in (0, 1]", lambda v: _is_number(v) and 0.0 < v <= 1.0, "eps")
RANK = Param("rank", "an int >= 1 or a tuple of ints >= 1", _is_rank, "rank")
BUDGET = Param("budget_bytes", "an int >= 1", lambda v: is_int(v) and v >= 1, "budget")
RADIUS = Param("radius", f"one of {RADII}", lambda v: is_int(v) and v in RADII, "r")
EXCLUSIVE = ("rank", ("eps", "budget_bytes"))  # rank fixes the ranks: no eps, no budget


def _vanilla(params: Mapping[str, Any], layer: str, budget: Budget) -> Method:
    from .methods import Vanilla

    return Vanilla()


def _gradfilter(params: Mapping[str, Any], layer: str, budget: Budget) -> Method:
    from .methods import GradFilter

    return GradFilter(params.get("radius", DEFAULT_RADIUS))


def _tucker(*, batch_only: bool = False, warm_start: bool = False) -> Builder:
    """A Tucker method's builder; eps defaults to 0.8, or to 1.0 (the budget alone decides)
    under a budget."""

    def build(params: Mapping[str, Any], layer: str, budget: Budget) -> Method:
        from .methods import TuckerMethod

        eps = params.get("eps")
        if eps is None:
            eps = 1.0 if budget is not None else DEFAULT_EPS
        return TuckerMethod(layer=layer, eps=eps, rank=params.get("rank"), budget=budget,
                            batch_only=batch_only, warm_start=warm_start)

    return build


@dataclass(frozen=True)
class MethodSpec:
    """One training method of a wrapped layer.

    ``lean``: the method stores no plain X, so ReLU/BatchNorm in the trainable region become
    their lean versions and convs must use explicit int zero padding. ``cheaper``: the
    planner's fallbacks after this method, in order.
    """

    name: str
    summary: str
    params: tuple[Param, ...]
    build: Builder
    cheaper: tuple[str, ...]
    lean: bool = True

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def takes(self, name: str) -> bool:
        return name in self.param_names

    def check(self, params: Mapping[str, Any]) -> None:
        """``ValueError`` naming the parameter: unknown to this method, invalid, or given with
        one it excludes (``rank`` with ``eps`` / ``budget_bytes``)."""
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for method={self.name!r}; "
                             f"allowed: {list(self.param_names)}")
        for param in self.params:
            if params.get(param.name) is not None:
                param.check(params[param.name])
        fixed, excluded = EXCLUSIVE
        if params.get(fixed) is not None and any(params.get(e) is not None for e in excluded):
            raise ValueError(f"{fixed} fixes the ranks: give {fixed}, or "
                             f"{' and/or '.join(excluded)}")

    def choose(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters this method takes out of ``values`` (e.g. an experiment's
        compression settings), None values dropped; a ``rank`` drops what it excludes."""
        chosen = {n: values[n] for n in self.param_names if values.get(n) is not None}
        fixed, excluded = EXCLUSIVE
        if fixed in chosen:
            chosen = {n: v for n, v in chosen.items() if n not in excluded}
        return chosen

    def tag(self, params: Mapping[str, Any]) -> str:
        """Short name of the parameters, as in ``eps0.8`` or ``r2``."""
        return "-".join(f"{p.tag}{params[p.name]}" for p in self.params if p.name in params)


REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("vanilla", "plain backprop: autograd keeps X", (), _vanilla,
               cheaper=("gradfilter", "svd", "hosvd"), lean=False),
    MethodSpec("svd", "X_(0) ~ U_k (U_k^T X_(0)): SVD of the batch mode, eps rule",
               (EPS,), _tucker(batch_only=True), cheaper=("hosvd",)),
    MethodSpec("hosvd", "X ~ [[S; U_n]]: truncated HOSVD, eps rule, fixed rank or budget",
               (EPS, RANK, BUDGET), _tucker(), cheaper=()),
    MethodSpec("asi", "HOSVD ranks fixed at the first batch, then one warm-started subspace "
               "iteration per step", (EPS, RANK, BUDGET), _tucker(warm_start=True), cheaper=()),
    MethodSpec("gradfilter", "gradient filtering: X averaged over R x R patches",
               (RADIUS,), _gradfilter, cheaper=("svd", "hosvd")),
)}
METHODS: tuple[str, ...] = tuple(REGISTRY)


def method_spec(name: str) -> MethodSpec:
    """The registry entry of ``name``; ``ValueError`` listing the known methods otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"method={name!r} is not one of {METHODS}") from None


def _check_registry() -> None:
    for spec in REGISTRY.values():
        for other in spec.cheaper:
            if other not in REGISTRY or other == spec.name:
                raise ValueError(f"{spec.name}.cheaper: {other!r} is not another method")


_check_registry()
