"""Open WebSockets across a policy reload: each is authorized again by the new policy,
as if its handshake arrived now, and ended (Close 1008, `policy_changed`) if refused.
Real gateway, real sockets, real tokens; the reload is `Gateway.reload()`, whose commit
is the one a worker runs (test_websocket_workers.py covers SIGHUP with workers)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.proxy import handler
from tests.conftest import GatewayFactory
from tests.factories import IdentityProvider, SigningKey, claims, sign
from tests.functional.auth_env import HMAC_ISSUER, HMAC_SECRET
from tests.functional.test_websocket import WsUpstream, access_records, connect, until, url

pytestmark = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])

OTHER_ISSUER = "https://other.test"
OTHER_SECRET = b"another-secret-another-secret-another-secret"


U = TypeVar("U", bound=WsUpstream)


async def _serve(up: U) -> U:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    up.server = TestServer(app, host="127.0.0.1")
    await up.server.start_server()
    return up


@dataclass
class Gated(WsUpstream):
    """The echo upstream; on `/slow` it answers a handshake only once `gate` is set."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/slow"):
            self.seen.append((request.raw_path, dict(request.headers)))
            await self.gate.wait()
        return await super().handle(request)


@pytest.fixture
async def ws_upstream() -> AsyncIterator[Gated]:
    up = await _serve(Gated())
    yield up
    assert up.server is not None
    await up.server.close()


def policy(
    upstream: str,
    ws: str = "auth: {any_of: [shared]}",
    keep: str = "auth: {any_of: [shared]}",
    open_: str = "auth: public",
    idle: str = "30s",
    ws_upstream: str | None = None,
) -> str:
    """Routes `ws`, `keep` and `open` (all WebSocket routes) with their last keys; an
    argument None leaves that route out."""
    routes = [
        ("ws", ws, ws_upstream or upstream),
        ("keep", keep, upstream),
        ("open", open_, upstream),
    ]
    lines = "\n".join(
        f'  - {{name: {name}, match: {{prefix: /{name}}}, upstream: "{up}", websocket: true, {rest}}}'
        for name, rest, up in routes
        if rest is not None
    )
    return f"""\
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
server: {{websocket_idle_timeout: {idle}}}
providers:
  shared:
    issuer: {HMAC_ISSUER}
    audiences: [orders-api]
    algorithms: [HS256]
    leeway: 1s
    keys: [{{hmac_secret: {{env: GATEWAY_TEST_HMAC}}}}]
  other:
    issuer: {OTHER_ISSUER}
    audiences: [orders-api]
    algorithms: [HS256]
    keys: [{{hmac_secret: {{env: GATEWAY_TEST_OTHER}}}}]
routes:
{lines}
"""


Start = Callable[..., Awaitable[Gateway]]
Reload = Callable[..., Awaitable[None]]


@pytest.fixture
async def start(make_gateway: GatewayFactory, ws_upstream: WsUpstream, monkeypatch: pytest.MonkeyPatch) -> Start:
    monkeypatch.setenv("GATEWAY_TEST_HMAC", HMAC_SECRET.decode())
    monkeypatch.setenv("GATEWAY_TEST_OTHER", OTHER_SECRET.decode())

    async def start_(**kw: Any) -> Gateway:
        return await make_gateway(policy(ws_upstream.url, **kw))

    return start_


async def reload(gw: Gateway, upstream: WsUpstream, **kw: Any) -> None:
    await asyncio.to_thread(Path(gw.policy.source).write_text, policy(upstream.url, **kw))
    assert await gw.reload()


def token(scope: str | None = None, ttl: float = 300, secret: bytes = HMAC_SECRET, iss: str = HMAC_ISSUER) -> str:
    extra = {"scope": scope} if scope is not None else {}
    return sign(secret, claims(iss=iss, ttl=ttl, jti=os.urandom(8).hex(), **extra), alg="HS256")


async def echoes(ws: Any, text: str = "ping") -> None:
    await ws.send_str(text)
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.TEXT, msg
    assert msg.data == text


async def closed_with(ws: Any, code: int) -> None:
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE, msg
    assert msg.data == code


async def ended(caplog: pytest.LogCaptureFixture, route: str) -> str:
    await until(lambda: any(r["route"] == route for r in access_records(caplog)))
    [line] = [r for r in access_records(caplog) if r["route"] == route]
    assert line["status"] == 101
    return str(line["reason"])


async def test_a_reload_that_changes_nothing_it_needs_keeps_it_open_under_the_new_settings(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Admitted again, it goes on (and echoes), and takes the new policy's settings: the
    idle timeout shortened by the reload ends it, which the old one would not have."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    async with connect(gw, "/ws/echo", token()) as ws:
        await echoes(ws, "before")
        await reload(gw, ws_upstream, idle="1s")
        await echoes(ws, "after")
        await closed_with(ws, 1001)  # quiet for a second: the new idle timeout
    assert await ended(caplog, "ws") == "idle"


async def test_closed_with_1008_when_the_reload_removes_its_route_and_others_go_on(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    async with connect(gw, "/ws/echo", token()) as gone, connect(gw, "/keep/echo", token()) as kept:
        await echoes(gone)
        await echoes(kept)
        await reload(gw, ws_upstream, ws=None)
        await closed_with(gone, 1008)
        await echoes(kept, "still here")  # the same reload leaves it alone
        assert await ws_upstream.wait_ended() == 1008  # the upstream got a Close too
    assert await ended(caplog, "ws") == "policy_changed"
    assert await ended(caplog, "keep") == "client_closed"


async def test_closed_when_the_reload_requires_a_scope_its_token_lacks(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    async with connect(gw, "/ws/a", token()) as lacking, connect(gw, "/ws/b", token(scope="live:read")) as granted:
        await echoes(lacking)
        await echoes(granted)
        await reload(gw, ws_upstream, ws="auth: {any_of: [shared], scopes: [live:read]}")
        await closed_with(lacking, 1008)
        await echoes(granted, "granted")  # same route, a token with the scope
    await until(lambda: len(access_records(caplog)) == 2)
    assert sorted(r["reason"] for r in access_records(caplog)) == ["client_closed", "policy_changed"]


@pytest.mark.parametrize("how", ["its key is replaced", "its route takes another provider"])
async def test_closed_when_the_reload_drops_the_key_that_signed_its_token(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    other = token(secret=OTHER_SECRET, iss=OTHER_ISSUER)
    async with connect(gw, "/ws/echo", token()) as ws:
        await echoes(ws)
        if how == "its key is replaced":
            monkeypatch.setenv("GATEWAY_TEST_HMAC", "a-new-secret-a-new-secret-a-new-secret-x")
            await reload(gw, ws_upstream)
        else:
            await reload(gw, ws_upstream, ws="auth: {any_of: [other]}")
        await closed_with(ws, 1008)
    assert await ended(caplog, "ws") == "policy_changed"
    if how != "its key is replaced":
        async with connect(gw, "/ws/echo", other) as ws:  # the new provider's tokens are taken
            await echoes(ws)


async def test_a_public_route_that_becomes_protected_closes_its_connections(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    async with connect(gw, "/open/echo") as ws:
        await echoes(ws)
        await reload(gw, ws_upstream, open_="auth: {any_of: [shared]}")
        await closed_with(ws, 1008)  # it has no token to show
    assert await ended(caplog, "open") == "policy_changed"


async def test_an_admitted_connection_takes_its_new_routes_token_handling(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """The token is checked as of the handshake: a connection its route lets outlive
    its token survives a reload that keeps that. A reload that turns
    `websocket_close_on_expiry` on ends it as at its expiry (`token_expired`, not a
    refusal: the token was good when it came)."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    outlive = "websocket_close_on_expiry: false, auth: {any_of: [shared]}"
    gw = await start(keep=outlive)
    async with connect(gw, "/keep/echo", token(ttl=1)) as ws:
        await asyncio.sleep(2.2)
        await echoes(ws, "outlived its token")
        await reload(gw, ws_upstream, keep=outlive, idle="20s")
        await echoes(ws, "and a reload")
        await reload(gw, ws_upstream)
        await closed_with(ws, 1008)
    assert await ended(caplog, "keep") == "token_expired"


async def test_a_route_moved_to_another_upstream_closes_with_1001(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    moved = await _serve(WsUpstream())
    try:
        async with connect(gw, "/ws/echo", token()) as ws, connect(gw, "/keep/echo", token()) as kept:
            await echoes(ws)
            await reload(gw, ws_upstream, ws_upstream=moved.url)
            await closed_with(ws, 1001)  # going away: a new handshake reaches the new upstream
            await echoes(kept)
        async with connect(gw, "/ws/echo", token()) as ws:
            await echoes(ws)
        assert [path for path, _ in moved.seen] == ["/ws/echo"]
        await until(lambda: len(access_records(caplog)) == 3)
        reasons = [(r["route"], r["reason"]) for r in access_records(caplog)]
        assert reasons == [("ws", "upstream_changed"), ("keep", "client_closed"), ("ws", "client_closed")]
    finally:
        assert moved.server is not None
        await moved.server.close()


async def test_a_failing_recheck_closes_the_connection_and_the_reload_still_commits(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()

    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug in the re-check")

    async with connect(gw, "/ws/echo", token()) as ws:
        await echoes(ws)
        monkeypatch.setattr(handler, "readmit", broken)
        await reload(gw, ws_upstream, idle="20s")  # committed all the same
        await closed_with(ws, 1008)  # fail closed
    assert gw.policy.websocket_idle_timeout == 20
    assert await ended(caplog, "ws") == "policy_changed"


async def test_a_handshake_the_upstream_answers_after_a_reload_is_checked_by_the_new_policy(
    start: Start, ws_upstream: Gated
) -> None:
    """Admitted by the old policy, answered 101 by the upstream only after the reload
    committed: the re-check of open connections could not see it; it is refused as a
    new handshake would be (a 404: its route is gone) instead of relayed."""
    gw = await start()

    async def handshake() -> int:
        async with aiohttp.ClientSession() as session:
            try:
                ws = await session.ws_connect(url(gw, "/ws/slow"), headers={"Authorization": f"Bearer {token()}"})
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
            await ws.close()
            return 101

    asking = asyncio.ensure_future(handshake())
    try:
        await until(lambda: bool(ws_upstream.seen))  # the upstream holds its answer
        await reload(gw, ws_upstream, ws=None)
        ws_upstream.gate.set()
        assert await asyncio.wait_for(asking, 5) == 404
    finally:
        asking.cancel()


async def _slow_handshake(gw: Gateway) -> int:
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url(gw, "/ws/slow"), headers={"Authorization": f"Bearer {token()}"})
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


async def test_a_recheck_that_fails_during_a_handshake_closes_the_upstream_too(
    start: Start, ws_upstream: Gated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-check of a handshake answered after a reload raises (a bug in the new
    policy's checks): the client is refused, and the upstream connection that already
    said 101 is closed, not left open with its WebSocket (found by review)."""
    gw = await start()
    asking = asyncio.ensure_future(_slow_handshake(gw))
    try:
        await until(lambda: bool(ws_upstream.seen))
        await reload(gw, ws_upstream, idle="20s")

        def broken(*_: Any) -> Any:
            raise RuntimeError("a bug in the re-check")

        monkeypatch.setattr(handler, "readmit", broken)
        ws_upstream.gate.set()
        assert await asyncio.wait_for(asking, 5) == 500
        await asyncio.wait_for(ws_upstream.ended_event.wait(), 3)
    finally:
        asking.cancel()


async def test_two_reloads_while_a_handshake_waits_are_judged_by_the_last(start: Start, ws_upstream: Gated) -> None:
    """The route dropped, then back with a scope the token lacks: the handshake the
    upstream answers after both is refused by the policy in force (review)."""
    gw = await start()
    asking = asyncio.ensure_future(_slow_handshake(gw))
    try:
        await until(lambda: bool(ws_upstream.seen))
        await reload(gw, ws_upstream, ws=None)
        await reload(gw, ws_upstream, ws="auth: {any_of: [shared], scopes: [admin]}")
        ws_upstream.gate.set()
        assert await asyncio.wait_for(asking, 5) == 403
    finally:
        asking.cancel()


async def test_a_key_gone_from_the_jwks_closes_its_connections_without_a_fetch_per_connection(
    make_gateway: GatewayFactory, ws_upstream: WsUpstream, idp: IdentityProvider, rsa: SigningKey, ec: SigningKey
) -> None:
    """The re-check verifies with the keys the new policy's prepare fetched: a kid it
    lacks is refused there and then, never refetched (one fetch per reload, not one per
    connection)."""
    text = f"""
    providers:
      corp:
        issuer: "{idp.issuer}"
        audiences: [orders-api]
        algorithms: [RS256, ES256]
        keys: [{{jwks_url: "{idp.url}/jwks"}}]
    routes:
      - {{name: ws, match: {{prefix: /ws}}, upstream: "{ws_upstream.url}", websocket: true, auth: {{any_of: [corp]}}}}
    """
    gw = await make_gateway(text)
    await until(lambda: not gw.not_ready())
    old = [sign(rsa, claims(iss=idp.issuer)) for _ in range(3)]
    async with (
        connect(gw, "/ws/1", old[0]) as a,
        connect(gw, "/ws/2", old[1]) as b,
        connect(gw, "/ws/3", old[2]) as c,
        connect(gw, "/ws/4", sign(ec, claims(iss=idp.issuer))) as kept,
    ):
        idp.keys = [ec]  # the RSA key is retired
        hits = idp.jwks_hits
        assert await gw.reload()
        for ws in (a, b, c):
            await closed_with(ws, 1008)
        await echoes(kept)
        await asyncio.sleep(0.2)  # a refetch would have reached the IdP by now
        assert idp.jwks_hits == hits + 1  # the new policy's own fetch, in prepare
