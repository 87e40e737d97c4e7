"""Workloads: real and synthetic request traces turned into prioritised requests.

Layers, bottom up: :mod:`~proserve.workload.traces` loads trace files into a columnar
:class:`Trace`; :mod:`~proserve.workload.arrivals` makes synthetic arrivals and rescales or cuts
traces; :mod:`~proserve.workload.assign` assigns priority classes and SLOs and builds
:class:`~proserve.core.request.Request` objects; :func:`make_workload` chains them for the CLI.
Built-in traces ship under ``data/`` (see :mod:`~proserve.workload.builtin`).
"""

from proserve.workload.arrivals import (
    gamma_arrivals,
    poisson_arrivals,
    rescale,
    truncate,
    window,
)
from proserve.workload.assign import (
    build_requests,
    clamp_lengths,
    relative_position,
    share_matrix,
    tenant_rule,
)
from proserve.workload.builtin import BUILTINS, Builtin, builtin_path, data_dir, list_builtins
from proserve.workload.make import make_workload
from proserve.workload.servegen import ServeGenData, load_servegen
from proserve.workload.traces import (
    Trace,
    TraceError,
    load_azure,
    load_burstgpt,
    load_file,
    load_lengths,
    load_mooncake,
    load_trace,
    sniff_format,
)

__all__ = [
    "BUILTINS",
    "Builtin",
    "ServeGenData",
    "Trace",
    "TraceError",
    "build_requests",
    "builtin_path",
    "clamp_lengths",
    "data_dir",
    "gamma_arrivals",
    "list_builtins",
    "load_azure",
    "load_burstgpt",
    "load_file",
    "load_lengths",
    "load_mooncake",
    "load_servegen",
    "load_trace",
    "make_workload",
    "poisson_arrivals",
    "relative_position",
    "rescale",
    "share_matrix",
    "sniff_format",
    "tenant_rule",
    "truncate",
    "window",
]
