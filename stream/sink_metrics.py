"""Prometheus metrics of the lake sink: what it wrote, what it dropped, how far behind."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class SinkMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rows = Counter(
            "tollgate_sink_rows_written", "Rows written to the lake", ["sub_lake"], registry=r
        )
        self.files = Counter(
            "tollgate_sink_files_written", "Parquet files written", ["sub_lake"], registry=r
        )
        self.duplicates = Counter(
            "tollgate_sink_duplicates_dropped",
            "Second copies of an event or alert dropped (the first is in the lake)",
            ["sub_lake"],
            registry=r,
        )
        self.rejected = Counter(
            "tollgate_sink_rejected_records",
            "Records the contract (or the lake's schema) refused; logged with their offset",
            ["sub_lake"],
            registry=r,
        )
        self.completed = Counter(
            "tollgate_sink_ranges_completed",
            "Newest ranges read again on start (date files written: a crash had cut them)",
            ["sub_lake"],
            registry=r,
        )
        self.generations = Counter(
            "tollgate_sink_new_log_generations",
            "Partitions whose broker log was not the one the lake came from (it was lost)",
            ["sub_lake"],
            registry=r,
        )
        self.lag = Gauge(
            "tollgate_sink_lag_records",
            "Records on the topic not yet written to the lake",
            ["sub_lake"],
            registry=r,
        )

    def rows_written(self, sub_lake: str) -> int:
        value = self.registry.get_sample_value(
            "tollgate_sink_rows_written_total", {"sub_lake": sub_lake}
        )
        return int(value or 0)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``port`` (0: not at all)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
