"""Request, priority classes, SLOs and metrics: the vocabulary every other layer speaks."""

from .classes import PriorityClass, SLORule, SpecError, parse_classes
from .metrics import summarize, summarize_group
from .request import Request, Status

__all__ = [
    "PriorityClass", "Request", "SLORule", "SpecError", "Status", "parse_classes", "summarize",
    "summarize_group",
]
