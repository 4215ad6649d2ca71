"""Where keys come from, and how each source keeps its snapshot fresh.

Every source holds an immutable `KeySet` (or None before its first load) that is swapped
atomically. Files are polled off the event loop; remote key sets are fetched with the
shared aiohttp session, refreshed on a timer, and refetched on an unknown `kid` at most
once per cooldown, with concurrent misses sharing that one fetch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from gateway.filestamp import file_stamp
from gateway.keys import fetcherrors
from gateway.keys.keyset import KeySet, UnusableKeyError, VerifyKey, from_jwks_bytes, from_pem
from gateway.limits import MAX_KEY_FILE_BYTES, read_bounded
from gateway.obs.redact import Redactor

log = logging.getLogger("gateway.keys")
_REDACT = Redactor()

FILE_POLL_SECONDS = 2.0


class KeySource(Protocol):
    """What a provider needs from each of its key sources."""

    label: str
    snapshot: KeySet | None

    async def start(
        self, session: aiohttp.ClientSession, on_change: Callable[[bool], None], on_fetch: Callable[[bool], None]
    ) -> None:
        """Begin keeping fresh. `on_change(loaded)` after each new snapshot (loaded=False
        when keys were dropped as stale); `on_fetch(ok)` after each remote fetch."""

    async def stop(self) -> None: ...

    async def refresh_for_unknown_kid(self) -> bool: ...


class StaticKeys:
    """Keys known at load time (an HMAC secret): never change while running."""

    def __init__(self, label: str, keys: list[VerifyKey]) -> None:
        self.label = label
        self.snapshot: KeySet | None = KeySet.of(keys)

    async def start(
        self, session: aiohttp.ClientSession, on_change: Callable[[bool], None], on_fetch: Callable[[bool], None]
    ) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def refresh_for_unknown_kid(self) -> bool:
        return False


def parse_key_file(data: bytes, path: str, kind: str, *, allow_empty: bool = False) -> list[VerifyKey]:
    """Parse a PEM or JWK/JWKS file's bytes; raise UnusableKeyError (with no key material)
    when unusable.

    `allow_empty`: an empty key set is valid (all keys retired at runtime: refuse every
    token rather than keep trusting retired keys)."""
    if kind == "pem":
        return [from_pem(data)]
    parsed = from_jwks_bytes(data, allow_oct=True)
    if parsed.problems:
        raise UnusableKeyError("; ".join(parsed.problems))
    if not parsed.keys and not allow_empty:
        detail = f" ({'; '.join(parsed.skipped)})" if parsed.skipped else ""
        raise UnusableKeyError(f"no signature verification keys in the file{detail}")
    for note in parsed.skipped:
        log.info("key file %s: skipped %s", path, note)
    return parsed.keys


class FileKeys:
    """A PEM or JWKS file, loaded at start and re-read when it changes (key rotation)."""

    def __init__(self, path: str, kind: str, keys: list[VerifyKey], data: bytes, *, read_now: bool = True) -> None:
        """`keys` were parsed from `data`. `read_now`: `data` is what the file holds now;
        False when it came from a policy validated earlier (a worker compiles the
        supervisor's copy): `start` then reads the file before the worker serves, and
        takes what it holds, as the running workers did when it changed (a key retired
        since is not trusted again). If the file is there but unusable, this source
        trusts no key until it is fixed: the copy may hold keys the running workers have
        since dropped, and which is older cannot be told. If it is gone, the copy's keys
        stay, as the running workers keep theirs when a file goes."""
        self.label = f"{kind} file {path}"
        self._path = path
        self._kind = kind
        self.snapshot: KeySet | None = KeySet.of(keys)
        self._data = data
        self._stamp = file_stamp(self._path) if read_now else None
        self._task: asyncio.Task[None] | None = None

    async def start(
        self, session: aiohttp.ClientSession, on_change: Callable[[bool], None], on_fetch: Callable[[bool], None]
    ) -> None:
        if self._stamp is None:
            stamp = await asyncio.to_thread(file_stamp, self._path)
            if stamp is None:
                # Gone (a ConfigMap version the kubelet has deleted since a refused
                # reload): the running workers keep their keys when a file goes, and
                # this one starts with the copy, which is what they had then.
                log.warning("key file %s is gone: this worker starts with the policy's copy of its keys", self._path)
            elif not await self._read(stamp, on_change, "its keys are not trusted here until it is fixed"):
                self.snapshot = None
                on_change(False)
        self._task = asyncio.create_task(self._watch(on_change), name=f"watch {self.label}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def refresh_for_unknown_kid(self) -> bool:
        return False

    async def _watch(self, on_change: Callable[[bool], None]) -> None:
        while True:
            await asyncio.sleep(FILE_POLL_SECONDS)
            stamp = await asyncio.to_thread(file_stamp, self._path)
            if stamp == self._stamp or stamp is None:
                continue
            await self._read(stamp, on_change, "keeping the last good keys")

    async def _read(self, stamp: tuple[int, int, int] | None, on_change: Callable[[bool], None], unusable: str) -> bool:
        """Take what the file holds (stamped `stamp` just before), unless it is unusable
        (then False)."""
        self._stamp = stamp
        try:
            data = await asyncio.to_thread(read_bounded, self._path, MAX_KEY_FILE_BYTES)
            if data == self._data and self.snapshot is not None:
                return True  # rewritten the same: the keys, and what was verified with them, stay
            keys = await asyncio.to_thread(parse_key_file, data, self._path, self._kind, allow_empty=True)
        except (OSError, UnusableKeyError, RecursionError) as exc:
            # Loud, and the last good keys stay in force.
            log.error("key file %s is unusable (%s): %s", self._path, exc, unusable)
            return False
        self._data = data
        self.snapshot = KeySet.of(keys)
        if keys:
            log.info("reloaded %d key(s) from %s", len(keys), self._path)
        else:
            log.warning("%s now holds no keys: every token of this provider is refused", self._path)
        on_change(True)
        return True


def insecure_url(url: str, allow_insecure_http: bool) -> str | None:
    """Why `url` may not be fetched, or None. Plain http only to loopback or by opt-in."""
    shown = _REDACT.url(url)
    try:
        parsed = URL(url)
        parsed.port  # noqa: B018 - validates the port (yarl raises ValueError when out of range)
    except (ValueError, TypeError):
        return f"not a URL: {shown!r}"
    if parsed.scheme == "https" and parsed.host:
        return None
    if parsed.scheme != "http" or not parsed.host:
        return f"not an http(s) URL: {shown!r}"
    if allow_insecure_http or parsed.host == "localhost":
        return None
    try:
        if ipaddress.ip_address(parsed.host).is_loopback:
            return None
    except ValueError:
        pass
    return f"plain http to a non-loopback host: {shown!r} (expected https, or remote.allow_insecure_http: true)"


_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-cache|no-store)\b", re.IGNORECASE)


def cache_lifetime(cache_control: list[str]) -> float | None:
    """Seconds from `Cache-Control`, or None when it says nothing usable."""
    value = ", ".join(cache_control)
    if _NO_CACHE.search(value):
        return 0.0
    m = _MAX_AGE.search(value)
    return float(m.group(1)) if m else None


class FetchError(Exception):
    """A remote key fetch failed; the message is safe to log."""


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    refresh_interval: float
    min_refresh: float
    max_refresh: float
    unknown_kid_cooldown: float
    retry_interval: float
    max_stale: float
    fetch_timeout: float
    max_bytes: int
    allow_insecure_http: bool


class RemoteJwks:
    """A JWKS URL, given directly or found by OIDC discovery from the issuer."""

    def __init__(self, provider: str, settings: RemoteSettings, *, jwks_url: str = "", issuer: str = "") -> None:
        # Labels are logged: credentials or keys in a URL are redacted.
        self.label = f"jwks_url {_REDACT.url(jwks_url)}" if jwks_url else f"oidc_discovery {_REDACT.url(issuer)}"
        self.provider = provider
        self.snapshot: KeySet | None = None
        self.settings = settings
        self.fetches = 0  # attempts, for operators and tests
        self.last_success = 0.0  # wall clock of the last good fetch
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._session: aiohttp.ClientSession | None = None
        self._on_change: Callable[[bool], None] = lambda loaded: None
        self._on_fetch: Callable[[bool], None] = lambda ok: None
        self._inflight: asyncio.Future[float | None] | None = None
        self._last_kid_refetch = -1e18
        self._last_success_mono = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(
        self, session: aiohttp.ClientSession, on_change: Callable[[bool], None], on_fetch: Callable[[bool], None]
    ) -> None:
        self._session = session
        self._on_change = on_change
        self._on_fetch = on_fetch
        self._task = asyncio.create_task(self._run(), name=f"refresh {self.label}")

    async def stop(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def refresh_for_unknown_kid(self) -> bool:
        """Refetch because a token named a kid we lack. True if a fetch was made or joined."""
        if self._inflight is None:
            # The cooldown counts only kid-triggered fetches: a scheduled refresh a moment
            # ago must not delay picking up a key the IdP has just started to use.
            now = time.monotonic()
            if now - self._last_kid_refetch < self.settings.unknown_kid_cooldown:
                return False
            self._last_kid_refetch = now
        fetch = self._attempt()
        try:
            await asyncio.shield(fetch)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if fetch.cancelled() and task is not None and not task.cancelling():
                # The source was stopped (policy reload) under us: answer with the
                # keys we have rather than dropping the request.
                return False
            raise
        return True

    def _attempt(self) -> asyncio.Future[float | None]:
        """Start a fetch, or join the one in flight (single-flight)."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch_once())
            self._inflight.add_done_callback(self._clear_inflight)
        return self._inflight

    def _clear_inflight(self, _: object) -> None:
        self._inflight = None

    async def _fetch_once(self) -> float | None:
        """One fetch. Returns the server's cache lifetime; never raises (logs instead)."""
        self.fetches += 1
        # One deadline for the whole fetch: with discovery it is two requests, and a
        # request waiting on a refetch (unknown kid) must wait at most `fetch_timeout`,
        # as documented, not that for each of them.
        deadline = time.monotonic() + self.settings.fetch_timeout
        try:
            url = self._jwks_url or await self._discover(deadline)
            body, lifetime = await self._get(url, deadline)
            try:
                parsed = from_jwks_bytes(body, allow_oct=False)
            except UnusableKeyError as exc:
                raise FetchError(f"{_REDACT.url(url)}: {exc}") from None
            keys, problems = parsed.keys, parsed.problems
            if not keys:
                why = problems + parsed.skipped
                detail = f": {'; '.join(why)}" if why else ""
                raise FetchError(f"{_REDACT.url(url)}: no usable signature keys{detail}")
        except (FetchError, UnusableKeyError) as exc:
            log.warning("provider %s: key fetch from %s failed: %s", self.provider, self.label, exc)
            self._on_fetch(False)
            return None
        except Exception as exc:
            # Whatever an IdP sends must not end the refresh loop: log the type (the
            # message could quote the response) and retry like any failed fetch.
            log.warning("provider %s: key fetch from %s failed: %s", self.provider, self.label, type(exc).__name__)
            self._on_fetch(False)
            return None
        for problem in problems:
            log.warning("provider %s: skipped a key from %s: %s", self.provider, self.label, problem)
        changed = self.snapshot is None or set(self.snapshot.by_kid) != {k.kid for k in keys if k.kid}
        if changed:
            # Keys for other purposes (encryption) are normal in an IdP's set: said once
            # per change of the set, not on every refresh.
            for note in parsed.skipped:
                log.info("provider %s: skipped a key from %s: %s", self.provider, self.label, note)
        self.snapshot = KeySet.of(keys)
        self.last_success = time.time()
        self._last_success_mono = time.monotonic()
        if changed:
            log.info("provider %s: %d key(s) loaded from %s", self.provider, len(keys), self.label)
        self._on_fetch(True)
        self._on_change(True)
        return lifetime if lifetime is not None else -1.0

    async def _discover(self, deadline: float) -> str:
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        body, _ = await self._get(url, deadline)
        shown = _REDACT.url(url)
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise FetchError(f"{shown}: discovery document is not JSON") from None
        if not isinstance(doc, dict) or doc.get("issuer") != self._issuer:
            # OIDC Discovery §4.3: the document must name exactly the issuer we asked.
            raise FetchError(f"{shown}: discovery document names a different issuer")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise FetchError(f"{shown}: discovery document has no jwks_uri")
        problem = insecure_url(jwks_uri, self.settings.allow_insecure_http)
        if problem:
            raise FetchError(f"{shown}: discovered jwks_uri refused: {problem}")
        return jwks_uri

    async def _get(self, url: str, deadline: float) -> tuple[bytes, float | None]:
        """GET `url`; a failure is a FetchError naming the URL (redacted) and the cause."""
        try:
            return await self._get_body(url, deadline)
        except FetchError as exc:
            raise FetchError(f"GET {_REDACT.url(url)}: {exc}") from None

    async def _get_body(self, url: str, deadline: float) -> tuple[bytes, float | None]:
        assert self._session is not None
        limit = self.settings.max_bytes
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            async with self._session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=left),
                allow_redirects=False,
                # The shared session does not decompress: ask for plain bytes.
                headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            ) as resp:
                if resp.status != 200:
                    raise FetchError(f"HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > limit:
                    raise FetchError(f"response larger than {limit} bytes")
                body = bytearray()
                async for chunk in resp.content.iter_any():
                    body += chunk
                    if len(body) > limit:
                        raise FetchError(f"response larger than {limit} bytes")
                return bytes(body), cache_lifetime(resp.headers.getall("Cache-Control", []))
        except TimeoutError:
            raise FetchError(f"no answer within {self.settings.fetch_timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise FetchError(fetcherrors.describe(exc)) from None

    async def _run(self) -> None:
        while True:
            try:
                await self._refresh_forever()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not stop refreshing for good
                log.error("provider %s: refresh loop error %s; restarting it", self.provider, type(exc).__name__)
                await asyncio.sleep(self.settings.retry_interval)

    async def _refresh_forever(self) -> None:
        s = self.settings
        failures = 0
        while True:
            lifetime = await asyncio.shield(self._attempt())
            if lifetime is not None:
                failures = 0
                wanted = s.refresh_interval if lifetime < 0 else lifetime
                delay = min(max(wanted, s.min_refresh), s.max_refresh)
            else:
                failures += 1
                delay = min(s.retry_interval * 2 ** min(failures - 1, 10), s.refresh_interval)
                if self.snapshot is None:
                    # Without keys the provider refuses everything: keep trying often.
                    delay = min(delay, max(s.retry_interval, 30.0))
                if self.snapshot is not None:
                    stale_for = time.monotonic() - self._last_success_mono
                    if stale_for > s.max_stale:
                        log.error(
                            "provider %s: keys from %s are %.0fs old (max_stale %gs): dropped",
                            self.provider,
                            self.label,
                            stale_for,
                            s.max_stale,
                        )
                        self.snapshot = None
                        self._on_change(False)
                    else:
                        delay = min(delay, s.max_stale - stale_for + 0.01)
            await asyncio.sleep(delay)
