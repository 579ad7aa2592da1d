"""Seed ONNX models built in-process and structured mutations of their ModelProto (fuzzing)."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

F = TensorProto.FLOAT
HUGE = (2**40, 2**31, 2**62, 2**63 - 1)


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, list[int]], params: dict[str, np.ndarray],
           opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "seed",
        [helper.make_tensor_value_info(k, F, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def mlp() -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm on [1, 4]."""
    return _model(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2")],
        {"x": [1, 4]},
        {"w1": _rand(3, 4, seed=1), "b1": _rand(3, seed=2), "w2": _rand(2, 3, seed=3), "b2": _rand(2, seed=4)},
    )


def cnn() -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Reshape (constant shape) -> MatMul -> Add on [1, 1, 6, 6]."""
    return _model(
        [helper.make_node("Conv", ["x", "k", "kb"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
         helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([1, -1], np.int64)),
                          name="shape"),
         helper.make_node("Reshape", ["p", "s"], ["f"], name="flat"),
         helper.make_node("MatMul", ["f", "w"], ["m"], name="fc"),
         helper.make_node("Add", ["m", "b"], ["y"], name="bias")],
        {"x": [1, 1, 6, 6]},
        {"k": _rand(2, 1, 3, 3, seed=5), "kb": _rand(2, seed=6), "w": _rand(18, 3, seed=7), "b": _rand(3, seed=8)},
    )


def residual() -> onnx.ModelProto:
    """y = x + Tanh(BatchNorm(x) @ w): a skip connection and a normalization on [2, 3]."""
    return _model(
        [helper.make_node("BatchNormalization", ["x", "g", "beta", "mu", "var"], ["n"], name="bn"),
         helper.make_node("MatMul", ["n", "w"], ["m"], name="mm"),
         helper.make_node("Tanh", ["m"], ["t"], name="tanh"),
         helper.make_node("Add", ["x", "t"], ["y"], name="skip")],
        {"x": [2, 3]},
        {"g": _rand(3, seed=9), "beta": _rand(3, seed=10), "mu": _rand(3, seed=11),
         "var": np.abs(_rand(3, seed=12)) + 0.5, "w": _rand(3, 3, seed=13)},
        opset=13,
    )


SEEDS: dict[str, Callable[[], onnx.ModelProto]] = {"mlp": mlp, "cnn": cnn, "residual": residual}


# ---- structured mutations: (model, rng) -> None, in place ----------------------------------------
def _value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return [*model.graph.input, *model.graph.output, *model.graph.value_info]


def corrupt_dim(model: onnx.ModelProto, rng: random.Random) -> None:
    """A dim of an initializer or a graph input becomes negative, zero or huge."""
    value = rng.choice([-1, -(2**40), 0, 1, 7, *HUGE])
    if rng.random() < 0.5 and model.graph.initializer:
        tensor = rng.choice(model.graph.initializer)
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = value
        else:
            tensor.dims.append(value)
    else:
        vi = model.graph.input[0]
        dims = vi.type.tensor_type.shape.dim
        dims[rng.randrange(len(dims))].dim_value = value


def wrong_dtype(model: onnx.ModelProto, rng: random.Random) -> None:
    """An initializer, a graph input or a Cast target gets another (or an undefined) element type."""
    dtype = rng.choice([0, 2, 3, 6, 7, 8, 9, 10, 11, 16, 17, 23, 40, 999])
    if rng.random() < 0.6 and model.graph.initializer:
        rng.choice(model.graph.initializer).data_type = dtype
    else:
        rng.choice(_value_infos(model)).type.tensor_type.elem_type = dtype


def dangling_name(model: onnx.ModelProto, rng: random.Random) -> None:
    """A node reads, or the graph outputs, a name that nothing defines."""
    if rng.random() < 0.7:
        node = rng.choice(model.graph.node)
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(["nowhere", "", "y"])
        else:
            node.input.append("nowhere")
    else:
        model.graph.output[0].name = "nowhere"


def cycle(model: onnx.ModelProto, rng: random.Random) -> None:
    """A node reads the output of a later node (or its own output)."""
    nodes = [n for n in model.graph.node if n.input]
    first = rng.choice(nodes)
    later = rng.choice(list(model.graph.node))
    first.input[0] = later.output[0]


def duplicate_output(model: onnx.ModelProto, rng: random.Random) -> None:
    """Two nodes write the same name, or the graph lists an output twice."""
    nodes = list(model.graph.node)
    if rng.random() < 0.5 and len(nodes) > 1:
        a, b = rng.sample(nodes, 2)
        b.output[0] = a.output[0]
    else:
        model.graph.output.append(model.graph.output[0])


def wrong_attribute(model: onnx.ModelProto, rng: random.Random) -> None:
    """An attribute replaced by one of another type, or a strange value, or added to a node."""
    node = rng.choice(model.graph.node)
    names = [a.name for a in node.attribute] + ["alpha", "beta", "transB", "kernel_shape", "pads",
                                                 "strides", "axis", "perm", "epsilon", "to", "value"]
    name = rng.choice(names)
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    choices = [
        lambda: helper.make_attribute(name, "text"),
        lambda: helper.make_attribute(name, [1.5, 2.5]),
        lambda: helper.make_attribute(name, rng.choice([-(2**62), -1, 0, 2**40, 2**63 - 1])),
        lambda: helper.make_attribute(name, [rng.choice([-3, 0, 2**40]) for _ in range(rng.randrange(6))]),
        lambda: helper.make_attribute(name, float("nan")),
        lambda: helper.make_attribute(name, numpy_helper.from_array(np.zeros((2, 2), np.float32))),
        lambda: helper.make_attribute(name, helper.make_graph([], "g", [], [])),
        lambda: helper.make_attribute(name, ["a", "b"]),
    ]
    attribute = rng.choice(choices)()
    if rng.random() < 0.2:  # a declared type that disagrees with the stored field
        attribute.type = rng.choice([t for t in AttributeProto.AttributeType.values() if t != attribute.type])
    node.attribute.append(attribute)


def nested_subgraphs(model: onnx.ModelProto, rng: random.Random) -> None:
    """An If (or Loop) node whose then-branch nests further Ifs, up to a random depth (the
    else-branch is a leaf, so the model stays linear in the depth)."""
    depth = rng.choice([1, 2, 8, 30])
    leaf = helper.make_graph([helper.make_node("Identity", ["x"], ["z0"])], "leaf", [],
                             [helper.make_tensor_value_info("z0", F, None)])
    inner = leaf
    for level in range(depth):
        op = "Loop" if rng.random() < 0.2 else "If"
        out = f"z{level + 1}"
        if op == "If":
            node = helper.make_node("If", ["cond"], [out], then_branch=inner, else_branch=leaf)
        else:
            node = helper.make_node("Loop", ["", "cond"], [out], body=inner)
        inner = helper.make_graph([node], f"level{level}", [], [helper.make_tensor_value_info(out, F, None)])
    model.graph.initializer.append(numpy_helper.from_array(np.array(rng.random() < 0.5), "cond"))
    top = inner.node[0]
    top.output[0] = "deep"
    model.graph.node.append(top)
    add = helper.make_node("Add", [model.graph.output[0].name, "deep"], ["y_deep"])
    model.graph.node.append(add)
    model.graph.output[0].name = "y_deep"


def missing_initializer(model: onnx.ModelProto, rng: random.Random) -> None:
    """An initializer is removed (its readers now read an undefined name)."""
    if model.graph.initializer:
        del model.graph.initializer[rng.randrange(len(model.graph.initializer))]


def huge_declared_tensor(model: onnx.ModelProto, rng: random.Random) -> None:
    """An initializer declares a huge shape but holds a few bytes of raw data (or none)."""
    tensor = rng.choice(model.graph.initializer)
    del tensor.dims[:]
    tensor.dims.extend(rng.choice([[2**40], [2**20, 2**20], [2**31, 4], [2**62, 2], [3, 2**33]]))
    if rng.random() < 0.5:
        tensor.raw_data = b"\x00" * rng.choice([0, 4, 16])
        del tensor.float_data[:]


def huge_constant_shape(model: onnx.ModelProto, rng: random.Random) -> None:
    """A constant-folded node whose output would be huge: ConstantOfShape, Expand, Tile, Range, Pad."""
    big = rng.choice([2**20, 2**33, 2**40])
    g = model.graph
    kind = rng.choice(["ConstantOfShape", "Expand", "Tile", "Range", "Pad"])
    ints = lambda name, v: g.initializer.append(numpy_helper.from_array(np.array(v, np.int64), name))  # noqa: E731
    one = numpy_helper.from_array(np.ones([1], np.float32), "one")
    g.initializer.append(one)
    if kind == "ConstantOfShape":
        ints("big_shape", [big, big])
        g.node.append(helper.make_node("ConstantOfShape", ["big_shape"], ["big"]))
    elif kind == "Expand":
        ints("big_shape", [big, 4])
        g.node.append(helper.make_node("Expand", ["one", "big_shape"], ["big"]))
    elif kind == "Tile":
        ints("reps", [big])
        g.node.append(helper.make_node("Tile", ["one", "reps"], ["big"]))
    elif kind == "Range":
        g.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), n)
                              for n, v in (("r0", 0.0), ("r1", float(big)), ("r2", 1.0))])
        g.node.append(helper.make_node("Range", ["r0", "r1", "r2"], ["big"]))
    else:
        ints("pads", [0, big])
        g.node.append(helper.make_node("Pad", ["one", "pads"], ["big"]))
    g.node.append(helper.make_node("ReduceSum", ["big"], ["big_sum"], keepdims=0))
    g.node.append(helper.make_node("Add", [g.output[0].name, "big_sum"], ["y_big"]))
    g.output[0].name = "y_big"


def huge_variable(model: onnx.ModelProto, rng: random.Random) -> None:
    """A node on the input whose output would be huge (Pad, Expand, Tile of the variable)."""
    big = rng.choice([2**20, 2**33, 2**40])
    g = model.graph
    x = g.input[0].name
    rank = len(g.input[0].type.tensor_type.shape.dim)
    kind = rng.choice(["Pad", "Expand", "Tile"])
    if kind == "Pad":
        g.initializer.append(numpy_helper.from_array(np.array([0] * (2 * rank - 1) + [big], np.int64), "vpads"))
        g.node.insert(0, helper.make_node("Pad", [x, "vpads"], ["xx"]))
    elif kind == "Expand":
        g.initializer.append(numpy_helper.from_array(np.array([big] + [1] * rank, np.int64), "vshape"))
        g.node.insert(0, helper.make_node("Expand", [x, "vshape"], ["xx"]))
    else:
        g.initializer.append(numpy_helper.from_array(np.array([big] + [1] * (rank - 1), np.int64), "vreps"))
        g.node.insert(0, helper.make_node("Tile", [x, "vreps"], ["xx"]))
    g.node.append(helper.make_node("ReduceSum", ["xx"], ["xx_sum"], keepdims=0))
    g.node.append(helper.make_node("Add", [g.output[0].name, "xx_sum"], ["y_var"]))
    g.output[0].name = "y_var"


def bad_raw_data(model: onnx.ModelProto, rng: random.Random) -> None:
    """Raw data one byte short, one byte long, or typed data beside raw data."""
    tensor = rng.choice(model.graph.initializer)
    raw = tensor.raw_data or np.asarray(tensor.float_data, np.float32).tobytes()
    tensor.raw_data = rng.choice([raw[:-1], raw + b"\x00", b""])
    del tensor.float_data[:]
    if rng.random() < 0.3:
        tensor.float_data.extend([1.0, 2.0])


def random_op(model: onnx.ModelProto, rng: random.Random) -> None:
    """A node's op type or domain changed, or the opset set to a strange version."""
    node = rng.choice(model.graph.node)
    roll = rng.random()
    if roll < 0.4:
        node.op_type = rng.choice(["Conv", "Gemm", "Relu", "Softmax", "If", "Loop", "Scan", "Unknown", "",
                                   "Resize", "Slice", "Concat", "Reshape", "Constant", "Split", "Einsum"])
    elif roll < 0.6:
        node.domain = rng.choice(["com.microsoft", "ai.onnx.ml", "x"])
    else:
        model.opset_import[0].version = rng.choice([-5, 0, 1, 6, 9, 10, 25, 999, 2**62])
        if rng.random() < 0.3:
            model.ir_version = rng.choice([-1, 0, 1, 3, 99])


def external_data(model: onnx.ModelProto, rng: random.Random) -> None:
    """An initializer moved to external data at a hostile location (read in the model's folder)."""
    tensor = rng.choice(model.graph.initializer)
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    location = rng.choice(["../w.bin", "/etc/passwd", "missing.bin", ".", "", "C:\\w.bin", "sub/../../w.bin"])
    entries = {"location": location}
    if rng.random() < 0.5:
        entries["offset"] = rng.choice(["0", "-1", "x", str(2**62)])
    if rng.random() < 0.5:
        entries["length"] = rng.choice(["0", "-5", "nan", str(2**40)])
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


MUTATIONS: dict[str, Callable[[onnx.ModelProto, random.Random], None]] = {
    f.__name__: f for f in (
        corrupt_dim, wrong_dtype, dangling_name, cycle, duplicate_output, wrong_attribute,
        nested_subgraphs, missing_initializer, huge_declared_tensor, huge_constant_shape,
        huge_variable, bad_raw_data, random_op, external_data,
    )
}


def mutated(seed: str, recipe: list[tuple[str, int]]) -> bytes:
    """The serialized seed model after the mutations ``recipe`` [(mutation, rng seed), ...]."""
    model = SEEDS[seed]()
    for name, value in recipe:
        MUTATIONS[name](model, random.Random(value))
    return model.SerializeToString()
