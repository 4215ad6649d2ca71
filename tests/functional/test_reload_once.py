"""One change is one reload, however it is noticed: an operator who edits the policy and
sends SIGHUP gets one reload, not a second when the watch finds the same change."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.conftest import Upstream
from tests.factories import IdentityProvider, rsa_key
from tests.metrics_parse import scrape
from tests.procs import running_gateway
from tests.rawhttp import get, raw_request

# The reload's key fetch takes this long: longer than the watch needs to notice the
# change (a poll each second, then 0.25 s to settle), so it notices it mid-reload.
SLOW_KEYS = 2.5


async def test_an_edit_then_sighup_is_reloaded_once(tmp_path: Path, upstream: Upstream) -> None:
    idp = IdentityProvider(keys=[rsa_key("k1")])
    await idp.start()
    try:
        providers = f"""\
providers:
  corp:
    issuer: "{idp.issuer}"
    audiences: [api]
    algorithms: [RS256]
    keys: [{{jwks_url: "{idp.url}/jwks"}}]
"""
        routes = f'- {{name: a, match: {{prefix: /a}}, upstream: "{upstream.url}", auth: {{any_of: [corp]}}}}\n'
        async with running_gateway(tmp_path, routes, providers) as gw:
            assert idp.jwks_hits == 1
            idp.hang = SLOW_KEYS
            config = tmp_path / "gateway.yaml"
            added = f'  - {{name: b, match: {{prefix: /b}}, upstream: "{upstream.url}", auth: public}}\n'
            config.write_text(config.read_text() + added)
            gw.proc.send_signal(signal.SIGHUP)
            for _ in range(200):
                if (await raw_request(gw.port, get("/b"))).status == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the new route never came")
            # Long enough for a second reload to have fetched the keys again.
            await asyncio.sleep(2.0)
            assert idp.jwks_hits == 2
            metrics = await scrape(gw.admin_port)
            assert metrics.get("gateway_config_reloads_total", result="success") == 1
            assert metrics.get("gateway_config_reloads_total", result="failure") == 0
    finally:
        await idp.close()
