"""ONNX clean-up before import: what real exporters add around the layers, removed.

``torch.onnx.export`` and similar exporters write graphs that compute the same thing as
the layers the user wrote, plus bookkeeping: Identity nodes, inference-time Dropout,
shape arithmetic that is constant for a static input shape (the ``Shape -> Gather ->
Unsqueeze -> Concat -> Reshape`` flatten before a classifier; Cast, Div, Mul, Slice,
Squeeze, ConstantOfShape on such values; Constant nodes feeding them) and ReduceMean
over H and W as global average pooling. :func:`cleanup` rewrites a model into one the
importer (``compiler/onnx_frontend.py``) understands, computing the same values:

- Identity and Dropout whose ``training_mode`` is absent or constant false (its mask
  unused) are bypassed; a graph output keeps its name;
- every node whose inputs are all constant, and Shape/Size of a tensor whose shape is
  static once the batch is 1 (the only batch fxpgen runs), becomes an initializer;
- ReduceMean over axes {2, 3} of a 4-D tensor becomes GlobalAveragePool, followed by
  Flatten (axis 1) when ``keepdims`` is 0;
- an inference BatchNormalization of a 4-D map made by a Concat or a pooling (DenseNet's
  pre-activation ``norm1`` after the Concat of the features, or after the stem's
  MaxPool when the dynamo exporter drops a one-input Concat) becomes the per-channel
  affine map it computes, a depthwise 1x1 Conv: weight ``s = scale / sqrt(var + eps)``,
  bias ``B - mean * s``. Such a producer has no weights to fold it into; a
  BatchNormalization after a Conv stays, for the fold pass.

Node names stay the user's: unnamed or repeated names get the importer's ``{op}_{index}``
from the original graph, so removing a node does not rename the ones after it, and the
nodes added for a ReduceMean are named after it. A graph with nothing to clean comes
back unchanged.

Why onnx's own ``onnx.shape_inference`` and ``onnx.reference.ReferenceEvaluator`` and
not a graph simplifier: the evaluator computes the folded values with onnx's reference
semantics, and it and the shape inference ship with onnx, already a dependency. onnxslim
folds all of the patterns above and keeps node names, but it also fuses Conv+BN, Conv+Add
and MatMul+Add in float32 (each must be switched off to keep existing models importing
as before), does not rewrite ReduceMean, and brings sympy (about 80 MB, 0.4 s to import);
onnxsim needs onnxruntime, a native package far larger than the problem. What is
written here is only the walk choosing which nodes to fold.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

__all__ = ["cleanup", "name_nodes"]

_DEFAULT_DOMAINS = ("", "ai.onnx")
# Not folded although their inputs may be constant: random draws and control flow.
_NO_FOLD = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                      "Multinomial", "Bernoulli", "Dropout", "If", "Loop", "Scan"})


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with exporter bookkeeping removed (see the module docstring).

    The result computes what ``model`` computes for a batch of 1; ``model`` itself is
    not modified.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    name_nodes(out.graph)
    touched = False
    while True:
        changed = _bypass_passthrough(out.graph)
        changed |= _fold_constants(out)
        changed |= _rewrite_reduce_mean(out)
        changed |= _rewrite_lone_batchnorm(out)
        if not changed:
            break
        touched = True
        del out.graph.value_info[:]   # stale after renames; inference rebuilds it
    if touched:
        _drop_unread_initializers(out.graph)
    return out


def _drop_unread_initializers(graph: onnx.GraphProto) -> None:
    """Drop constants only removed nodes read (Dropout's ratio, shape indices), and
    their graph input entries (older IR versions list initializers as inputs)."""
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dropped = {t.name for t in graph.initializer if t.name not in read}
    for field in (graph.initializer, graph.input):
        for i in reversed(range(len(field))):
            if field[i].name in dropped:
                del field[i]


def name_nodes(graph: onnx.GraphProto) -> None:
    """The importer's names, fixed on the original graph: ``{op}_{index}`` when a node
    has no name or repeats an earlier one."""
    names: set[str] = set()
    for idx, node in enumerate(graph.node):
        if not node.name or node.name in names:
            node.name = f"{node.op_type}_{idx}"
        names.add(node.name)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


# ---- Identity and Dropout ----------------------------------------------------------------

def _is_passthrough(node, consts: dict[str, np.ndarray], used: set[str]) -> bool:
    if node.domain not in _DEFAULT_DOMAINS:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout" or (len(node.output) > 1 and node.output[1] in used):
        return False
    training = node.input[2] if len(node.input) > 2 else ""
    return not training or (training in consts and not bool(np.asarray(consts[training]).any()))


def _bypass_passthrough(graph: onnx.GraphProto) -> bool:
    consts = _constants(graph)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    changed = False
    for node in list(graph.node):
        if _is_passthrough(node, consts, used) and _bypass(graph, node):
            changed = True
    return changed


def _bypass(graph: onnx.GraphProto, node) -> bool:
    """Remove a node whose first output equals its first input; False if it must stay
    (it copies a graph input or initializer, or another output, to a graph output)."""
    src, dst = node.input[0], node.output[0]
    outputs = {o.name for o in graph.output}
    if dst in outputs:
        producer = next((n for n in graph.node if src in n.output), None)
        if producer is None or src in outputs:
            return False
        old, new = src, dst            # the producer takes the output's name
    else:
        old, new = dst, src
    graph.node.remove(node)
    for n in graph.node:
        for seq in (n.input, n.output):
            for i, name in enumerate(seq):
                if name == old:
                    seq[i] = new
    return True


# ---- constant folding --------------------------------------------------------------------

def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Fully static tensor shapes after shape inference with the batch set to 1."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for inp in probe.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    inferred = shape_inference.infer_shapes(probe, data_prop=True).graph
    shapes = {}
    for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)
    return shapes


def _shape_value(node, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    # Shape's start/end clamp like Python slices.
    return np.array(shape[attrs.get("start", 0):attrs.get("end", len(shape))], np.int64)


def _foldable(graph: onnx.GraphProto, model: onnx.ModelProto) -> dict[int, onnx.NodeProto]:
    """The nodes to evaluate by index, in order; Shape/Size of static tensors as Constant
    nodes."""
    known = {t.name for t in graph.initializer}
    shapes = None
    fold = {}
    for idx, node in enumerate(graph.node):
        if node.domain not in _DEFAULT_DOMAINS or node.op_type in _NO_FOLD:
            continue
        if node.op_type in ("Shape", "Size") and node.input[0] not in known:
            if shapes is None:
                shapes = _static_shapes(model)
            if node.input[0] not in shapes:
                continue
            value = _shape_value(node, shapes[node.input[0]])
            fold[idx] = helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                         value=numpy_helper.from_array(value))
        elif (node.input or node.op_type == "Constant") and all(
                not i or i in known for i in node.input):
            fold[idx] = node
        else:
            continue
        known.update(o for o in node.output if o)
    return fold


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _fold_constants(model: onnx.ModelProto) -> bool:
    graph = model.graph
    by_index = _foldable(graph, model)
    if not by_index:
        return False
    fold = list(by_index.values())
    keep = [_copy(n) for i, n in enumerate(graph.node) if i not in by_index]
    needed = {i for n in keep for i in n.input} | {o.name for o in graph.output}
    wanted = [o for n in fold for o in n.output if o in needed]
    if wanted:
        read = {i for n in fold for i in n.input}
        sub = helper.make_graph(
            fold, "constants", [], [helper.make_empty_tensor_value_info(o) for o in wanted],
            [t for t in graph.initializer if t.name in read])
        sub_model = helper.make_model(sub, opset_imports=model.opset_import,
                                      ir_version=model.ir_version)
        values = ReferenceEvaluator(sub_model).run(None, {})
        graph.initializer.extend(numpy_helper.from_array(np.asarray(v), o)
                                 for o, v in zip(wanted, values))
    del graph.node[:]
    graph.node.extend(keep)
    return True


# ---- ReduceMean as global average pooling ------------------------------------------------

def _reduce_axes(node, consts: dict[str, np.ndarray]) -> list[int] | None:
    for a in node.attribute:
        if a.name == "axes":
            return list(helper.get_attribute_value(a))
    if len(node.input) > 1 and node.input[1] in consts:
        return [int(v) for v in consts[node.input[1]].reshape(-1)]
    return None


def _rewrite_reduce_mean(model: onnx.ModelProto) -> bool:
    graph = model.graph
    if not any(n.op_type == "ReduceMean" for n in graph.node):
        return False
    consts, shapes = _constants(graph), _static_shapes(model)
    changed = False
    for node in list(graph.node):
        if node.op_type != "ReduceMean" or node.domain not in _DEFAULT_DOMAINS:
            continue
        axes = _reduce_axes(node, consts)
        if axes is None or len(shapes.get(node.input[0], ())) != 4:
            continue
        if sorted(a % 4 for a in axes) != [2, 3]:
            continue
        keepdims = next((helper.get_attribute_value(a) for a in node.attribute
                         if a.name == "keepdims"), 1)
        out = node.output[0]
        pooled = out if keepdims else f"{out}/pooled"
        new = [helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name)]
        if not keepdims:
            new.append(helper.make_node("Flatten", [pooled], [out], name=f"{node.name}/flatten",
                                        axis=1))
        pos = list(graph.node).index(node)
        graph.node.remove(node)
        for k, n in enumerate(new):
            graph.node.insert(pos + k, n)
        changed = True
    return changed


# ---- BatchNormalization with no Conv to fold into ----------------------------------------

# Producers a BatchNormalization reading them cannot be folded into.
_NO_WEIGHTS = frozenset({"Concat", "MaxPool", "AveragePool"})


def _lone_batchnorms(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Inference BatchNormalizations of 4-D maps, constant parameters, only the first
    output read, whose input a Concat or a pooling makes."""
    graph = model.graph
    bns = [n for n in graph.node if n.op_type == "BatchNormalization"
           and n.domain in _DEFAULT_DOMAINS]
    if not bns:
        return []
    consts = _constants(graph)
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    for o in graph.output:
        readers[o.name] = readers.get(o.name, 0) + 1
    producer = {o: n for n in graph.node for o in n.output}
    shapes = None
    lone = []
    for bn in bns:
        attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
        if attrs.get("training_mode", 0) or not attrs.get("spatial", 1):
            continue
        if any(o and readers.get(o) for o in bn.output[1:]):
            continue
        if not all(i in consts for i in bn.input[1:5]):
            continue
        prod = producer.get(bn.input[0])
        if prod is None or prod.op_type not in _NO_WEIGHTS or prod.domain not in _DEFAULT_DOMAINS:
            continue
        if shapes is None:
            shapes = _static_shapes(model)
        if len(shapes.get(bn.input[0], ())) == 4:
            lone.append(bn)
    return lone


def _rewrite_lone_batchnorm(model: onnx.ModelProto) -> bool:
    graph = model.graph
    lone = _lone_batchnorms(model)
    consts = _constants(graph)
    for bn in lone:
        scale, beta, mean, var = (np.asarray(consts[i], np.float64).reshape(-1)
                                  for i in bn.input[1:5])
        eps = next((helper.get_attribute_value(a) for a in bn.attribute
                    if a.name == "epsilon"), 1e-5)
        s = scale / np.sqrt(var + eps)
        w_name, b_name = f"{bn.name}/weight", f"{bn.name}/bias"
        graph.initializer.extend([
            numpy_helper.from_array(s.reshape(-1, 1, 1, 1).astype(np.float32), w_name),
            numpy_helper.from_array((beta - mean * s).astype(np.float32), b_name)])
        conv = helper.make_node("Conv", [bn.input[0], w_name, b_name], [bn.output[0]],
                                name=bn.name, group=len(s), kernel_shape=[1, 1])
        pos = list(graph.node).index(bn)
        graph.node.remove(bn)
        graph.node.insert(pos, conv)
    return bool(lone)
