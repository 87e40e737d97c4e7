"""Imports every built-in policy module so that their ``register_policy`` calls run."""

from . import deadline, dynamic_chunk, running_first, slide, slide_bounded  # noqa: F401
