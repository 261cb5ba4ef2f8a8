"""Evaluations for a seeded lake: a judge's verdicts on a sample of its answered calls.

A quarter of the answered chat calls (embeddings have no answer to judge) get two
evaluations, as an LLM-as-judge pipeline would post them: ``hallucination`` (label
``hallucinated`` or ``grounded``, value 1 or 0) and ``groundedness`` (a score in 0..1,
lower for hallucinated answers). Each model hallucinates at its own rate, and one of
them, ``gpt-4.1-mini``, noticeably more often than the rest: the planted quality
incident for the dashboard and the notebook to find. Written with numpy and Arrow for a
whole file at once; the same seed writes the same evaluations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tollgate.lake import EVALUATIONS, EVALUATIONS_SCHEMA, partition_dir, write_parquet

EVALUATED_SHARE = 0.25
HALLUCINATION_RATES = {
    "gpt-4.1-mini": 0.18,
    "claude-3-5-haiku": 0.07,
    "gpt-4o-mini": 0.05,
    "o3": 0.02,
}
"""Per request model; models not named hallucinate at ``BASE_RATE``."""
BASE_RATE = 0.04
WORST_MODEL = "gpt-4.1-mini"
JUDGE = "judge-gpt-4o@2026-10"
_COLUMNS = ["event_id", "end_time", "tenant", "api_key_id", "request_model", "status", "operation"]


def seed_evaluations(priced_files: list[Path], lake: Path, seed: int) -> int:
    """Evaluate a sample of the calls in ``priced_files``; the evaluation files written."""
    rng = np.random.default_rng([seed, 19])
    tables = []
    for path in priced_files:
        calls = pq.read_table(path, columns=_COLUMNS)
        answered = pc.and_(
            pc.equal(calls["status"], "ok"), pc.not_equal(calls["operation"], "embeddings")
        )
        calls = calls.filter(pc.and_(answered, pa.array(rng.random(len(calls)) < EVALUATED_SHARE)))
        if len(calls):
            tables.append(_judged(rng, calls))
    if not tables:
        return 0
    table = pa.concat_tables(tables)
    days = pc.cast(pc.cast(table["time"], pa.timestamp("us", tz="UTC")), pa.date32())
    written = 0
    for day in pc.unique(days).to_pylist():
        rows = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
        name = f"seed-{seed}-000.parquet"
        write_parquet(rows.sort_by("time"), partition_dir(lake, day, EVALUATIONS) / name)
        written += 1
    return written


def _judged(rng: np.random.Generator, calls: pa.Table) -> pa.Table:
    """Two evaluations per call: the hallucination verdict and a groundedness score."""
    count = len(calls)
    models = calls["request_model"].to_pylist()
    rate = np.asarray([HALLUCINATION_RATES.get(m or "", BASE_RATE) for m in models])
    bad = rng.random(count) < rate
    grounded = np.where(bad, rng.beta(2, 5, count), rng.beta(8, 2, count))
    delay_us = rng.integers(1_000_000, 600_000_000, count)
    end_us = pc.cast(calls["end_time"], pa.int64()).to_numpy()
    times = pa.array(end_us + delay_us, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    ids = [_uuid7_text(rng, int(us)) for us in np.concatenate([end_us + delay_us] * 2)]
    both = pa.concat_arrays
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            both([calls["event_id"].combine_chunks()] * 2),
            both([times, times]),
            both([calls["tenant"].combine_chunks()] * 2),
            both([calls["api_key_id"].combine_chunks()] * 2),
            pa.array(["hallucination"] * count + ["groundedness"] * count, pa.string()),
            pa.array(np.concatenate([bad.astype(np.float64), np.round(grounded, 3)])),
            pa.array(
                ["hallucinated" if b else "grounded" for b in bad] + [None] * count, pa.string()
            ),
            pa.array([None] * (2 * count), pa.string()),
            pa.array([JUDGE] * (2 * count), pa.string()),
            pa.array([None] * (2 * count), pa.string()),
            pa.array([None] * (2 * count), pa.int32()),
            pa.array([None] * (2 * count), pa.int64()),
        ],
        schema=EVALUATIONS_SCHEMA,
    )


def _uuid7_text(rng: np.random.Generator, unix_us: int) -> str:
    ms = unix_us // 1000
    rand = int.from_bytes(rng.bytes(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    hexed = f"{value:032x}"
    return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"
