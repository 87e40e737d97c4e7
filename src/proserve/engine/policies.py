"""Imports every built-in policy module so that their ``register_policy`` calls run."""

from . import deadline, running_first, slide  # noqa: F401
