"""Builds and runs the listeners: the public proxy and the admin endpoints."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.admin import admin_app
from gateway.demo import demo_app
from gateway.obs.metrics import Metrics
from gateway.policy import ConfigError, load_policy
from gateway.policy.compile import CompiledPolicy
from gateway.policy.model import Listen
from gateway.proxy.coalesce import Coalescer
from gateway.proxy.downstream import Server
from gateway.proxy.handler import HandlerSettings, ProxyHandler, Runtime
from gateway.proxy.headers import ForwardedFor
from gateway.proxy.listener import Listener, bind, port_of
from gateway.proxy.server import make_server
from gateway.proxy.upstream import UpstreamPool

log = logging.getLogger("gateway")


def client_session() -> aiohttp.ClientSession:
    """The session for key fetches (JWKS, OIDC discovery): no cookies, no environment."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0, enable_cleanup_closed=True),
        # SECURITY: the default jar would replay one client's upstream Set-Cookie to the next.
        cookie_jar=aiohttp.DummyCookieJar(),
        # The body is relayed as sent, so its Content-Encoding stays true.
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
        # Never let the gateway's own environment (HTTP_PROXY, .netrc) alter upstream calls.
        trust_env=False,
        # No aiohttp default headers (Accept, User-Agent, Accept-Encoding): the upstream
        # sees what the client sent. Set once here rather than on every request.
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    )


def handler_settings(policy: CompiledPolicy) -> HandlerSettings:
    """The handler's process-wide values, from the policy."""
    return HandlerSettings(
        forwarded=ForwardedFor(policy.trusted_proxies),
        identity=policy.identity,
        realm=policy.realm,
        max_token_bytes=policy.max_token_bytes,
        upstream_keepalive=policy.upstream_keepalive,
        request_ids=policy.request_ids,
        client_subject_header=policy.tls.settings.client_subject_header if policy.tls is not None else None,
        websocket_idle_timeout=policy.websocket_idle_timeout,
        max_websockets=policy.max_websockets,
        websocket_client_frame_rate=policy.websocket_client_frame_rate,
    )


@dataclass
class Gateway:
    """One process's gateway. `start()` binds the listeners; `stop()` drains and closes.

    A worker (runtime/worker.py) runs one with the supervisor's listening socket and no
    admin listener: the supervisor serves /metrics and the health checks for all."""

    policy: CompiledPolicy
    demo_upstream: Listen | None = None
    listen_socket: socket.socket | None = None
    admin: bool = True
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.listening = False
        self._runners: list[web.BaseRunner] = []
        self._session: aiohttp.ClientSession | None = None
        self._pool: UpstreamPool | None = None
        self._handler: ProxyHandler | None = None
        self._server: Server | None = None
        self._listener: Listener | None = None
        self._reload_lock = asyncio.Lock()
        self.public_port = 0
        self.admin_port = 0

    def _runtime(self, policy: CompiledPolicy) -> Runtime:
        return Runtime.build(
            policy.table,
            handler_settings(policy),
            policy.access_log,
            self.metrics,
            policy.published,
            cache_entries=policy.cache_entries,
            cache_ttl=policy.cache_ttl,
        )

    async def _start_providers(self, policy: CompiledPolicy) -> None:
        assert self._session is not None
        for provider in policy.providers:
            # Fetches start now, in the background; /readyz says when every provider has keys.
            await provider.start(self._session, self.metrics.provider(provider.provider))
        for revocations in policy.revocations:
            revocations.start(self.metrics.revocations(revocations.provider))

    async def _stop_providers(self, policy: CompiledPolicy) -> None:
        for provider in policy.providers:
            await provider.stop()
        for revocations in policy.revocations:
            await revocations.stop()

    async def start(self, accept: bool = True) -> None:
        """Bind (or take) the listeners and serve; with `accept` False, the public
        listener takes no connection until `accept()`: a worker replacing others waits
        for its keys before it takes a share of the traffic."""
        policy = self.policy
        if self.demo_upstream is not None:
            await self._serve(web.AppRunner(demo_app(), access_log=None), self.demo_upstream)
        self._session = client_session()
        await self._start_providers(policy)
        # One coalescer for both hops: client answers and upstream heads written in one
        # batch of the loop go out together (coalesce.py).
        coalescer = Coalescer()
        self._pool = UpstreamPool(coalescer)
        self._handler = ProxyHandler(self._runtime(policy), self._pool, self.metrics)
        self._handler.websockets.revocations = {w.provider: w for w in policy.revocations}
        self._server = make_server(
            self._handler, policy.limits, policy.keepalive_timeout, policy.send_timeout, coalescer
        )
        server = self._server
        self.metrics.client_connections.set_function(lambda: server.open)
        server.on_refused = self.metrics.connections_refused.inc
        server.on_unparseable = self._handler.unparseable
        sock = self.listen_socket or bind(policy.listen)
        # The bound port (differs from the configured one when that is 0, as in tests).
        self.public_port = port_of(sock)
        if policy.tls is not None:
            policy.tls.start(self.metrics.tls("proxy"))
        self._listener = Listener(sock, self._server, policy.tls, self._server.unstarted, self._server.full)
        if accept:
            self._listener.start()
        if self.admin:
            admin = web.AppRunner(admin_app(self), access_log=None, shutdown_timeout=1.0)
            self.admin_port = await self._serve(admin, policy.admin_listen)
        self.listening = True

    async def reload(self) -> bool:
        """Re-read the policy file and swap it in, or keep the running one (logged, counted).

        The new providers must have their keys before the swap, so a reload never turns
        a working route into 503s. Listen addresses only change on restart."""
        async with self._reload_lock:
            ok = await self._reload()
        self.metrics.config_reloads.labels("success" if ok else "failure").inc()
        return ok

    async def _reload(self) -> bool:
        old = self.policy
        try:
            new = await asyncio.to_thread(load_policy, old.source)
        except ConfigError as exc:
            log.error("reload refused; the running policy stays in force:\n%s", exc)
            return False
        except Exception as exc:  # a reload must never take the running gateway down
            log.error("reload refused (%s); the running policy stays in force", type(exc).__name__)
            return False
        problem = await self.prepare(new)
        if problem is not None:
            log.error("reload refused: %s; the running policy stays in force", problem)
            return False
        if (new.listen, new.admin_listen) != (old.listen, old.admin_listen):
            log.warning("listen addresses change only on restart; keeping %s and %s", old.listen, old.admin_listen)
        await self.commit(new)
        return True

    async def prepare(self, new: CompiledPolicy) -> str | None:
        """Start the new policy's key sources and wait until every provider has keys:
        None when it may be committed, else what is missing (its sources are stopped)."""
        deadline = time.monotonic() + new.reload_timeout
        try:
            await self._start_providers(new)
            while not all(p.ready for p in new.providers):
                if time.monotonic() > deadline:
                    missing = ", ".join(p.provider for p in new.providers if not p.ready)
                    await self._stop_providers(new)
                    return f"the new policy's providers have no keys ({missing})"
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            # Given up on (an abort): its key sources must not go on fetching.
            await self._stop_providers(new)
            raise
        return None

    async def abort(self, new: CompiledPolicy) -> None:
        """Undo a successful `prepare` that will not be committed."""
        await self._stop_providers(new)

    async def commit(self, new: CompiledPolicy) -> None:
        """Swap a prepared policy in: requests from now on use it. The listen addresses
        stay those the listeners were bound to."""
        old = self.policy
        new = dataclasses.replace(new, listen=old.listen, admin_listen=old.admin_listen)
        assert self._handler is not None
        self._handler.runtime = self._runtime(new)
        # Open WebSockets verified against the old lists watch the new ones from now on.
        self._handler.websockets.revocations = {w.provider: w for w in new.revocations}
        if self._server is not None:
            self._server.limits = new.limits  # for connections accepted from now on
        if new.tls is not None:
            new.tls.start(self.metrics.tls("proxy"))
        if self._listener is not None:
            self._listener.tls = new.tls  # for connections accepted from now on
        self.policy = new
        if old.tls is not None:
            await old.tls.stop()
        await self._stop_providers(old)
        # Open WebSockets were admitted by the old policy: the new one decides whether
        # they go on (by its prepared keys only; never a fetch per connection). Last, so
        # that a cancellation between its batches leaves no half-swapped policy.
        await self._handler.reauthorize_websockets()
        log.info("policy reloaded from %s (%d routes)", new.source, len(new.table.routes))

    def accept(self) -> None:
        if self._listener is not None:
            self._listener.start()

    async def health(self) -> dict[str, Any]:
        return {}

    async def waiting(self) -> list[str]:
        return self.not_ready()

    async def exposition(self) -> bytes:
        return self.metrics.exposition()

    def not_ready(self) -> list[str]:
        """What readiness waits for: the listeners, and keys for every provider."""
        waiting = [] if self.listening else ["listeners"]
        waiting += [f"keys of provider {p.provider!r}" for p in self.policy.providers if not p.ready]
        return waiting

    async def _serve(self, runner: web.BaseRunner, where: Listen) -> int:
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, where.host, where.port, reuse_address=True)
        await site.start()
        # The bound port (differs from the configured one when that is 0, as in tests).
        return int(runner.addresses[-1][1])

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to shutdown_timeout), close."""
        self.listening = False
        # Public listener first, so health checks keep answering while we drain.
        if self._listener is not None and self._server is not None:
            # Every connection accepted so far reaches our Server before the drain looks.
            await self._listener.close()
            self._listener = None
            await self._server.shutdown(self.policy.shutdown_timeout)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        await self._stop_providers(self.policy)
        if self.policy.tls is not None:
            await self.policy.tls.stop()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None
