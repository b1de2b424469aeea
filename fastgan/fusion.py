"""``fastgan.fuse(model)``: swap BatchNorm → (Leaky)ReLU pairs for the fused block, in place.

Two matchers, both in place (the model keeps its Python class, its other attributes and its
state_dict keys):

* inside every ``nn.Sequential``, each ``nn.BatchNorm1d``/``nn.BatchNorm2d`` directly followed
  by ``nn.LeakyReLU`` or ``nn.ReLU`` becomes one :class:`fastgan.nn.BatchNorm1dLeakyReLU`/``2d``
  (ReLU: slope 0) and the activation's slot an ``nn.Identity``, so indices stay as they were;
* in every other module whose own ``forward()`` calls a BatchNorm child and passes its output
  straight to an activation — ``F.relu``, ``F.leaky_relu`` (any constant slope), ``torch.relu``,
  ``x.relu()``, an ``nn.ReLU``/``nn.LeakyReLU`` child, ``inplace=True`` and the ``_`` variants —
  that forward is traced with ``torch.fx`` (each child module a leaf, so every module's forward
  is rewritten on its own and stays right when called alone), the activation is dropped from the
  graph, the BatchNorm child becomes the fused block, and the module gets the regenerated
  forward as an instance attribute (its class is untouched; ``copy.deepcopy`` works, pickling
  the whole module does not: save state_dicts). Plain Python attributes the forward branches
  on are read once, at tracing time. A forward that cannot be traced, that branches
  on ``self.training`` (tracing would freeze the branch), that has a ``None`` default argument
  (an ``is None`` test would be frozen) or that creates tensors is left alone, and the
  ``nn.Sequential`` matcher still runs inside it.

The fused block takes over the BatchNorm's parameter and buffer tensors themselves (an
optimizer built before fusing keeps working) and its train/eval state; it is an instance of
the BatchNorm class it replaces, with that name in its class name, so initialisation,
weight-decay and freezing code that looks for BatchNorms still finds it. Every BatchNorm left
unfused is listed in the report with the reason (followed by Dropout, its output used twice,
an activation fastgan does not fuse, ...).

Synchronised (``sync=True``, for data-parallel training): those pairs, ``nn.BatchNorm3d``
pairs too, become :class:`fastgan.nn.SyncBatchNormLeakyReLU` over ``process_group`` (default:
the whole world), and so do the fused blocks already in the model, wherever they are (a
fused block's order is its own). An ``nn.SyncBatchNorm`` → (Leaky)ReLU pair always becomes
the synchronised block, with the SyncBatchNorm's own process group unless ``process_group``
is given: fusing never drops synchronisation.
"""

from __future__ import annotations

import inspect
import types
from typing import NamedTuple, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from fastgan.nn import BatchNorm1dLeakyReLU, BatchNorm2dLeakyReLU, SyncBatchNormLeakyReLU, _adopt_state

_FUSED_CLASS = {nn.BatchNorm1d: BatchNorm1dLeakyReLU, nn.BatchNorm2d: BatchNorm2dLeakyReLU}
_SYNC_ONLY_NORMS = (nn.BatchNorm3d,)  # no unsynchronised fused twin: fused only with sync=True
_UNSYNCHRONISED_BLOCKS = (BatchNorm1dLeakyReLU, BatchNorm2dLeakyReLU)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)
_SUPPORTED = "only ReLU and LeakyReLU are fused"

# Functional activations as torch.fx records them: function → is it the in-place form.
_RELU_FUNCTIONS = {F.relu: False, torch.relu: False, torch.relu_: True, F.relu_: True}
_LEAKY_RELU_FUNCTIONS = {F.leaky_relu: False, torch._C._nn.leaky_relu: False, F.leaky_relu_: True,
                         torch._C._nn.leaky_relu_: True}
_RELU_METHODS = {"relu": False, "relu_": True}
# Activations fastgan does not fuse, named in the report as such.
_OTHER_ACTIVATION_FUNCTIONS = {
    F.gelu, F.elu, F.selu, F.celu, F.silu, F.mish, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus,
    F.prelu, F.rrelu, F.glu, F.sigmoid, F.tanh, torch.sigmoid, torch.tanh, torch.selu, torch.celu, torch.prelu,
}
_OTHER_ACTIVATION_METHODS = {"sigmoid", "sigmoid_", "tanh", "tanh_"}


class FusedPair(NamedTuple):
    """One replacement: the BatchNorm's path in the model, what it was, what it became.
    ``activation`` is empty when an already-fused block was made synchronised."""

    path: str
    norm: str
    activation: str
    fused: str


class NotFused(NamedTuple):
    """A BatchNorm :func:`fuse` left alone: its path in the model, what it is, and why."""

    path: str
    norm: str
    reason: str


class FuseReport(NamedTuple):
    """What :func:`fuse` did: ``fused`` (the replacements, ``len(report)`` of them),
    ``not_fused`` (every fusable BatchNorm left alone, with the reason) and ``rewritten`` (the
    paths of the modules whose ``forward()`` was regenerated through ``torch.fx``, ``""``
    for the model itself); ``str(report)`` one line each."""

    fused: list
    synchronised: bool = False
    not_fused: tuple = ()
    rewritten: tuple = ()

    def __len__(self) -> int:
        return len(self.fused)

    def __str__(self) -> str:
        if not self.fused:
            norms = "BatchNorm1d/2d/3d or SyncBatchNorm" if self.synchronised else "BatchNorm1d/2d or SyncBatchNorm"
            blocks = ", and no unsynchronised fused block" if self.synchronised else ""
            lines = [f"fastgan.fuse: nothing to fuse (no {norms} directly followed by ReLU/LeakyReLU{blocks})"]
        else:
            pairs = sum(1 for p in self.fused if p.activation)
            blocks = len(self.fused) - pairs
            done = [f"fused {pairs} BatchNorm + activation pair(s)"] if pairs else []
            done += [f"synchronised {blocks} fused block(s)"] if blocks else []
            where = "; batch statistics synchronised across the process group" if self.synchronised else ""
            lines = [f"fastgan.fuse: {', '.join(done)}{where}"]
            lines += [f"  {p.path}: {p.norm}{f' + {p.activation}' if p.activation else ''} -> {p.fused}"
                      for p in self.fused]
        if self.rewritten:
            lines.append("  forward() regenerated through torch.fx: "
                         + ", ".join(path or "(the model)" for path in self.rewritten))
        if self.not_fused:
            lines.append(f"  not fused ({len(self.not_fused)}):")
            lines += [f"  {n.path}: {n.norm}: {n.reason}" for n in self.not_fused]
        return "\n".join(lines)


def _synchronised_module(norm: nn.Module, slope: float, backend: Optional[str], process_group) -> nn.Module:
    """A SyncBatchNormLeakyReLU holding ``norm``'s tensors (a BatchNorm or a fused block)."""
    group = process_group if process_group is not None else getattr(norm, "process_group", None)
    reference = norm.weight if norm.weight is not None else norm.running_mean
    fused = SyncBatchNormLeakyReLU(
        norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats, process_group=group,
        device=reference.device if reference is not None else None,
        dtype=reference.dtype if reference is not None else None,
        negative_slope=slope, backend=backend,
    )
    _adopt_state(norm, fused)
    return fused


def _fused_module(norm: nn.Module, slope: float, backend: Optional[str], sync: bool, process_group) -> nn.Module:
    if sync or isinstance(norm, nn.SyncBatchNorm):
        return _synchronised_module(norm, slope, backend, process_group)
    reference = norm.weight if norm.weight is not None else norm.running_mean
    fused = _FUSED_CLASS[type(norm)](
        norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats,
        device=reference.device if reference is not None else None,
        dtype=reference.dtype if reference is not None else None,
        negative_slope=slope, backend=backend,
    )
    _adopt_state(norm, fused)
    return fused


def _fusable(norm: nn.Module, sync: bool) -> bool:
    kind = type(norm)
    return kind in _FUSED_CLASS or kind is nn.SyncBatchNorm or (sync and kind in _SYNC_ONLY_NORMS)


def _module_slope(activation: nn.Module) -> float:
    return 0.0 if isinstance(activation, nn.ReLU) else float(activation.negative_slope)


def _is_other_activation(module: nn.Module) -> bool:
    return type(module).__module__ == "torch.nn.modules.activation" and type(module) not in _ACTIVATIONS


def _sequential_reason(following: Optional[nn.Module], container_path: str) -> str:
    if following is None:
        where = f"nn.Sequential {container_path!r}" if container_path else "the model's nn.Sequential"
        return f"last in {where}: what follows it is outside the container"
    if _is_other_activation(following):
        return f"followed by {type(following).__name__}: {_SUPPORTED}"
    return f"followed by {type(following).__name__}, not directly by ReLU/LeakyReLU"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --------------------------------------------------------------------------------------
# torch.fx: BatchNorm → functional activation in a module's own forward()
# --------------------------------------------------------------------------------------


class _OwnForwardTracer(torch.fx.Tracer):
    """Traces only the root module's own forward: every submodule is a leaf (a call_module
    node), so the rewrite of one module never depends on how its children are written."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return True


class _Activation(NamedTuple):
    slope: Optional[float]  # None: not a constant number
    in_place: bool
    name: str


def _activation_of(node: torch.fx.Node, root: nn.Module) -> Optional[_Activation]:
    """The (Leaky)ReLU that ``node`` applies to its first argument, or None if it is not one."""
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        if type(module) in _ACTIVATIONS:
            return _Activation(_module_slope(module), bool(getattr(module, "inplace", False)), repr(module))
        return None
    if node.op == "call_method" and node.target in _RELU_METHODS and len(node.args) == 1 and not node.kwargs:
        return _Activation(0.0, _RELU_METHODS[node.target], f".{node.target}()")
    if node.op != "call_function":
        return None
    target = node.target
    name = getattr(target, "__name__", str(target))
    if target in _RELU_FUNCTIONS:
        in_place_argument = node.kwargs.get("inplace", node.args[1] if len(node.args) > 1 else False)
        in_place = _RELU_FUNCTIONS[target] or bool(in_place_argument)
        return _Activation(0.0, in_place, name)
    if target in _LEAKY_RELU_FUNCTIONS:
        slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
        in_place = _LEAKY_RELU_FUNCTIONS[target] or bool(
            node.kwargs.get("inplace", node.args[2] if len(node.args) > 2 else False))
        constant = isinstance(slope, (int, float)) and not isinstance(slope, bool)
        return _Activation(float(slope) if constant else None, in_place, f"{name}(negative_slope={slope})")
    return None


def _describe(node: torch.fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        return type(root.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "output":
        return "the return of forward()"
    return getattr(node.target, "__name__", str(node.target))


def _is_other_activation_node(node: torch.fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return _is_other_activation(root.get_submodule(node.target))
    if node.op == "call_method":
        return node.target in _OTHER_ACTIVATION_METHODS
    return node.op == "call_function" and node.target in _OTHER_ACTIVATION_FUNCTIONS


def _traced_graph(module: nn.Module) -> torch.fx.Graph:
    """``module``'s own forward as an fx graph; raises ValueError (the reason) when the
    regenerated forward could differ from the original on some call."""
    signature = inspect.signature(type(module).forward)
    optional = [name for name, p in signature.parameters.items() if p.default is None]
    if optional:
        raise ValueError(f"its forward() has None-default argument(s) {', '.join(optional)}: "
                         "a traced forward would freeze any `is None` test on them")
    before, original = set(vars(module)), module.training
    graphs = []
    try:
        for training in (original, not original):
            module.training = training  # this module's flag only: its children are leaves
            graphs.append(_OwnForwardTracer().trace(module))
    except Exception as error:  # anything torch.fx cannot trace: the Sequential matcher only
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"torch.fx cannot trace its forward() ({type(error).__name__}: {message})") from None
    finally:
        module.training = original
        created = set(vars(module)) - before
        for name in created:  # tensor constants the tracer stored on the module
            delattr(module, name)
    if created:
        raise ValueError("its forward() creates tensors, which a traced forward would freeze")
    if graphs[0].python_code("self").src != graphs[1].python_code("self").src:
        raise ValueError("its forward() depends on self.training, which a traced forward would freeze")
    return graphs[0]


def _owner_allows_rewrite(module: nn.Module, target: str) -> bool:
    """A BatchNorm reached as ``target`` from ``module``'s forward may be swapped only when no
    other forward calls it: it is ``module``'s own child, or held in a ModuleList/ModuleDict."""
    if "." not in target:
        return True
    owner = module.get_submodule(target.rsplit(".", 1)[0])
    return type(owner) in (nn.ModuleList, nn.ModuleDict)


def _fuse_forward(module: nn.Module, prefix: str, sync: bool, backend, process_group, fused: list,
                  reasons: dict) -> bool:
    """Rewrites ``module``'s forward when it applies an activation to a BatchNorm child's
    output; returns whether it did. Records a reason for each fusable BatchNorm it calls and
    leaves alone."""
    try:
        graph = _traced_graph(module)
    except ValueError as error:
        for name, child in module.named_modules():
            if name and _fusable(child, sync):
                reasons.setdefault(_join(prefix, name), str(error))
        return False
    calls: dict = {}
    for node in graph.nodes:
        if node.op == "call_module" and _fusable(module.get_submodule(node.target), sync):
            calls.setdefault(node.target, []).append(node)
    pairs = []
    for target, nodes in calls.items():
        path = _join(prefix, target)
        if len(nodes) > 1:
            reasons[path] = f"called {len(nodes)} times in forward(); one fused block cannot serve them all"
            continue
        if not _owner_allows_rewrite(module, target):
            reasons[path] = "called from a forward() other than its own parent's"
            continue
        reason, pair = _pair_reason(nodes[0], module)
        if reason:
            reasons[path] = reason
        else:
            pairs.append(pair)
    if not pairs:
        return False
    for norm_node, activation_node, activation in pairs:
        norm = module.get_submodule(norm_node.target)
        replacement = _fused_module(norm, activation.slope, backend, sync, process_group)
        owner_name, _, name = norm_node.target.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        fused.append(FusedPair(_join(prefix, norm_node.target), repr(norm), activation.name,
                               type(replacement).__name__))
        owner._modules[name] = replacement
        activation_node.replace_all_uses_with(norm_node)
        graph.erase_node(activation_node)
    graph.lint()
    code = graph.python_code("self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<fastgan.fuse: {type(module).__qualname__}.forward>", "exec"), namespace)
    module.forward = types.MethodType(namespace["forward"], module)
    return True


def _pair_reason(norm_node: torch.fx.Node, module: nn.Module):
    """('', (norm node, activation node, activation)) when the BatchNorm's output goes straight
    into a fusable activation, else (the reason, None)."""
    users = list(norm_node.users)
    first = min(users, key=_node_position) if users else None
    if first is None:
        return "its output is not used", None
    activation = _activation_of(first, module) if first.args and first.args[0] is norm_node else None
    if activation is None:
        if _is_other_activation_node(first, module):
            return f"followed by {_describe(first, module)}: {_SUPPORTED}", None
        if first.op == "output":
            return "its output is returned by forward(): what follows it is outside", None
        return f"followed by {_describe(first, module)}, not directly by ReLU/LeakyReLU", None
    if activation.slope is None:
        return f"the slope of {activation.name} is computed in forward(), not a constant", None
    if norm_node in first.args[1:] or norm_node in first.kwargs.values():
        return f"its output is passed to {activation.name} twice", None
    others = [u for u in users if u is not first]
    # After an in-place activation the BatchNorm's output IS the activation's: later uses are fine.
    if others and not activation.in_place:
        return (f"its output is used {len(users)} times ({', '.join(_describe(u, module) for u in users)}), "
                "not only by the activation"), None
    return "", (norm_node, first, activation)


def _node_position(node: torch.fx.Node) -> int:
    position = 0
    for other in node.graph.nodes:
        if other is node:
            return position
        position += 1
    return position


def _traceable_owner(module: nn.Module) -> bool:
    """Modules whose own forward fastgan traces: user-written ones (torch.nn's containers and
    layers have known forwards; fastgan's fused blocks are already fused)."""
    kind = type(module)
    return not kind.__module__.startswith("torch.") and "forward" not in vars(module)


def fuse(module: nn.Module, *, backend: Optional[str] = None, sync: bool = False, process_group=None,
         report: bool = False):
    """Fuse every BatchNorm1d/2d → ReLU/LeakyReLU pair in ``module``, in place: inside its
    ``nn.Sequential`` containers, and in its modules' own ``forward()`` methods through
    ``torch.fx`` (see :mod:`fastgan.fusion`).

    Args:
        module: any ``nn.Module`` (a generator, a discriminator, a whole model).
        backend: pins a backend for the fused blocks (default: chosen per call; blocks made
            synchronised keep their own unless this is given).
        sync: make the fused blocks :class:`fastgan.nn.SyncBatchNormLeakyReLU` (batch
            statistics over the processes of ``process_group``, as ``nn.SyncBatchNorm``), also
            fusing BatchNorm3d pairs and converting the unsynchronised fused blocks already
            in ``module``. ``nn.SyncBatchNorm`` pairs are fused synchronised either way.
        process_group: the group to synchronise over (default: the whole world, or an
            ``nn.SyncBatchNorm``'s own group); needs ``sync=True``.
        report: also return a :class:`FuseReport`: what was fused, what was not and why.

    Returns:
        ``module`` itself (so ``D = fastgan.fuse(D)`` works), or ``(module, report)`` when
        ``report=True``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    for value, name in ((sync, "sync"), (report, "report")):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    if process_group is not None and not sync:
        raise ValueError("process_group is only used with sync=True")
    if sync and isinstance(module, _UNSYNCHRONISED_BLOCKS):
        raise ValueError(f"module is itself a fused block ({type(module).__name__}) and cannot be replaced in place; "
                         "use fastgan.nn.SyncBatchNormLeakyReLU.convert_sync_batchnorm(module), which returns it")
    fused, reasons, rewritten = [], {}, []
    for prefix, container in list(module.named_modules()):
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for first, second in zip(names, names[1:] + [None]):
            norm = container._modules[first]
            following = container._modules[second] if second is not None else None
            if not _fusable(norm, sync):
                continue
            if type(following) not in _ACTIVATIONS:
                reasons[_join(prefix, first)] = _sequential_reason(following, prefix)
                continue
            replacement = _fused_module(norm, _module_slope(following), backend, sync, process_group)
            fused.append(FusedPair(_join(prefix, first), repr(norm), repr(following), type(replacement).__name__))
            container._modules[first] = replacement
            container._modules[second] = nn.Identity()
    for prefix, owner in list(module.named_modules()):
        calls_norms = any(_fusable(child, sync) for child in owner.modules() if child is not owner)
        if _traceable_owner(owner) and calls_norms:
            if _fuse_forward(owner, prefix, sync, backend, process_group, fused, reasons):
                rewritten.append(prefix)
    if sync:
        for prefix, parent in list(module.named_modules()):
            for name, child in list(parent._modules.items()):
                if type(child) not in _UNSYNCHRONISED_BLOCKS:
                    continue
                replacement = _synchronised_module(child, child.negative_slope,
                                                   backend if backend is not None else child.backend, process_group)
                fused.append(FusedPair(_join(prefix, name), repr(child), "", type(replacement).__name__))
                parent._modules[name] = replacement
    if not report:
        return module
    not_fused = tuple(
        NotFused(path, repr(norm), reasons.get(path, "not called from any forward() fastgan could trace"))
        for path, norm in module.named_modules() if _fusable(norm, sync)
    )
    return module, FuseReport(fused, sync, not_fused, tuple(rewritten))
