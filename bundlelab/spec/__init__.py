"""The architecture-spec language: networks as plain, validated, framework-free data.

A :class:`Spec` is an immutable DAG of :class:`Node` objects (ops from :data:`OPS`), with
optional (stochastic) edges for super-networks; the presets build chains on top of it.  Backends
(PyTorch, Keras) build and train a spec; the auto-tune and the budgeted search rewrite it with
the functions here.  Layer names are node ids, and :func:`measured_layers` gives the order the
adapters report bundles in, so a rewrite can be traced to a layer of a report.

>>> from bundlelab.spec import conv_net, measured_layers, truncate_stage_from, stage_depths
>>> spec = conv_net(20)
>>> measured_layers(spec)[:4]
['a1', 'a2', 'b1', 'b2']
>>> stage_depths(truncate_stage_from(spec, "c2"))
{'a': 2, 'b': 2, 'c': 1, 'd': 2}
>>> from bundlelab.spec import loads, dumps
>>> loads(dumps(spec)) == spec
True
"""

from ._graph import (
    INITS,
    MAX_NODES,
    MAX_PARAMETERS,
    MAX_SAMPLE_VALUES,
    SPEC_VERSION,
    Node,
    Spec,
    layer_count,
    measured_layers,
    parameter_count,
    stage_depths,
    stage_nodes,
)
from ._io import dump, dumps, from_dict, load, loads, to_dict
from ._ops import ACTIVATIONS, OPS
from ._presets import PRESETS, STAGES, conv_net, fully_connected, preset
from ._rewrites import scale_width, set_residual, set_stage_depth, truncate_stage_from

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "MAX_NODES",
    "MAX_PARAMETERS",
    "MAX_SAMPLE_VALUES",
    "OPS",
    "PRESETS",
    "SPEC_VERSION",
    "STAGES",
    "Node",
    "Spec",
    "conv_net",
    "dump",
    "dumps",
    "from_dict",
    "fully_connected",
    "layer_count",
    "load",
    "loads",
    "measured_layers",
    "parameter_count",
    "preset",
    "scale_width",
    "set_residual",
    "set_stage_depth",
    "stage_depths",
    "stage_nodes",
    "to_dict",
    "truncate_stage_from",
]
