"""vLLM integration: ``scheduler.ProServeScheduler`` (a ``--scheduler-cls`` plug-in).

Importing this package does not import vLLM; only the scheduler module does, so proserve works
without vLLM installed.
"""
