"""Float ONNX graphs for compiler tests, built with ``onnx.helper``: a small model
builder for per-op tests, and ResNet-18, ResNet-50 and MobileNetV2 shaped networks
(random weights, batch 1)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator


class TestModel:
    """Collects nodes and initializers of a test model (random weights from ``seed``)."""

    __test__ = False    # not a pytest class

    def __init__(self, seed):
        self.nodes, self.inits = [], []
        self.rng = np.random.default_rng(seed)

    def w(self, name, shape, std=0.3):
        self.inits.append(numpy_helper.from_array(
            self.rng.normal(0, std, shape).astype(np.float32), name))
        return name

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, inputs, outputs, **attrs):
        name = attrs.pop("name", f"{op}_{len(self.nodes)}")
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs[0]

    def bn(self, x, c):
        return self.node("BatchNormalization", [
            x, self.const(f"{x}_s", self.rng.uniform(0.5, 1.5, c).astype(np.float32)),
            self.w(f"{x}_b", (c,), 0.1), self.w(f"{x}_m", (c,), 0.1),
            self.const(f"{x}_v", self.rng.uniform(0.5, 2, c).astype(np.float32))], [f"{x}_bn"])

    def model(self, in_shape, out, opset=17, in_name="x"):
        g = helper.make_graph(
            self.nodes, "test",
            [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, list(in_shape))],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def reference(model, x: np.ndarray) -> np.ndarray:
    """onnx's reference evaluator on a batch (N, ...), one image at a time."""
    ev = ReferenceEvaluator(model)
    name = model.graph.input[0].name
    return np.stack([ev.run(None, {name: xi[None].astype(np.float32)})[0][0] for xi in x])


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.n = 0

    def name(self, prefix):
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, prefix, arr):
        nm = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), nm))
        return nm

    def conv_bn(self, x, cin, cout, k, stride=1, groups=1, act="relu"):
        fan_in = cin // groups * k * k
        w = self.const("w", self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k)))
        y = self.name("conv")
        self.nodes.append(helper.make_node("Conv", [x, w], [y], name=y, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4, group=groups))
        params = [self.const("g", self.rng.uniform(0.5, 1.5, cout)), self.const("b", self.rng.normal(0, 0.1, cout)),
                  self.const("m", self.rng.normal(0, 0.1, cout)), self.const("v", self.rng.uniform(0.5, 1.5, cout))]
        z = self.name("bn")
        self.nodes.append(helper.make_node("BatchNormalization", [y, *params], [z], name=z))
        if act == "relu":
            return self.relu(z)
        if act == "relu6":
            out = self.name("clip")
            self.nodes.append(helper.make_node("Clip", [z, self.const("lo", 0.0), self.const("hi", 6.0)],
                                               [out], name=out))
            return out
        return z

    def relu(self, x):
        y = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [y], name=y))
        return y

    def add(self, a, b):
        y = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y], name=y))
        return y

    def resnet_stem(self) -> str:
        """ResNet's stem: a 7x7 stride-2 conv to 64 channels, then a 3x3 stride-2 max pool."""
        x = self.conv_bn("input", 3, 64, 7, stride=2)
        mp = self.name("maxpool")
        self.nodes.append(helper.make_node("MaxPool", [x], [mp], name=mp, kernel_shape=[3, 3],
                                           strides=[2, 2], pads=[1, 1, 1, 1]))
        return mp

    def head(self, x, channels, classes):
        gap, flat, logits = self.name("gap"), self.name("flatten"), "logits"
        self.nodes += [helper.make_node("GlobalAveragePool", [x], [gap], name=gap),
                       helper.make_node("Flatten", [gap], [flat], name=flat)]
        w = self.const("fc_w", self.rng.normal(0, np.sqrt(1.0 / channels), (classes, channels)))
        b = self.const("fc_b", self.rng.normal(0, 0.1, classes))
        self.nodes.append(helper.make_node("Gemm", [flat, w, b], [logits], name="fc", transB=1))

    def model(self, size, classes, name):
        g = helper.make_graph(self.nodes, name,
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
                              self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def resnet18(size: int = 32, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    x, cin = b.resnet_stem(), 64
    for cout, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
        y = b.conv_bn(x, cin, cout, 3, stride)
        y = b.conv_bn(y, cout, cout, 3, 1, act=None)
        short = x if (stride == 1 and cin == cout) else b.conv_bn(x, cin, cout, 1, stride, act=None)
        x, cin = b.relu(b.add(y, short)), cout
    b.head(x, 512, classes)
    return b.model(size, classes, "resnet18")


def mobilenetv2(size: int = 32, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 32, 3, stride=2, act="relu6")
    cin = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = b.conv_bn(x, cin, hidden, 1, act="relu6") if t != 1 else x
            y = b.conv_bn(y, hidden, hidden, 3, stride, groups=hidden, act="relu6")
            y = b.conv_bn(y, hidden, c, 1, act=None)
            x = b.add(y, x) if (stride == 1 and cin == c) else y
            cin = c
    x = b.conv_bn(x, cin, 1280, 1, act="relu6")
    b.head(x, 1280, classes)
    return b.model(size, classes, "mobilenetv2")


def resnet50(size: int = 224, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """ResNet-50 (bottleneck blocks 3-4-6-3, stride in the 3x3 conv) with random weights."""
    b = _Builder(seed)
    x, cin = b.resnet_stem(), 64
    for width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        cout = 4 * width
        for i in range(n):
            s = stride if i == 0 else 1
            y = b.conv_bn(x, cin, width, 1)
            y = b.conv_bn(y, width, width, 3, s)
            y = b.conv_bn(y, width, cout, 1, act=None)
            short = x if (s == 1 and cin == cout) else b.conv_bn(x, cin, cout, 1, s, act=None)
            x, cin = b.relu(b.add(y, short)), cout
    b.head(x, cin, classes)
    return b.model(size, classes, "resnet50")
