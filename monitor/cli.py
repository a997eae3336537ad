"""``calmon`` command line: serve, check-config, db, rebuild-aggregates, recalibrate, calibrators,
dashboards, alerts, import, replay.

Every verb takes ``--config`` (before or after the verb, as daemons do) and, where it opens the
database, ``--database-url``; each verb is one function chosen with ``set_defaults(func=...)``.
Heavy imports happen inside the verbs so ``calmon --help`` stays quick.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import yaml
from sqlalchemy import Engine

from monitor import __version__
from monitor.config import ConfigError, Settings, load_settings
from monitor.vocabulary import MODEL_WIDE

# PostgreSQL's serialization failure and deadlock: another transaction changed what this one read.
_CONCURRENT_CHANGE = frozenset({"40001", "40P01"})

__all__ = ["main"]

Command = Callable[[argparse.Namespace, Settings], int]


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where there is a literal default; options whose default comes from the
    configuration say so in their own help text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _common(database: bool) -> argparse.ArgumentParser:
    """Options every verb shares; ``default=SUPPRESS`` keeps a value given before the verb."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="YAML config file; CALMON_* environment variables override it (default: none)",
    )
    if database:
        parent.add_argument(
            "--database-url",
            default=argparse.SUPPRESS,
            help="database URL, overriding the config (default: database_url, sqlite:///./calmon.db)",
        )
    return parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calmon",
        description="Calibration monitoring for model confidences.",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"calmon {__version__}")
    parser.add_argument("--config", help="YAML config file; CALMON_* environment variables override it")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    with_db, without_db = _common(database=True), _common(database=False)

    def verb(name: str, func: Command, help: str, database: bool = True) -> argparse.ArgumentParser:
        found = sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[with_db if database else without_db],
            formatter_class=_Help,
        )
        found.set_defaults(func=func)
        return found

    serve = verb("serve", _serve, "run the daemon: collector API, scheduler and exporter")
    serve.add_argument("--host", help="address to bind (default: the config's host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: the config's port, 8000)")
    verb("check-config", _check_config, "validate and print the effective configuration, secrets masked")
    _rebuild_options(
        verb(
            "rebuild-aggregates",
            _rebuild,
            "recompute the sketch buckets from raw rows (those newer than retention.raw_days)",
        )
    )
    recal = verb("recalibrate", _recalibrate, "fit, gate and promote (or refuse) a calibrator now")
    recal.add_argument("model", help="the model to recalibrate")
    recal.add_argument("--segment", default=MODEL_WIDE, help="a segment, or * for the model-wide calibrator")
    recal.add_argument("--dry-run", action="store_true", help="decide and report, write nothing")
    cal = verb("calibrators", _calibrators, "the calibrator registry: list, show or roll back versions")
    cal.add_argument("action", choices=["list", "show", "rollback"], help="what to do")
    cal.add_argument("id", nargs="?", type=int, help="calibrator id (show, rollback)")
    cal.add_argument("--model", help="list: only this model (default: every model)")
    _dashboard_options(
        verb("dashboards", _dashboards, "the Grafana dashboards: render or push", database=False)
    )
    rules = verb("alerts", _alerts, "write the shipped alert rules with your runbook links", database=False)
    rules.add_argument("action", choices=["render"], help="write the rules file")
    rules.add_argument("--runbook-base", required=True, help="URL every runbook_url is moved under")
    rules.add_argument("--rules", default="alerts/calmon.rules.yml", help="the shipped rules file")
    rules.add_argument("--out", default="-", help="where to write them ('-': standard output)")
    _import_options(verb("import", _import, "load a history of predictions and labels into the store"))
    replay = verb(
        "replay",
        _replay,
        "run a recorded history through the real pipeline on a simulated clock; write every decision",
        database=False,
    )
    replay.add_argument("--input", required=True, help="history: .jsonl, .csv or .parquet, one record each")
    replay.add_argument("--out", required=True, help="where to write the decisions (JSON)")
    replay.add_argument("--report", help="also write a Markdown summary here")
    replay.add_argument(
        "--no-evaluations", action="store_true", help="leave the per-evaluation rows out of the JSON"
    )
    _demo_options(
        verb(
            "demo",
            _demo,
            "start a daemon and stream realistic traffic with a drift: watch calmon alarm, refit and recover",
            database=False,
        )
    )
    db = verb("db", _db, "schema migrations")
    db.add_argument(
        "action", choices=["upgrade", "current"], help="apply the migrations, or show the revision"
    )
    return parser


def _demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--database-url", help="database of the started daemon (default: a temporary SQLite file)"
    )
    demo.add_argument("--speed", type=_positive, default=1.0, help="run the story this many times faster")
    demo.add_argument(
        "--duration", type=_positive, default=300.0, help="give up after this many seconds (at --speed 1)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulated traffic")
    demo.add_argument("--url", help="send to this running calmon instead of starting one")
    demo.add_argument("--token", help="bearer token for --url (default: $CALMON_TOKEN)")
    demo.add_argument("--port", type=int, help="port of the started daemon (default: a free one)")
    demo.add_argument("--exit", action="store_true", help="stop when the story is told (default: keep going)")


def _rebuild_options(rebuild: argparse.ArgumentParser) -> None:
    rebuild.add_argument(
        "--all",
        action="store_true",
        help="recompute every bucket, also before the retention cutoff (drops history without raw rows)",
    )
    rebuild.add_argument(
        "--attempts",
        type=_positive_int,
        default=3,
        help="runs to try on PostgreSQL when live ingest changes what the rebuild read (each changes "
        "nothing unless it completes)",
    )


def _import_options(imp: argparse.ArgumentParser) -> None:
    imp.add_argument(
        "--input", help="predictions: .parquet, .csv or .jsonl, columns named as the API's fields"
    )
    imp.add_argument("--labels", help="labels: model, id, correct or label, labelled_at (same formats)")
    imp.add_argument(
        "--rejected",
        default="calmon-import-rejected.jsonl",
        help="where to write the rejected rows (JSON lines)",
    )
    imp.add_argument("--no-progress", action="store_true", help="no progress bar (default: on a terminal)")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")


def _dashboard_options(dash: argparse.ArgumentParser) -> None:
    dash.add_argument("action", choices=["render", "push"], help="write JSON files, or upload to a Grafana")
    dash.add_argument("--out", default="dashboards", help="render: directory for the JSON files")
    dash.add_argument("--url", help="push: Grafana base URL (default: $GRAFANA_URL)")
    dash.add_argument(
        "--token-env", default="GRAFANA_TOKEN", help="push: environment variable holding the token"
    )
    dash.add_argument("--folder-uid", default="calmon", help="push: uid of the folder to create or reuse")
    dash.add_argument("--folder-title", default="calmon", help="push: title of that folder")
    dash.add_argument(
        "--only", action="append", help="push: only this dashboard uid (repeatable; default: all)"
    )


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number: {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    try:
        import calmon_client  # noqa: F401
    except ImportError:
        print("calmon demo sends through the client package: pip install ./clients/python", file=sys.stderr)
        return 2
    from monitor.demo.script import DemoOptions, run_demo

    options = DemoOptions(
        speed=args.speed,
        duration=args.duration,
        seed=args.seed,
        url=args.url,
        token=args.token or os.environ.get("CALMON_TOKEN"),
        database_url=args.database_url,
        port=args.port,
        stay=not args.exit,
    )
    return run_demo(options)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        getattr(args, "config", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        database_url=getattr(args, "database_url", None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    from monitor.store.migrate import SchemaError

    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"calmon: {exc}", file=sys.stderr)
        return 2
    from monitor.logsetup import configure_logging

    configure_logging(settings.logging.level, settings.logging.format)
    from monitor.config import mask_url
    from monitor.store.engine import UNAVAILABLE, unavailable_reason

    try:
        code: int = args.func(args, settings)
    except SchemaError as exc:
        print(f"calmon: {exc}", file=sys.stderr)
        return 2
    except UNAVAILABLE as exc:
        reason = unavailable_reason(exc)
        where = mask_url(settings.url())
        print(
            f"calmon: cannot reach the database {where} (database_url, --database-url): {reason}",
            file=sys.stderr,
        )
        return 2
    return code


@contextmanager
def _migrated_engine(settings: Settings) -> Iterator[Engine]:
    """An engine on a schema at head for one offline command, disposed afterwards."""
    from monitor.store.engine import create_store_engine
    from monitor.store.migrate import upgrade

    engine = create_store_engine(settings.url(), settings.database)
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.app import StartupError, serve

    try:
        serve(settings)
    except StartupError as exc:
        print(f"calmon: {exc}", file=sys.stderr)
        return 2
    return 0


def _check_config(args: argparse.Namespace, settings: Settings) -> int:
    yaml.safe_dump(settings.masked(), sys.stdout, sort_keys=False)
    return 0


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.store.engine import create_store_engine
    from monitor.store.migrate import current_revision, head_revision, upgrade

    engine = create_store_engine(settings.url(), settings.database)
    try:
        if args.action == "upgrade":
            upgrade(engine)
        print(f"schema revision: {current_revision(engine)} (head: {head_revision()})")
    finally:
        engine.dispose()
    return 0


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.store.aggregates import rebuild, tidy_after_rebuild

    since = None if args.all else time.time() - settings.retention.raw_days * 86400
    with _migrated_engine(settings) as engine:
        attempt = 1
        while True:
            try:
                with engine.begin() as conn:
                    rows = rebuild(
                        conn,
                        settings.evaluation.bucket_seconds,
                        settings.evaluation.fine_bins,
                        since=since,
                        cap_of=settings.max_segments_for,
                        hour_bins=settings.evaluation.ece_bins,
                    )
                break
            except Exception as exc:  # SQLAlchemy's wrapper, or the driver's own from a COPY cursor
                cause = getattr(exc, "orig", None) or exc
                if getattr(cause, "sqlstate", None) not in _CONCURRENT_CHANGE:
                    raise
                what = (
                    "calmon: rows, labels or buckets the rebuild had to write changed while the rebuild "
                    f"ran ({str(cause).strip().splitlines()[0]}); nothing was changed"
                )
                if attempt >= args.attempts:
                    print(f"{what}: run it again, or stop the daemons' ingest while it runs", file=sys.stderr)
                    return 1
                attempt += 1
                print(f"{what}; trying again ({attempt} of {args.attempts})", file=sys.stderr)
        tidy_after_rebuild(engine)
    where = "" if since is None else f" newer than {datetime.fromtimestamp(since, UTC):%Y-%m-%d %H:%M} UTC"
    print(f"rebuilt sketch buckets from {rows} prediction rows{where}")
    return 0


def _recalibrate(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.recalibration.job import UnknownSeries, recalibrate
    from monitor.recalibration.report import markdown
    from monitor.vocabulary import RecalibrationOutcome, Trigger

    with _migrated_engine(settings) as engine:
        try:
            outcome = recalibrate(engine, settings, args.model, args.segment, Trigger.MANUAL, args.dry_run)
        except UnknownSeries as exc:
            print(f"calmon: {exc}", file=sys.stderr)
            return 1
    print(markdown(outcome.report) if outcome.report else f"{outcome.outcome}: {outcome.reason}")
    return 1 if outcome.outcome == RecalibrationOutcome.FAILED else 0


def _calibrators(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from monitor.store import calibrators as registry

    if args.action in ("show", "rollback") and args.id is None:
        print(f"calmon: calibrators {args.action} needs a calibrator id", file=sys.stderr)
        return 2
    with _migrated_engine(settings) as engine, engine.begin() as conn:
        if args.action == "list":
            for r in registry.list_all(conn, args.model):
                head = f"{r.id:>6}  {r.model}  {r.segment}  v{r.version}  {r.method:<11} {r.status:<9}"
                print(f"{head} {r.reason}")
            return 0
        if args.action == "show":
            record = registry.get(conn, args.id)
            if record is None:
                print(f"calmon: no calibrator {args.id}", file=sys.stderr)
                return 1
            print(orjson.dumps(record.as_dict(), option=orjson.OPT_INDENT_2).decode())
            return 0
        try:
            rolled, restored = registry.rollback(conn, args.id, time.time())
        except (LookupError, ValueError) as exc:
            print(f"calmon: {exc}", file=sys.stderr)
            return 1
    target = f"version {restored.version}" if restored else "the model-wide calibrator or identity"
    print(f"rolled back {rolled.model}/{rolled.segment} v{rolled.version}; now serving {target}")
    return 0


def _alerts(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.alerting import rebase_runbooks

    try:
        rendered = rebase_runbooks(Path(args.rules).read_text(), args.runbook_base)
    except (OSError, ValueError) as exc:
        print(f"calmon: alerts render: {exc}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(rendered)
    else:
        Path(args.out).write_text(rendered)
        print(f"wrote {args.out}")
    return 0


def _import(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from monitor.bulk.importer import import_history
    from monitor.bulk.sources import ImportInputError, Source

    if not args.input and not args.labels:
        print("calmon: import needs --input (predictions), --labels, or both", file=sys.stderr)
        return 2

    def progress(source: Source) -> object:
        from tqdm import tqdm

        rows = source.total_rows is not None
        return tqdm(
            total=source.total_rows if rows else source.total_bytes,
            unit="rows" if rows else "B",
            unit_scale=True,
            desc=f"{source.kind} {source.path.name}",
            disable=True if args.no_progress else None,  # None: only on a terminal
        )

    with _migrated_engine(settings) as engine:
        try:
            summary = import_history(
                engine,
                settings,
                Path(args.input) if args.input else None,
                Path(args.labels) if args.labels else None,
                Path(args.rejected),
                progress,
            )
        except ImportInputError as exc:
            print(f"calmon: import: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(orjson.dumps(summary.as_dict()).decode())
    else:
        for line in summary.lines():
            print(line)
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from monitor.replay import ReplayInputError, read_history, render_markdown, replay

    try:
        records = read_history(Path(args.input))
    except (OSError, ReplayInputError) as exc:
        print(f"calmon: replay: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    decisions = replay(settings, records, evaluations=not args.no_evaluations)
    Path(args.out).write_bytes(orjson.dumps(decisions, option=orjson.OPT_SERIALIZE_NUMPY))
    if args.report:
        Path(args.report).write_text(render_markdown(decisions))
    print(
        f"replayed {len(records)} records, {decisions['evaluations_run']} evaluations in "
        f"{time.monotonic() - started:.1f} s: {len(decisions['events'])} events, "
        f"{len(decisions['recalibrations'])} recalibrations -> {args.out}"
    )
    return 0


def _dashboards(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "render":
        from monitor.dashboards import render

        for path in render(Path(args.out)):
            print(f"wrote {path}")
        return 0
    from monitor.grafana import PushError, connect, push

    url = args.url or os.environ.get("GRAFANA_URL")
    if not url:
        print("calmon: dashboards push needs --url or GRAFANA_URL", file=sys.stderr)
        return 2
    token = os.environ.get(args.token_env)
    if not token:
        print(
            f"calmon: dashboards push: ${args.token_env} is empty; set it to a Grafana API token",
            file=sys.stderr,
        )
        return 2
    try:
        result = push(connect(url, token), args.folder_uid, args.folder_title, args.only)
    except PushError as exc:
        print(f"calmon: dashboards push: {exc}", file=sys.stderr)
        return 1
    state = "created" if result.folder_created else "existing"
    print(f"pushed {', '.join(result.dashboards)} to {state} folder {result.folder_uid!r} at {url}")
    return 0
