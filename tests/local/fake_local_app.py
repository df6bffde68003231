"""A stand-in for ``atai_magics.local.app`` so the server lifecycle is testable on its own.

Served through the ``ATAI_LOCAL_APP="fake_local_app:create_app"`` testing hook of
``atai_magics.local.server``: Bearer auth and an empty ``GET /v0.5/batch/jobs``, plus a
``POST /v0.5/batch/jobs`` that counts the requests it really executed (faults must not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def create_app(home: Path, token: str, concurrency: int, faults: Any = None) -> Starlette:
    executed: list[str] = []

    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {token}"

    async def list_jobs(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"detail": "Invalid or missing API key"}, status_code=401)
        return JSONResponse({"total": 0, "offset": 0, "limit": 100, "jobs": []})

    async def create_job(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"detail": "Invalid or missing API key"}, status_code=401)
        executed.append(str(await request.body()))
        return JSONResponse({"executed": len(executed)}, status_code=201)

    app = Starlette(
        routes=[
            Route("/v0.5/batch/jobs", list_jobs, methods=["GET"]),
            Route("/v0.5/batch/jobs", create_job, methods=["POST"]),
        ]
    )
    app.state.executed = executed
    app.state.concurrency = concurrency
    app.state.faults = faults
    return app


def create_bare_app(home: Path, token: str, concurrency: int) -> Starlette:
    """An app without the jobs route: ``status`` must then report no counts, not fail."""
    return Starlette(routes=[])


def create_broken_app(home: Path, token: str, concurrency: int) -> Starlette:
    """An app that cannot be built: ``start`` must say so and show the server log."""
    raise RuntimeError("fake app refuses to start")
