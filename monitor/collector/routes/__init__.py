"""One router per resource, included by ``collector.api.create_app``."""

from monitor.collector.routes import calibrators, ingest, models, operations, sketches

__all__ = ["ROUTERS"]

ROUTERS = (ingest.router, models.router, calibrators.router, sketches.router, operations.router)
