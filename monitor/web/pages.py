"""The status page's routes: overview, model page, decision report, sign-in. Read-only HTML.

Every page is complete without JavaScript (there is none): charts are inline SVG drawn on the
server, navigation is links, sign-in is a form. Responses forbid scripts and every origin but this
one (``Content-Security-Policy``), so a page cannot load anything from another host even by mistake.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.responses import HTMLResponse, RedirectResponse, Response

from monitor.collector.auth import AuthError
from monitor.collector.deps import CalibratorId, ContextDep, ModelName, NameQuery
from monitor.recalibration.report import svg as report_svg
from monitor.recalibration.report import threshold_moves
from monitor.store.engine import READ_ONLY
from monitor.store.reports import load_report
from monitor.vocabulary import MODEL_WIDE
from monitor.web import session, views, words
from monitor.web.figures import ChartCache, ece_text, series_charts

__all__ = ["SECURITY_HEADERS", "install", "router"]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)
_ENV = Environment(
    loader=PackageLoader("monitor.web", "templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _utc(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    seconds = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


_ENV.filters.update(utc=_utc, num=_num, pct=_pct, ece=ece_text)
_ENV.globals.update(ago=_ago, MODEL_WIDE=MODEL_WIDE, words=words)


def install(app: FastAPI, charts: ChartCache | None = None) -> ChartCache:
    """Serve the pages from ``app``, with its own chart cache (one per app: two daemons in one process
    never see each other's charts); the cache is returned (benchmarks empty it)."""
    cache = charts if charts is not None else ChartCache()
    app.state.charts = cache
    app.include_router(router)
    return cache


def _charts(request: Request) -> ChartCache:
    found: ChartCache = request.app.state.charts
    return found


def render(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    values.setdefault("now", time.time())
    values.setdefault("base", session.base_of(request))  # links work under a proxy's path prefix
    body = _ENV.get_template(template).render(**values)
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _gate(ctx: ContextDep, request: Request) -> Response | None:
    """None when the viewer may read; otherwise the sign-in redirect or a 403 page."""
    try:
        session.authorize_page(ctx.auth, request)
    except AuthError as exc:
        if exc.status == 401:
            return session.login_redirect(request)
        message = exc.message
        return render(
            request, "error.html", exc.status, title="Not allowed", message=message, now=ctx.clock()
        )
    return None


@router.get("/", response_class=HTMLResponse)
def overview(ctx: ContextDep, request: Request) -> Response:
    if (refused := _gate(ctx, request)) is not None:
        return refused
    snapshot = ctx.snapshots.get()
    with ctx.engine.connect().execution_options(**READ_ONLY) as conn:
        rows, recent = views.overview(snapshot, conn, ctx.settings)
    windows = ctx.settings.evaluation.windows
    return render(
        request, "overview.html", rows=rows, recent=recent, snapshot=snapshot, windows=windows,
        longest=views.longest_window(windows),
        now=ctx.clock(), auth=ctx.auth.enabled, interval=ctx.settings.evaluation.interval_seconds,
    )  # fmt: skip


@router.get("/models/{model}", response_class=HTMLResponse)
def model_page(
    model: ModelName,
    ctx: ContextDep,
    request: Request,
    segment: Annotated[str, NameQuery] = MODEL_WIDE,
    window: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    if (refused := _gate(ctx, request)) is not None:
        return refused
    now = ctx.clock()
    windows = ctx.settings.evaluation.windows
    window = window or windows[0]
    snapshot = ctx.snapshots.get()
    problem = _unknown(snapshot, model, segment, window, windows)
    if problem is not None:
        return render(request, "error.html", 404, title="Not found", message=problem, now=now)
    assert snapshot is not None  # _unknown refuses a missing snapshot
    with ctx.engine.connect().execution_options(**READ_ONLY) as conn:
        view = views.series_view(snapshot, conn, ctx.settings, model, segment, window, now)

    def load_history() -> views.History:
        with ctx.engine.connect().execution_options(**READ_ONLY) as conn:
            return views.history(conn, ctx.settings, model, segment, now, view.events)

    figures = series_charts(view, _charts(request), ctx.settings.evaluation.ece_bins, load_history)
    return render(
        request, "model.html", view=view, charts={k: Markup(v) for k, v in figures.items()}, now=now,  # noqa: S704
        auth=ctx.auth.enabled, tolerance=ctx.settings.drift_for(model, segment).tolerance,
        fine_bins=ctx.settings.evaluation.fine_bins,
    )  # fmt: skip


def _unknown(snapshot: Any, model: str, segment: str, window: str, windows: list[str]) -> str | None:
    if window not in windows:
        return f"window must be one of {', '.join(windows)}; got {window!r}"
    if snapshot is None:
        return "no evaluation has run yet; this page fills in after the first evaluation interval"
    stats = snapshot.for_model(model)
    if not stats:
        return f"no data for model {model!r} in the latest evaluation"
    if not any(s.segment == segment for s in stats):
        return f"model {model!r} has no segment {segment!r} in the latest evaluation"
    return None


@router.get("/reports/{calibrator_id}", response_class=HTMLResponse)
def report_page(calibrator_id: CalibratorId, ctx: ContextDep, request: Request) -> Response:
    if (refused := _gate(ctx, request)) is not None:
        return refused
    with ctx.engine.connect().execution_options(**READ_ONLY) as conn:
        found = load_report(conn, calibrator_id)
    now = ctx.clock()
    if found is None:
        message = f"no report for calibrator {calibrator_id}"
        return render(request, "error.html", 404, title="Not found", message=message, now=now)
    report, _ = found
    chart = _charts(request).get(("report", calibrator_id), lambda: report_svg(report))
    return render(
        request, "report.html", report=report, calibrator_id=calibrator_id, chart=Markup(chart),  # noqa: S704
        advice=words.report_advice(report, calibrator_id), moves=threshold_moves(report), now=now,
        auth=ctx.auth.enabled,
    )  # fmt: skip


@router.get("/login", response_class=HTMLResponse)
def login_form(
    ctx: ContextDep, request: Request, next: str | None = Query(None, max_length=2048)
) -> Response:
    return render(request, "login.html", target=session.safe_next(next), message=None, now=ctx.clock(),
                  auth=False, tokens=ctx.auth.enabled)  # fmt: skip


@router.post("/login", response_class=HTMLResponse)
async def login(ctx: ContextDep, request: Request) -> Response:
    if request.headers.get("sec-fetch-site") == "cross-site":  # a login forced by another site
        message = "sign in from calmon's own page"
        return render(request, "error.html", 403, title="Not allowed", message=message)
    form = await session.read_login_form(request)
    if form is None:
        message = "send the sign-in form"
        return render(request, "login.html", 400, target="/", message=message, tokens=ctx.auth.enabled)
    token, target = form
    if not ctx.auth.enabled:
        return RedirectResponse(session.base_of(request) + target, status_code=303)
    try:
        session.check(ctx.auth, token)
    except AuthError as exc:
        return render(request, "login.html", exc.status, target=target, message=exc.message, tokens=True)
    response = RedirectResponse(session.base_of(request) + target, status_code=303)
    session.set_session(response, token, secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse(session.base_of(request) + "/login", status_code=303)
    response.delete_cookie(session.COOKIE, path="/", httponly=True, samesite="strict")
    return response


STATIC = {  # the only assets: read once from the package, served from here
    name: (resources.files("monitor.web").joinpath(f"static/{name}").read_text(), media)
    for name, media in (("calmon.css", "text/css"), ("favicon.svg", "image/svg+xml"))
}


@router.get("/static/{name}")
def static(name: str, request: Request) -> Response:
    if name not in STATIC:
        return render(request, "error.html", 404, title="Not found", message=f"no asset {name!r}")
    body, media = STATIC[name]
    return Response(body, media_type=media, headers={"Cache-Control": "max-age=3600"})
