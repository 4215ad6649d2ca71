"""`gateway keys …` and `gateway tokens …`: the API-token tools. Exit codes as cli.py."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gateway.duration import parse_duration
from gateway.policy import ConfigError
from gateway.policy.load import load_model
from gateway.tokens import keystore, revocation
from gateway.tokens.mint import ApiTokenProvider, MintError, api_token_provider, issue, ledger

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="API-token signing keys").add_subparsers(dest="keys_command", required=True)
    gen = keys.add_parser("generate", help="add a signing key (rotation keeps the old ones)")
    gen.add_argument("--dir", required=True, type=Path, help="key directory (private keys and jwks.json)")
    gen.add_argument("--alg", default="EdDSA", choices=keystore.ALGORITHMS)
    gen.set_defaults(handler=_keys_generate)
    retire = keys.add_parser("retire", help="remove a key: tokens it signed stop verifying")
    retire.add_argument("kid")
    retire.add_argument("--force", action="store_true", help="allow retiring the last key (all tokens then fail)")
    retire.add_argument("--dir", required=True, type=Path)
    retire.set_defaults(handler=_keys_retire)
    listing = keys.add_parser("list", help="list keys, oldest first (the last signs new tokens)")
    listing.add_argument("--dir", required=True, type=Path)
    listing.set_defaults(handler=_keys_list)

    tokens = sub.add_parser("tokens", help="API tokens for service clients").add_subparsers(
        dest="tokens_command", required=True
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, metavar="FILE", help="the policy file")
    common.add_argument("--provider", help="the API-token provider (when there are several)")
    mint = tokens.add_parser("issue", parents=[common], help="print a new token for a client")
    mint.add_argument("--client", required=True, help="the client's name (becomes `sub`)")
    mint.add_argument("--scopes", default="", help='space-separated, e.g. "orders:read orders:write"')
    mint.add_argument("--audience", required=True)
    mint.add_argument("--ttl", help="lifetime, e.g. 90d (default: api_tokens.default_ttl)")
    mint.add_argument("--claim", action="append", default=[], metavar="K=V", help="an extra string claim")
    mint.set_defaults(handler=_tokens_issue)
    listing = tokens.add_parser("list", parents=[common], help="outstanding tokens (from the ledger)")
    listing.add_argument("--client")
    listing.add_argument("--all", action="store_true", help="include expired and revoked tokens")
    listing.set_defaults(handler=_tokens_list)
    revoke = tokens.add_parser("revoke", parents=[common], help="revoke a token, or all of a client's")
    what = revoke.add_mutually_exclusive_group(required=True)
    what.add_argument("jti", nargs="?", help="the token id (jti); one starting with '-' (older ids) goes after '--'")
    what.add_argument("--client", help="revoke every outstanding token of this client")
    revoke.set_defaults(handler=_tokens_revoke)


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"gateway: {message}", file=sys.stderr)
    return code


def _keys_generate(args: argparse.Namespace) -> int:
    try:
        kid = keystore.generate(args.dir, args.alg)
    except (keystore.KeyStoreError, OSError) as exc:
        return _fail(str(exc))
    print(kid)
    print(
        f"added {args.alg} key {kid}; it signs new tokens. Public keys: {args.dir / keystore.JWKS_FILE}",
        file=sys.stderr,
    )
    return EXIT_OK


def _keys_retire(args: argparse.Namespace) -> int:
    try:
        left = keystore.retire(args.dir, args.kid, allow_last=args.force)
    except (keystore.KeyStoreError, OSError) as exc:
        return _fail(str(exc))
    print(f"retired {args.kid}; {left} key(s) remain. Tokens it signed stop verifying within seconds.", file=sys.stderr)
    return EXIT_OK


def _keys_list(args: argparse.Namespace) -> int:
    try:
        keys = keystore.read_jwks(args.dir)
    except (keystore.KeyStoreError, OSError) as exc:
        return _fail(str(exc))
    for jwk in keys:
        private = (args.dir / f"{jwk.get('kid')}.key").exists()
        print(f"{jwk.get('kid')}  {jwk.get('alg')}  {'signing key' if private else 'verify only'}")
    return EXIT_OK


def _provider(args: argparse.Namespace) -> tuple[ApiTokenProvider | None, int]:
    try:
        return api_token_provider(load_model(args.config), args.config, args.provider), EXIT_OK
    except ConfigError as exc:
        return None, _fail(f"invalid policy\n{exc}", EXIT_USAGE)
    except MintError as exc:
        return None, _fail(str(exc), EXIT_USAGE)


def _tokens_issue(args: argparse.Namespace) -> int:
    p, code = _provider(args)
    if p is None:
        return code
    extra: dict[str, str] = {}
    for item in args.claim:
        name, eq, value = item.partition("=")
        if not eq or not name:
            return _fail(f"--claim {item!r}: expected K=V", EXIT_USAGE)
        extra[name] = value
    try:
        ttl = parse_duration(args.ttl) if args.ttl else None
    except ValueError as exc:
        return _fail(f"--ttl: {exc}", EXIT_USAGE)
    if ttl is not None and ttl < 1:
        return _fail("--ttl must be at least 1s", EXIT_USAGE)
    try:
        token, record = issue(
            p,
            client=args.client,
            scopes=args.scopes.split(),
            audience=args.audience,
            ttl=ttl,
            extra=extra,
        )
    except (MintError, OSError) as exc:
        return _fail(str(exc))
    print(token)
    print(f"issued jti {record['jti']} to {record['client']}, expires {record['expires']}", file=sys.stderr)
    return EXIT_OK


def _tokens_list(args: argparse.Namespace) -> int:
    p, code = _provider(args)
    if p is None:
        return code
    try:
        records = ledger(p)
        revoked = {e["jti"] for e in revocation.read(p.revocation_file)}
    except (MintError, revocation.RevocationError, OSError) as exc:
        return _fail(str(exc))
    now = time.time()
    print("jti  client  scopes  audience  issued  expires  status")
    for r in records:
        if args.client and r.get("client") != args.client:
            continue
        status = "revoked" if r["jti"] in revoked else "expired" if r.get("exp", 0) <= now else "active"
        if status != "active" and not args.all:
            continue
        scopes = ",".join(r.get("scopes", [])) or "-"
        fields = (r["jti"], r.get("client"), scopes, r.get("audience"), r.get("issued"), r.get("expires"), status)
        print("  ".join(str(f) for f in fields))
    return EXIT_OK


def _tokens_revoke(args: argparse.Namespace) -> int:
    p, code = _provider(args)
    if p is None:
        return code
    try:
        records = ledger(p)
    except (MintError, OSError) as exc:
        return _fail(str(exc))
    now = int(time.time())
    if args.client:
        # Tokens a verifier may still accept (exp + leeway) are outstanding too.
        chosen = [
            r for r in records if r.get("client") == args.client and r.get("exp", 0) + revocation.PRUNE_MARGIN > now
        ]
        if not chosen:
            return _fail(f"no outstanding tokens for client {args.client!r} in the ledger")
    else:
        chosen = [r for r in records if r.get("jti") == args.jti]
        if not chosen:
            # Possibly a token issued from another ledger: revoke it, but say so.
            print(f"warning: {args.jti} is not in the ledger {p.ledger}; revoking it anyway", file=sys.stderr)
            chosen = [{"jti": args.jti}]
    entries = [{"jti": r["jti"], "client": r.get("client"), "exp": r.get("exp"), "revoked_at": now} for r in chosen]
    try:
        added = revocation.add(p.revocation_file, entries)
    except (revocation.RevocationError, OSError) as exc:
        return _fail(f"cannot update the revocation list: {exc}")
    print(f"revoked {added} token(s) (already revoked: {len(entries) - added}); the gateway applies it within seconds",
          file=sys.stderr)  # fmt: skip
    return EXIT_OK
