"""Where a rebuild's time goes on PostgreSQL (issue 16, part 1): the same store as ``fold.py``
(``--rows`` raw predictions, 10 models x 5 segments over 7 days, half labelled), rebuilt twice, the
first time folding the raw backlog (emptying its work list: ``mark_folded``), the second time
recomputing the folded store; each time split by the store functions the rebuild calls (wall
seconds spent inside each, measured by wrapping them), and the merge of the staged bucket rows by
statement.

Run: ``python benchmarks/rebuild_split.py --rows 10000000`` (a durable throwaway cluster; add
``--server-option`` pairs, e.g. ``--server-option shared_buffers=2GB``, to try a server's settings).
Prints the split; not written to RESULTS.md (``docs/architecture.md``, "Scale", quotes it).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from benchmarks import fold  # noqa: E402
from monitor.store import aggregates  # noqa: E402
from monitor.store.engine import create_store_engine  # noqa: E402
from monitor.store.migrate import upgrade  # noqa: E402
from tests.support import pgcluster  # noqa: E402

SPLIT = ("fetch_columns", "mark_folded", "upsert_buckets", "rebuild_hours", "series_pairs", "add_totals",
         "reapply", "reset_totals")  # fmt: skip


def instrument(times: collections.Counter[str]) -> None:
    """Wrap the functions ``store.aggregates`` calls, and the staged merge's statements."""

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[name] += time.perf_counter() - began

        return wrapper

    for name in SPLIT:
        setattr(aggregates, name, timed(name, getattr(aggregates, name)))
    staged = aggregates.RebuiltBuckets
    staged.add = timed("stage bucket rows", staged.add)  # type: ignore[method-assign]
    merge = staged.merge

    def merge_by_statement(self: Any) -> None:
        cursor = self.cursor

        class Timed:
            def execute(self, sql: str) -> Any:
                began = time.perf_counter()
                try:
                    return cursor.execute(sql)
                finally:
                    times["merge: " + " ".join(sql.split()[:2])] += time.perf_counter() - began

            def close(self) -> None:
                cursor.close()

        self.cursor = Timed()
        merge(self)

    staged.merge = merge_by_statement  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--server-option", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    times: collections.Counter[str] = collections.Counter()
    instrument(times)
    cluster = pgcluster.start_cluster(durable=True)
    try:
        if args.server_option:  # restart with the settings asked for
            cluster.stop()
            extra = " ".join(f"-c {option}" for option in args.server_option)
            run = cluster._run
            cluster._run = lambda *a, check=True: run(  # type: ignore[method-assign]
                *[f"{x} {extra}" if i and a[i - 1] == "-o" else x for i, x in enumerate(a)], check=check
            )
            cluster.start()
        engine = create_store_engine(cluster.url())
        upgrade(engine)
        with engine.connect() as conn:
            for option in args.server_option:
                name = option.split("=", 1)[0]
                print(f"{name} = {conn.exec_driver_sql(f'SHOW {name}').scalar()}")  # what the server took
        inserted = fold.insert(engine, args.rows, 0, fold.T0, fold.SPAN, seed=1)
        print(f"inserted {args.rows:,} rows in {inserted:.1f} s")
        for what in ("rebuild of the raw backlog", "rebuild of the folded store"):
            times.clear()
            began = time.perf_counter()
            with engine.begin() as conn:
                aggregates.rebuild(
                    conn, fold.BUCKET, fold.FINE, cap_of=lambda model: 50, hour_bins=fold.ECE_BINS
                )
            total = time.perf_counter() - began
            split = ", ".join(
                f"{name} {seconds:.1f}" for name, seconds in times.most_common() if seconds >= 0.05
            )
            print(f"{what}: {total:.1f} s ({split})", flush=True)
        engine.dispose()
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
