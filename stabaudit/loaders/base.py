"""What every loader returns: the IR graph plus the reference runtime that SA902 compares against."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from stabaudit.ir.graph import Graph, TensorSpec
from stabaudit.ir.parameters import Parameterisation


class ModelFormat(str, Enum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"


# Runs the original model on named float32 inputs; returns its outputs in graph-output order.
ReferenceRun = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True, kw_only=True, eq=False)
class LoadedModel:
    graph: Graph  # validated, shapes filled (stabaudit.ir.executor.with_shapes)
    format: ModelFormat
    reference_name: str  # "onnxruntime" | "torchscript"
    reference: ReferenceRun
    parameters: int  # number of stored parameter elements of the source model
    source_ops: Mapping[str, int] = field(default_factory=dict)  # op counts of the source model
    notes: tuple[str, ...] = ()  # what the loader changed (opset lifted, constants folded, ...)
    # the parameters training updates, as the source names them (the update channel, SA501-SA503)
    parameterisation: Parameterisation | None = None
    # the float type the reference runs in ("float16", "bfloat16", "float32", "float64"): the
    # least precise one of the inputs and stored parameters; SA902's tolerance follows it
    precision: str = "float32"
    # where the audit starts when it does not start at the graph inputs: start tensor -> why
    # (an embedding Gather's output, a Cast to float, a tensor named by --from)
    start: Mapping[str, str] = field(default_factory=dict)
    # integer / bool inputs (and, with --from, float inputs upstream of it) held at values: name -> which values
    held: Mapping[str, str] = field(default_factory=dict)
    # with start tensors: (rng) -> (feeds of the graph's inputs, the reference's outputs), the start
    # tensors' feeds being the reference's values at the held inputs
    reference_at: Callable[[np.random.Generator], tuple[dict[str, np.ndarray], list[np.ndarray]]] | None = None
    # what the callers' ``module_jobs`` computed on the source module where it was loaded (a
    # TorchScript module lives in its isolated loading process only; see loaders.ts_child): job -> result
    module_results: Mapping[str, Any] = field(default_factory=dict)
    # the names of the reference's outputs in the order it returns them, and the source names of the
    # graph's outputs in the graph's order: SA902 pairs them by name (both empty: by position). An
    # output missing from ``output_names`` is one that does not depend on the audited inputs
    reference_outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()


# SA902 compares the engine against the reference on this many seeded inputs (analyses.equivalence)
EQUIVALENCE_SAMPLES = 4
HALF_PRECISIONS = ("float16", "bfloat16")


def rounded_to(x: np.ndarray, precision: str) -> np.ndarray:
    """``x`` rounded to the reference's input precision, as float32 (exact): both runtimes then
    read the same input, and only the rounding inside the model is compared."""
    if precision not in HALF_PRECISIONS:
        return x
    import torch

    return torch.from_numpy(x).to(getattr(torch, precision)).to(torch.float32).numpy()


def seeded_feeds(inputs: Sequence[TensorSpec], precision: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One equivalence sample: standard-normal float32 inputs drawn from ``rng`` (rounded to
    ``precision`` when the reference runs in half precision). The isolated TorchScript loader
    draws the same samples to record its reference's outputs, so both sides must use this."""
    return {s.name: rounded_to(rng.standard_normal(s.shape).astype(np.float32), precision) for s in inputs}


# A tensor above this many elements (1 GiB in float32) is refused before anything allocates it:
# a hostile file can declare any shape, and the engine holds every value of the graph at once.
MAX_ELEMENTS = 2**28


def check_value_sizes(graph: Graph) -> None:
    """Refuse a graph with a value above MAX_ELEMENTS elements (its shapes are static, filled on
    the meta device, so nothing has been allocated yet)."""
    import math

    from stabaudit.errors import ResourceError

    for name, shape in graph.shapes.items():
        size = math.prod(shape)
        if size > MAX_ELEMENTS:
            raise ResourceError(
                f"value {name!r} of shape {list(shape)} has {size} elements, above the limit of "
                f"{MAX_ELEMENTS} elements per tensor"
            )
