"""A tiny upstream for `make run`: echoes what it received, so you can see the gateway work."""

from __future__ import annotations

from aiohttp import web


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "upstream": "demo",
            "method": request.method,
            "path": request.raw_path.partition("?")[0],
            "query": request.query_string,
            "headers": {k: v for k, v in request.headers.items() if k.lower().startswith("x-")},
            "body_bytes": len(body),
        }
    )


def demo_app() -> web.Application:
    """Answers every path and method with a JSON echo."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app
