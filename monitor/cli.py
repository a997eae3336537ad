"""``calmon`` command line: serve, check-config, db upgrade/current, rebuild-aggregates."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import yaml

from monitor import __version__
from monitor.config import ConfigError, Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calmon", description="Calibration monitoring for model confidences."
    )
    parser.add_argument("--version", action="version", version=f"calmon {__version__}")
    parser.add_argument("--config", help="YAML config file (CALMON_* environment variables override it)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon (collector API)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--database-url")

    check = sub.add_parser("check-config", help="validate and print the effective config, secrets masked")
    check.add_argument("--database-url")

    rebuild = sub.add_parser("rebuild-aggregates", help="recompute every sketch bucket from raw rows")
    rebuild.add_argument("--database-url")

    db = sub.add_parser("db", help="schema migrations")
    db.add_argument("action", choices=["upgrade", "current"])
    db.add_argument("--database-url")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        database_url=getattr(args, "database_url", None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"calmon: {exc}", file=sys.stderr)
        return 2

    from monitor.logsetup import configure_logging

    configure_logging(settings.logging.level, settings.logging.format)
    if args.command == "check-config":
        yaml.safe_dump(settings.masked(), sys.stdout, sort_keys=False)
        return 0
    if args.command == "db":
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
    if args.command == "rebuild-aggregates":
        from monitor.store.aggregates import rebuild
        from monitor.store.engine import create_store_engine
        from monitor.store.migrate import upgrade

        engine = create_store_engine(settings.url(), settings.database)
        try:
            upgrade(engine)
            with engine.begin() as conn:
                rows = rebuild(conn, settings.evaluation.bucket_seconds, settings.evaluation.fine_bins)
            print(f"rebuilt sketch buckets from {rows} prediction rows")
        finally:
            engine.dispose()
        return 0
    if args.command == "serve":
        from monitor.app import serve

        serve(settings)
        return 0
    return 2
