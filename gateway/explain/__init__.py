"""`gateway explain`: what the gateway would do with one request, and why (walk.py), and
what it reports (report.py)."""

from gateway.explain.report import JSON_VERSION, Explanation, RouteStep, render
from gateway.explain.walk import ExplainRequest, explain

__all__ = ["JSON_VERSION", "ExplainRequest", "Explanation", "RouteStep", "explain", "render"]
