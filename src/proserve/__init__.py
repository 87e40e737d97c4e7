"""proserve: multi-priority, SLO-aware scheduling for LLM inference.

Layers (lowest first): core, latency, engine, cluster, workload, sim, serve, integrations,
experiments/cli. A layer imports only from layers below it; see docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
