"""Flows: versioned, testable identity policy (docs/flows.md). A flow file is parsed and checked by
``loader``, evaluated by ``engine`` (a pure function of version, context, recorded results and clock),
tested by ``testing``; ``tessera.flow_runtime`` stores and publishes versions."""

from .engine import Decision, Recorded, evaluate
from .loader import FlowError, load_dir, load_file, load_text
from .model import Flow, Step

__all__ = ["Decision", "Flow", "FlowError", "Recorded", "Step", "evaluate", "load_dir", "load_file", "load_text"]
