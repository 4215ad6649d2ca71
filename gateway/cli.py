"""Command line: `gateway run | check | explain | schema`. The only module that decides exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence

from cryptography import x509
from pydantic import ValidationError

from gateway import __version__
from gateway.duration import format_duration
from gateway.explain import ExplainRequest, explain, render
from gateway.obs import processlog
from gateway.obs.access import LineWriter, set_sink
from gateway.policy import ConfigError, load_policy, reference
from gateway.policy.compile import CompiledPolicy
from gateway.policy.load import load_policy_linted
from gateway.policy.model import Listen, WorkerSetting, parse_workers
from gateway.policy.schema import policy_schema, schema_text
from gateway.runtime.cpus import available_cpus, cpu_budget
from gateway.runtime.supervisor import Overrides, Supervisor
from gateway.tls.terminator import TlsTerminator, describe
from gateway.tokens.cli import add_commands as add_token_commands

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_INVALID = 2
# `explain`: 0 forwarded (or answered by the gateway itself), 1 refused (as EXIT_RUNTIME:
# "it would not work"), 2 usage or policy errors, and 3 when the answer needs keys
# explain does not fetch unless asked (so a script cannot take "unknown" for "refused").
EXIT_REFUSED = 1
EXIT_UNDECIDED = 3

UNVERIFIED = (
    "upstream {} is not verified (upstream_tls insecure_skip_verify: true): anyone on the path "
    "to it can read and change what the gateway sends it, verified identity headers included"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Reverse-proxy authentication gateway.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="serve the policy",
        description="Serve the policy. SIGHUP reloads it; SIGTERM/SIGINT drain in-flight requests and exit 0.",
        epilog="example: gateway run --config config.example.yaml --demo-upstream",
    )
    run.add_argument("--config", required=True, metavar="FILE", help="policy file (YAML)")
    run.add_argument("--listen", metavar="HOST:PORT", help="override the policy's public listen address")
    run.add_argument("--admin-listen", metavar="HOST:PORT", help="override the policy's admin listen address")
    run.add_argument(
        "--demo-upstream",
        metavar="HOST:PORT",
        nargs="?",
        const="127.0.0.1:8081",
        help="also serve the built-in echo upstream (default 127.0.0.1:8081)",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the process's own log (info)",
    )
    run.add_argument(
        "--log-format",
        default="text",
        choices=processlog.FORMATS,
        help="the process's own log on stderr: text, or one JSON object per line (text)",
    )
    _add_workers(run, "worker processes, overriding server.workers")
    run.set_defaults(handler=_run)

    check = sub.add_parser(
        "check",
        help="validate a policy and print its route table",
        description="Validate a policy, print its route table, warn about likely mistakes. Exit 0 valid, 2 invalid.",
        epilog="example: gateway check --config config.example.yaml",
    )
    check.add_argument("--config", required=True, metavar="FILE", help="policy file (YAML)")
    _add_workers(check, "print the workers `run --workers` would start")
    check.set_defaults(handler=_check)

    explain = sub.add_parser(
        "explain",
        help="say what the gateway would do with one request, and why (starts nothing)",
        description="Walk one request through the policy as the gateway would: the canonical path, each "
        "route tried, the requirement, the verdict, and what the upstream would receive. Exit codes: 0 "
        "forwarded (or answered by the gateway), 1 refused, 2 usage or policy error, 3 undecided (the "
        "token needs remote keys: add --fetch-keys).",
        epilog="example: gateway explain --config policy.yaml -X POST -H 'Origin: https://app.test' "
        '--token "$TOKEN" https://api.example.com/orders/7',
    )
    explain.add_argument("--config", required=True, metavar="FILE", help="policy file (YAML)")
    explain.add_argument("-X", "--request", dest="method", default="GET", type=_method_arg, help="method (GET)")
    explain.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        default=[],
        type=_header_arg,
        metavar="'NAME: VALUE'",
        help="a request header, as the client sends it (repeat for more)",
    )
    explain.add_argument("--token", help="a bearer token, sent as 'Authorization: Bearer TOKEN' (never printed)")
    explain.add_argument(
        "--peer", metavar="IP", help="the client's address (decides server.trusted_proxies); default: unknown"
    )
    explain.add_argument(
        "--client-cert-subject",
        type=_subject_arg,
        metavar="RFC4514",
        help="the verified client certificate's subject, e.g. CN=billing,O=Acme; default: no certificate",
    )
    explain.add_argument(
        "--fetch-keys", action="store_true", help="fetch remote key sets (jwks_url, oidc_discovery) to verify"
    )
    explain.add_argument("--json", action="store_true", help="print JSON (README: 'gateway explain')")
    explain.add_argument("url", metavar="URL", help="http[s]://host[:port]/path?query, or /path?query with -H Host")
    explain.set_defaults(handler=_explain)

    schema = sub.add_parser(
        "schema",
        help="print the policy's JSON Schema (for editors)",
        description="Print the policy's JSON Schema, for editor completion and checking.",
        epilog="example: gateway schema > policy.schema.json",
    )
    schema.add_argument(
        "--update-docs",
        metavar="FILE",
        help="instead, render the key tables between FILE's `<!-- generated: ... -->` markers"
        " from the schema (e.g. docs/config.md)",
    )
    schema.set_defaults(handler=_schema)
    add_token_commands(sub)
    return parser


def _add_workers(parser: argparse.ArgumentParser, help_text: str) -> None:
    # None when not given: the policy's server.workers then applies.
    parser.add_argument("--workers", type=_workers_arg, metavar="N|auto", help=help_text)


def _workers_arg(text: str) -> WorkerSetting:
    try:
        return parse_workers(int(text) if re.fullmatch(r"[0-9]+", text) else text)
    except ValueError as exc:
        # argparse prints this after "argument --workers:" and exits 2.
        raise argparse.ArgumentTypeError(str(exc)) from None


_METHOD = re.compile(r"[A-Z]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token


def _method_arg(text: str) -> str:
    if _METHOD.fullmatch(text) is None:
        # RFC 9110 §9.1: methods are case-sensitive; `get` is not GET.
        raise argparse.ArgumentTypeError(f"not a method: {text!r} (expected upper case, e.g. GET)")
    return text


def _header_arg(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or _HEADER_NAME.fullmatch(name) is None:
        raise argparse.ArgumentTypeError("expected 'Name: value'")
    return name, value.strip(" \t")


def _subject_arg(text: str) -> str:
    try:
        # The form the handshake writes a certificate's subject in, as compile does for
        # a route's `client_cert.subjects`: spacing or escaping cannot make it miss.
        return x509.Name.from_rfc4514_string(text).rfc4514_string()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 4514 name: {text!r} (expected e.g. CN=billing,O=Acme)") from None


def _explain(args: argparse.Namespace) -> int:
    # Fetch failures are logged by the key sources (URL and cause): shown on stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="gateway: %(message)s")
    policy = _load(args.config)
    if policy is None:
        return EXIT_INVALID
    headers = list(args.headers)
    if args.token is not None:
        headers.append(("Authorization", f"Bearer {args.token}"))
    request = ExplainRequest(args.method, args.url, headers, args.peer, args.client_cert_subject)
    out = asyncio.run(explain(policy, request, fetch_keys=args.fetch_keys))
    print(json.dumps(out.to_json(), indent=2) if args.json else render(out))
    if not out.decided:
        return EXIT_UNDECIDED
    return EXIT_REFUSED if out.refused else EXIT_OK


def _describe_workers(policy: CompiledPolicy, override: WorkerSetting | None) -> str:
    """`2 (auto: 2 CPUs: affinity 4, cgroup quota 1.5)`, or `1`."""
    setting: WorkerSetting = override if override is not None else "auto" if policy.workers_auto else policy.workers
    if setting != "auto":
        return str(setting)
    # Read again rather than taken from the policy: the count and its reasons then come
    # from one reading, and `--workers auto` needs it anyway.
    budget = cpu_budget()
    return f"{budget.count} (auto: {budget.describe()})"


def _load(filename: str) -> CompiledPolicy | None:
    try:
        return load_policy(filename)
    except ConfigError as exc:
        print(f"gateway: invalid policy\n{exc}", file=sys.stderr)
        return None


def _describe_tls(tls: TlsTerminator) -> str:
    settings = tls.settings
    clients = f", client certificates {settings.client_auth}" if settings.client_auth else ""
    return f"{describe(tls.loaded)}, TLS {settings.min_version} or newer{clients}"


def _check(args: argparse.Namespace) -> int:
    try:
        policy, warnings = load_policy_linted(args.config)
    except ConfigError as exc:
        print(f"gateway: invalid policy\n{exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{policy.source}: valid, {len(policy.table.routes)} routes (first match wins)")
    print(f"workers: {_describe_workers(policy, args.workers)}")
    if policy.tls is not None:
        print(f"tls: {_describe_tls(policy.tls)}")
    rows = [("#", "name", "match", "upstream", "auth", "timeouts", "cors")]
    for r in policy.table.routes:
        rows.append(
            (
                str(r.index),
                r.name,
                r.describe_match(),
                f"{r.upstream}{'  (strip prefix)' if r.strip_prefix else ''}{'  (websocket)' if r.websocket else ''}",
                r.auth.describe()
                + (f" + client cert ({len(r.client_subjects)} subjects)" if r.client_subjects else ""),
                f"connect={format_duration(r.timeout.connect or 0)} read={format_duration(r.timeout.sock_read or 0)}",
                r.cors.describe() if r.cors is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for origin in policy.unverified_upstreams():
        print(f"warning: {UNVERIFIED.format(origin)}", file=sys.stderr)
    # Warnings, not errors: each can be meant, and `run` serves the policy as it is.
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    if args.update_docs is None:
        sys.stdout.write(schema_text())
        return EXIT_OK
    try:
        with open(args.update_docs, encoding="utf-8") as f:
            document = f.read()
        updated = reference.update(document, policy_schema())
    except (OSError, reference.ReferenceError) as exc:
        print(f"error: {args.update_docs}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if updated != document:
        with open(args.update_docs, "w", encoding="utf-8") as f:
            f.write(updated)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    """Operational logs go to stderr; the access log, one line per request, to stdout
    through a writer thread, so a slow stdout never blocks the event loop."""
    processlog.configure(args.log_level, args.log_format)
    writer = LineWriter(sys.stdout)
    set_sink(writer.write)
    try:
        return _serve(args, writer.write)
    finally:
        set_sink(None)
        writer.close()
        if writer.dropped:
            print(f"gateway: {writer.dropped} access log lines were dropped (stdout too slow)", file=sys.stderr)


def _serve(args: argparse.Namespace, write_access: Callable[[str], None]) -> int:
    try:
        policy = load_policy(args.config)
    except ConfigError as exc:
        print(f"gateway: invalid policy\n{exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        overrides = Overrides(
            listen=Listen.model_validate(args.listen) if args.listen else None,
            admin_listen=Listen.model_validate(args.admin_listen) if args.admin_listen else None,
            workers=available_cpus() if args.workers == "auto" else args.workers,
        )
        demo = Listen.model_validate(args.demo_upstream) if args.demo_upstream else None
    except ValidationError as exc:
        print(f"gateway: {exc.errors()[0]['msg']}", file=sys.stderr)
        return EXIT_INVALID
    for later, earlier in policy.table.shadowed():
        logging.getLogger("gateway").warning("route %r can never match: shadowed by %r", later.name, earlier.name)
    for origin in policy.unverified_upstreams():
        logging.getLogger("gateway").warning(UNVERIFIED.format(origin))
    supervisor = Supervisor(
        policy, overrides, demo, access=write_access, log_level=args.log_level, log_format=args.log_format
    )
    return asyncio.run(supervisor.run())
