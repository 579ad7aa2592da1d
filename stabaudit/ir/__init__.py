"""The typed intermediate representation shared by both loaders and every analysis."""

from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.ops import OpType

__all__ = ["Graph", "Node", "OpType", "TensorSpec"]
