"""Cluster tier: which instance serves each request (routers), fleet tiers and admission.

Importing the package registers the built-in routers (their modules call ``register_router``;
``base`` first, which they import).
"""

from . import base, go, polyserve, routers  # noqa: F401
