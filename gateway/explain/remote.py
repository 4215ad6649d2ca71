"""Remote key sets for `gateway explain`: which a token needs, and one fetch of each when asked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from multidict import CIMultiDictProxy

from gateway.app import client_session
from gateway.auth.extract import extract_token
from gateway.auth.jws import parse_jws
from gateway.auth.requirement import TokenRequirement
from gateway.auth.verifier import ProviderVerifier
from gateway.errors import Reason
from gateway.explain.report import Explanation
from gateway.keys.provider_keys import ProviderKeys
from gateway.keys.sources import RemoteJwks


def needs_remote_keys(
    auth: TokenRequirement, headers: CIMultiDictProxy[str], query: str, max_bytes: int
) -> list[ProviderVerifier]:
    """The providers that would verify this request's token but hold no keys yet
    (remote, not fetched). Any earlier refusal (no token, a malformed one, an unknown
    issuer) is left for `admit` to give."""
    found = extract_token(headers, query, allow_query=auth.allow_query_token, max_bytes=max_bytes)
    if isinstance(found, Reason) or found.token is None:
        return []
    jws = parse_jws(found.token)
    if isinstance(jws, Reason):
        return []
    chosen = auth.verifiers_for(jws)
    if isinstance(chosen, Reason):
        return []
    return [v for v in chosen if not v.keys.ready]


class _Fetches:
    """A `KeyObserver` that sets `done` once `wanted` fetches were reported."""

    def __init__(self, wanted: int) -> None:
        self.done = asyncio.Event()
        self.wanted = wanted
        if wanted <= 0:
            self.done.set()

    def fetched(self, ok: bool) -> None:
        self.wanted -= 1
        if self.wanted <= 0:
            self.done.set()

    def keys(self, count: int, loaded: bool) -> None:
        return None


@contextlib.asynccontextmanager
async def fetched(verifiers: list[ProviderVerifier], out: Explanation) -> AsyncIterator[None]:
    """The remote key sources of `verifiers` started as a starting gateway starts them
    (one shared session, the same fetch code), and each first fetch awaited; stopped on
    exit. A failure is logged by the source itself (it names the URL and the cause)."""
    providers: list[ProviderKeys] = list({id(v.keys): v.keys for v in verifiers}.values())
    async with client_session() as session, contextlib.AsyncExitStack() as stack:
        for keys in providers:
            remote = [s for s in keys.sources if isinstance(s, RemoteJwks) and s.snapshot is None]
            observer = _Fetches(len(remote))
            await keys.start(session, observer)
            stack.push_async_callback(keys.stop)
            # Discovery and the JWKS each have this bound; one fetch is at most both.
            deadline = 2 * max((s.settings.fetch_timeout for s in remote), default=0.0) + 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(observer.done.wait(), deadline)
            if keys.ready:
                out.notes.append(f"keys of provider {keys.provider!r} fetched: {len(keys.snapshot)} key(s)")
            else:
                out.notes.append(f"keys of provider {keys.provider!r} could not be fetched (the log line says why)")
        yield
