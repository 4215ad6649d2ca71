"""Bodies stream through in both directions without growing the gateway's memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.procs import running_gateway

MiB = 1024 * 1024
SIZE = 1024 * MiB  # the issue's own figure: a 1 GiB body
CHUNK = 256 * 1024
# "A few MiB": allocator slack, socket buffers and aiohttp's read-ahead, not the body.
MAX_GROWTH_KIB = 16 * 1024


async def _upload(request: web.Request) -> web.Response:
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
    return web.json_response({"received": total})


async def _download(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Length": str(SIZE)})
    await resp.prepare(request)
    block = b"d" * CHUNK
    for _ in range(SIZE // CHUNK):
        await resp.write(block)
    await resp.write_eof()
    return resp


async def _body() -> AsyncIterator[bytes]:
    block = b"u" * CHUNK
    for _ in range(SIZE // CHUNK):
        yield block


async def test_one_gib_each_way_with_bounded_memory(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_post("/upload", _upload)
    app.router.add_get("/download", _download)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    try:
        async with (
            running_gateway(
                tmp_path,
                f"""
            - name: files
              match: {{prefix: /}}
              upstream: http://127.0.0.1:{upstream.port}
              auth: public
            """,
            ) as gw,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as client,
        ):
            # Warm up the pools so the baseline includes steady-state buffers.
            async with client.post(f"{gw.url}/upload", data=b"warm") as r:
                assert r.status == 200
            before = gw.rss_kib()

            async with client.post(f"{gw.url}/upload", data=_body()) as r:
                assert r.status == 200
                assert await r.json() == {"received": SIZE}
            after_upload = gw.rss_kib("VmHWM")

            received = 0
            async with client.get(f"{gw.url}/download") as r:
                assert r.status == 200
                async for chunk in r.content.iter_any():
                    received += len(chunk)
            assert received == SIZE
            after_download = gw.rss_kib("VmHWM")
    finally:
        await upstream.close()
    growth = max(after_upload, after_download) - before
    assert growth < MAX_GROWTH_KIB, f"gateway peak RSS grew {growth} KiB while streaming 1 GiB each way"
