"""Cut a classification network into REMIND's frozen trunk G and plastic head F at a named layer.

Any network that torch.fx can trace (every torchvision classifier tried: the
ResNets, MobileNetV2/V3, EfficientNet, ConvNeXt, RegNet, SqueezeNet, ...) is
cut by its graph, not by per-architecture code:

* the network is traced with torchvision's ``NodePathTracer`` (each graph
  node knows the module it came from; torchvision.ops modules such as
  ``StochasticDepth`` stay single nodes, as in torchvision's feature
  extraction), once in train and once in eval mode;
* the *split node* is the last node of the module named ``split_at``
  (``layer4.0``, ``features.7``): G is every node it depends on, F every
  node after it, fed with G's output instead;
* a cut is refused when F would read anything else G computed (a skip
  connection crossing the split, the input image) or when G's output is
  not a ``(N, C, H, W)`` map that a product quantiser can code.

G and F keep the network's own parameter names (F of a ResNet-18 cut at
``layer4.0`` holds ``layer4.1.conv1.weight``, ``fc.weight``...), so a whole
network's state dict loads into either by name. F switches between its train
and eval graphs with ``.train()`` / ``.eval()`` (dropout, BatchNorm and
stochastic depth behave as in the uncut network).

    >>> import torchvision
    >>> net = torchvision.models.resnet18(num_classes=10)
    >>> G, F = split_network(net, "layer4.0")
    >>> G(torch.zeros(2, 3, 224, 224)).shape
    torch.Size([2, 512, 7, 7])
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.fx as fx
import torch.nn as nn
import torchvision
from torchvision.models.feature_extraction import DualGraphModule, NodePathTracer


class SplitError(ValueError):
    """A network or layer that cannot be cut into G and F (the message names the layers that can)."""


def _tracer() -> NodePathTracer:
    # As torchvision's feature extraction: torchvision.ops modules are leaves, math and ops calls are wrapped.
    leaves = [obj for _, obj in inspect.getmembers(torchvision.ops)
              if inspect.isclass(obj) and issubclass(obj, nn.Module)]
    return NodePathTracer(autowrap_modules=(math, torchvision.ops), leaf_modules=leaves)


class _Trace:
    """One fx trace of a network: the graph, each node's module path, and each module's last node."""

    def __init__(self, network: nn.Module, training: bool):
        was_training = network.training
        network.train(training)
        tracer = _tracer()
        try:
            self.graph = tracer.trace(network)
        except Exception as exc:  # fx raises many types on data-dependent control flow
            raise SplitError(f"{type(network).__name__} cannot be traced by torch.fx "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); split it by hand and "
                             "pass G and F as modules") from None
        finally:
            network.train(was_training)
        self.qualname = dict(tracer.node_to_qualname)
        self.nodes = list(self.graph.nodes)

    def last_node_of(self, layer: str) -> fx.Node | None:
        """The last node of module ``layer`` (the same rule as torchvision's ``return_nodes``)."""
        found = None
        for node in self.nodes:
            name = self.qualname.get(node)
            if name is not None and (name == layer or name.startswith(layer + ".")):
                found = node
        return found

    def ancestors(self, node: fx.Node) -> set[fx.Node]:
        seen, todo = {node}, [node]
        while todo:
            for parent in todo.pop().all_input_nodes:
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return seen

    def crossing(self, split: fx.Node) -> fx.Node | None:
        """A node F would need from G's side other than ``split`` (None when the cut is clean)."""
        before = self.ancestors(split)
        for node in self.nodes:
            if node in before:
                continue
            if node.op == "placeholder":
                return node
            for parent in node.all_input_nodes:
                if parent in before and parent is not split and parent.op != "get_attr":
                    return parent
        return None

    def trunk_graph(self, split: fx.Node) -> fx.Graph:
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        keep = self.ancestors(split)
        for node in self.nodes:
            if node in keep:
                env[node] = graph.node_copy(node, lambda n: env[n])
        graph.output(env[split])
        graph.lint()
        return graph

    def head_graph(self, split: fx.Node) -> fx.Graph:
        graph = fx.Graph()
        before = self.ancestors(split)
        env: dict[fx.Node, fx.Node] = {split: graph.placeholder("maps")}
        for node in self.nodes:
            if node in before and node.op != "get_attr":
                continue
            env[node] = graph.node_copy(node, lambda n: env[n])
        _drop_unused(graph)
        graph.lint()
        return graph


def _drop_unused(graph: fx.Graph) -> None:
    """Remove nodes whose results nothing reads (G's side branches); in-place calls (``x.add_``) stay."""
    for node in reversed(list(graph.nodes)):
        in_place = node.op == "call_method" and str(node.target).endswith("_")
        if node.op not in ("placeholder", "output") and not node.users and not in_place:
            graph.erase_node(node)


class FrozenTrunk(nn.Module):
    """G: the network up to and including its split layer; always in eval mode, never trained.

    Input ``(N, 3, S, S)`` images, output ``(N, C, H, W)`` float feature maps (computed without grad).
    """

    def __init__(self, layers: nn.Module, split_at: str):
        super().__init__()
        self.layers = layers
        self.split_at = split_at
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTrunk":
        # G is frozen: BatchNorm statistics must never move, whatever the caller asks.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def _clean_split(trace: _Trace, split_at: str) -> fx.Node | None:
    split = trace.last_node_of(split_at)
    if split is None or trace.crossing(split) is not None:
        return None
    return split


def split_points(network: nn.Module, image_size: int = 224) -> dict[str, tuple[int, int, int]]:
    """Every module name at which ``network`` can be cut, with G's map shape ``(C, H, W)`` there.

    A module qualifies when F reads nothing from G but the module's output, in train and eval mode
    alike, and that output is a ``(N, C, H, W)`` map at ``image_size`` px input.
    """
    train, evaluation = _Trace(network, True), _Trace(network, False)
    shapes = _node_shapes(network, evaluation, image_size)
    points = {}
    for name, _ in network.named_modules():
        if not name:
            continue
        node = _clean_split(evaluation, name)
        if node is None or _clean_split(train, name) is None:
            continue
        shape = shapes.get(node)
        if shape is not None and len(shape) == 4 and name not in points:
            points[name] = tuple(int(s) for s in shape[1:])
    return points


def _node_shapes(network: nn.Module, trace: _Trace, image_size: int) -> dict[fx.Node, tuple]:
    """Shapes of the eval graph's tensor outputs for one ``image_size`` image (no grad, weights untouched)."""
    module = fx.GraphModule(network, trace.graph)
    shapes: dict[fx.Node, tuple] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if torch.is_tensor(result):
                shapes[node] = tuple(result.shape)
            return result

    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            Recorder(module).run(torch.zeros(1, 3, image_size, image_size, device=device))
    except (RuntimeError, ValueError) as exc:  # e.g. a kernel larger than the maps a small image leaves
        raise SplitError(f"{type(network).__name__} cannot run on {image_size} px images "
                         f"({str(exc).splitlines()[0][:160]}); use a larger --image_size") from None
    finally:
        network.train(was_training)
    return shapes


def _refuse(network: nn.Module, split_at: str, why: str, image_size: int) -> SplitError:
    points = split_points(network, image_size)
    listed = ", ".join(points) if points else \
        "none (no layer gives a (N, C, H, W) map that the rest of the network reads alone)"
    return SplitError(f"cannot split {type(network).__name__} at {split_at!r}: {why}; layers it can be split at: "
                      f"{listed}")


def cut_network(network: nn.Module, split_at: str, image_size: int = 224) -> tuple[nn.Module, nn.Module]:
    """Cut ``network`` after the module ``split_at`` into two trainable ``torch.fx`` modules ``(first, rest)``.

    ``first`` maps images to the split layer's output, ``rest`` maps that to the network's output; each
    switches between its train and eval graphs with ``.train()`` / ``.eval()`` and shares its modules with
    ``network`` (no copy). :func:`split_network` is this with ``first`` frozen (REMIND's G).

    Raises:
        SplitError: the layer does not exist, a connection crosses the cut, its output is not a
        ``(N, C, H, W)`` map at ``image_size`` px, or a module is used on both sides; the message lists the
        layers the network can be split at.
    """
    traces = {mode: _Trace(network, mode) for mode in (True, False)}
    splits = {}
    for mode, trace in traces.items():
        split = trace.last_node_of(split_at)
        if split is None:
            raise _refuse(network, split_at, "no such layer", image_size)
        crossing = trace.crossing(split)
        if crossing is not None:
            what = "the input image" if crossing.op == "placeholder" else \
                f"{trace.qualname.get(crossing) or crossing.name!r} (a connection skips over the cut)"
            raise _refuse(network, split_at, f"the layers after it also read {what}", image_size)
        splits[mode] = split
    shape = _node_shapes(network, traces[False], image_size).get(splits[False])
    if shape is None or len(shape) != 4:
        raise _refuse(network, split_at, f"its output has shape {shape}, not a (N, C, H, W) feature map",
                      image_size)
    name = type(network).__name__
    first = DualGraphModule(network, traces[True].trunk_graph(splits[True]), traces[False].trunk_graph(splits[False]),
                            class_name=name + "Trunk")
    rest = DualGraphModule(network, traces[True].head_graph(splits[True]), traces[False].head_graph(splits[False]),
                           class_name=name + "Head")
    first.train(network.training)
    rest.train(network.training)
    if {id(p) for p in first.parameters()} & {id(p) for p in rest.parameters()}:
        raise _refuse(network, split_at, "a module is used both before and after it", image_size)
    return first, rest


def split_network(network: nn.Module, split_at: str, image_size: int = 224) -> tuple[FrozenTrunk, nn.Module]:
    """Cut ``network`` after the module ``split_at`` into REMIND's ``(G, F)``.

    Args:
        network: a classification network (images ``(N, 3, S, S)`` -> logits ``(N, K)``), weights loaded.
        split_at: the qualified name of the last module of G (``layer4.0``, ``features.7``).
        image_size: input side used to check that G gives ``(N, C, H, W)`` maps (224).

    Returns:
        G (:class:`FrozenTrunk`: frozen, eval mode) and F (a ``torch.fx`` module: maps -> logits, trainable).
        Both share their modules with ``network`` (no copy).

    Raises:
        SplitError: as :func:`cut_network`.
    """
    first, rest = cut_network(network, split_at, image_size)
    return FrozenTrunk(first, split_at), rest
