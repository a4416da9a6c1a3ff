"""Prometheus metrics of one server process (``GET /metrics``).

A private :class:`prometheus_client.CollectorRegistry` per server keeps
tests and several servers in one process apart.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Request methods that get their own label value; any other is counted as ``OTHER``
#: (a client inventing methods must not create new time series).
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def method_label(method: str) -> str:
    """The ``method`` label of a request: the method if it is a known one, else ``OTHER``."""
    return method if method in KNOWN_METHODS else "OTHER"


class Metrics:
    """Counters and histograms the server updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kflow_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kflow_http_request_seconds",
            "HTTP request duration",
            ["route"],
            registry=self.registry,
            buckets=(
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
                30.0,
                60.0,
            ),
        )
        self.claimed = Counter(
            "kflow_activities_claimed",
            "Activities handed to workers",
            ["queue"],
            registry=self.registry,
        )
        self.reports = Counter(
            "kflow_activity_reports",
            "Completions and failures reported",
            ["outcome"],
            registry=self.registry,
        )
        self.workflows_started = Counter(
            "kflow_workflows_started", "Runs started", registry=self.registry
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request (and time it, long-polls apart).

        ``route`` must be a route template or a fixed name such as
        ``unmatched``, never a raw path: labels stay a bounded set.
        """
        self.requests.labels(method_label(method), route, str(status)).inc()
        if "/workers/poll" not in route:  # long-polls would swamp the histogram
            self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
