"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Counters by model (never by tenant: one tenant must not observe another's traffic)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("realm_requests", "Finished HTTP requests by endpoint and status.",
                                ["endpoint", "status"], registry=r)
        self.rejected = Counter("realm_rejected", "Requests refused before running, by reason.", ["reason"], registry=r)
        self.generations = Counter("realm_generations", "Generations by model and how they ended.",
                                   ["model", "finish"], registry=r)
        self.prompt_tokens = Counter("realm_prompt_tokens", "Prompt tokens evaluated.", ["model"], registry=r)
        self.completion_tokens = Counter("realm_completion_tokens", "Tokens generated.", ["model"], registry=r)
        self.queue_depth = Gauge("realm_queue_depth", "Accepted requests waiting for a guest.", registry=r)
        self.running = Gauge("realm_running", "Requests generating now.", registry=r)
        self.ttft = Histogram("realm_time_to_first_token_seconds", "From acceptance to the first text.",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("realm_inter_token_seconds", "Between consecutive generated tokens.",
                             ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.guests = Gauge("realm_guests", "Guest instances alive (running or pooled).", ["model"], registry=r)
        self.guest_memory = Gauge("realm_guest_memory_bytes", "Linear memory of every live guest.", ["model"], registry=r)
        self.store_bytes = Gauge("realm_store_bytes", "Bytes of model data held by the model store.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
