"""Observability: redaction, the access log, Prometheus metrics."""
