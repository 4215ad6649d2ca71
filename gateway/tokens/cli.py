"""`gateway keys …` and `gateway tokens …`: the API-token tools. Exit codes as cli.py."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from gateway.duration import parse_duration
from gateway.policy import ConfigError
from gateway.policy.load import load_model
from gateway.tokens import keystore, revocation, status
from gateway.tokens.mint import ApiTokenProvider, MintError, api_token_provider, issue, ledger

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    example: str,
    parents: list[argparse.ArgumentParser] | None = None,
) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (in the parent's list and its own --help) and an example."""
    return sub.add_parser(
        name,
        parents=parents or [],
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"example: {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = _command(sub, "keys", "API-token signing keys: generate, list, retire", "gateway keys list --dir keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    gen = _command(keys_sub, "generate", "add a signing key (rotation keeps the old ones)",
                   "gateway keys generate --dir keys --alg ES256")  # fmt: skip
    gen.add_argument("--dir", required=True, type=Path, help="key directory (private keys and jwks.json)")
    gen.add_argument("--alg", default="EdDSA", choices=keystore.ALGORITHMS, help="the key's algorithm (EdDSA)")
    gen.set_defaults(handler=_keys_generate)

    # Where the live-token counts come from: the policy's provider, else the README's layout.
    ledger_source = argparse.ArgumentParser(add_help=False)
    ledger_source.add_argument(
        "--config",
        metavar="FILE",
        help="the policy, to find the provider's ledger and revocation list "
        "(default: ledger.jsonl and revoked.json in --dir)",
    )
    ledger_source.add_argument("--provider", help="the API-token provider (when the policy has several)")
    retire = _command(keys_sub, "retire", "remove a key: tokens it signed stop verifying; warns about live ones",
                      "gateway keys retire --dir keys --config gateway.yaml -- KID   (-- as a kid can start with '-')",
                      [ledger_source])  # fmt: skip
    retire.add_argument("kid", help="the key id (`keys list` shows them)")
    retire.add_argument("--force", action="store_true", help="allow retiring the last key (all tokens then fail)")
    retire.add_argument("--dir", required=True, type=Path, help="key directory")
    retire.set_defaults(handler=_keys_retire)
    listing = _command(keys_sub, "list", "list keys: which signs new tokens, which only verify, which are retired",
                       "gateway keys list --dir keys --config gateway.yaml", [ledger_source])  # fmt: skip
    listing.add_argument("--dir", required=True, type=Path, help="key directory")
    listing.set_defaults(handler=_keys_list)

    tokens = _command(sub, "tokens", "API tokens for service clients: issue, list, revoke",
                      "gateway tokens list --config gateway.yaml")  # fmt: skip
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, metavar="FILE", help="the policy file")
    common.add_argument("--provider", help="the API-token provider (when there are several)")
    mint = _command(tokens_sub, "issue", "print a new token for a client",
                    'gateway tokens issue --config gateway.yaml --client acme --scopes "orders:read orders:write"',
                    [common])  # fmt: skip
    mint.add_argument("--client", required=True, help="the client's name (becomes `sub`)")
    mint.add_argument(
        "--scopes",
        default="",
        help='space-separated, as OAuth\'s scope (RFC 6749 §3.3), e.g. "orders:read orders:write"; a comma is refused',
    )
    mint.add_argument("--audience", help="one of the provider's audiences (may be omitted when it has only one)")
    mint.add_argument("--ttl", help="lifetime, e.g. 90d (default: api_tokens.default_ttl)")
    mint.add_argument("--claim", action="append", default=[], metavar="K=V", help="an extra string claim")
    mint.set_defaults(handler=_tokens_issue)
    listing = _command(tokens_sub, "list", "issued tokens from the ledger: kid, and whether each still verifies",
                       "gateway tokens list --config gateway.yaml --all", [common])  # fmt: skip
    listing.add_argument("--client", help="only this client's tokens")
    listing.add_argument("--all", action="store_true", help="include tokens that no longer verify")
    listing.set_defaults(handler=_tokens_list)
    revoke = _command(tokens_sub, "revoke", "revoke a token, or all of a client's",
                      "gateway tokens revoke --config gateway.yaml --client acme", [common])  # fmt: skip
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
        records, revoked = _ledger_view(args)
        live = status.live_by_kid(records, revoked=revoked, now=time.time())[args.kid]
        left = keystore.retire(args.dir, args.kid, allow_last=args.force)
    except (keystore.KeyStoreError, MintError, revocation.RevocationError, OSError) as exc:
        return _fail(str(exc))
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if live:
        print(f"warning: {live} live token(s) signed by {args.kid} (not expired, not revoked) now stop verifying",
              file=sys.stderr)  # fmt: skip
    print(f"retired {args.kid}; {left} key(s) remain. Tokens it signed stop verifying within seconds.", file=sys.stderr)
    return EXIT_OK


def _keys_list(args: argparse.Namespace) -> int:
    try:
        keys = keystore.read_jwks(args.dir)
        retired = keystore.read_retired(args.dir)
        records, revoked = _ledger_view(args)
    except (keystore.KeyStoreError, MintError, revocation.RevocationError, OSError) as exc:
        return _fail(str(exc))
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    live = status.live_by_kid(records, revoked=revoked, now=time.time())
    signing = [k.get("kid") for k in keys if (args.dir / f"{k.get('kid')}.key").exists()]
    rows = [("kid", "alg", "live tokens", "role")]
    for jwk in keys:
        kid = jwk.get("kid")
        if signing and kid == signing[-1]:
            role = "signs new tokens (and verifies)"
        elif kid in signing:
            role = "verifies only (an older key: retire it once its tokens are replaced)"
        else:
            role = "verifies only (no private key in this directory)"
        rows.append((str(kid), str(jwk.get("alg")), str(live[str(kid)]), role))
    for r in retired:
        # Its tokens are refused, so none is live, whatever the ledger says.
        rows.append((str(r.get("kid")), str(r.get("alg")), "-", f"retired {r.get('retired')}: verifies nothing"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


class _UsageError(Exception):
    """Bad arguments; exit 2."""


def _ledger_view(args: argparse.Namespace) -> tuple[list[dict[str, Any]], set[str]]:
    """The ledger records and revoked jtis for `keys list`/`retire`: the policy's, or those in --dir."""
    if args.config is not None:
        try:
            p = api_token_provider(load_model(args.config), args.config, args.provider)
        except ConfigError as exc:
            raise _UsageError(f"invalid policy\n{exc}") from None
        except MintError as exc:
            raise _UsageError(str(exc)) from None
        return ledger(p), {e["jti"] for e in revocation.read(p.revocation_file)}
    # The layout the README and config.example.yaml use: everything in the key directory.
    here = ApiTokenProvider(
        name="",
        issuer="",
        audiences=(),
        algorithms=(),
        max_lifetime=0,
        default_ttl=0,
        typ="",
        key_dir=args.dir,
        ledger=args.dir / "ledger.jsonl",
        revocation_file=args.dir / "revoked.json",
    )
    return ledger(here), {e["jti"] for e in revocation.read(here.revocation_file)}


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
        scopes = _scopes(args.scopes)
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    audience = args.audience
    if audience is None:
        if len(p.audiences) != 1:
            return _fail(
                f"--audience is required: provider {p.name} has several ({', '.join(p.audiences)})", EXIT_USAGE
            )
        audience = p.audiences[0]
    try:
        token, record = issue(
            p,
            client=args.client,
            scopes=scopes,
            audience=audience,
            ttl=ttl,
            extra=extra,
        )
    except (MintError, OSError) as exc:
        return _fail(str(exc))
    print(token)
    print(f"issued jti {record['jti']} to {record['client']}, expires {record['expires']}", file=sys.stderr)
    return EXIT_OK


def _scopes(text: str) -> list[str]:
    """`--scopes`: space-separated, as the `scope` claim itself (RFC 6749 §3.3).

    A comma is refused rather than split on: "a,b" is one legal scope-token, so either
    reading would silently give some operator a token other than the one they meant.
    """
    scopes = text.split()
    for scope in scopes:
        if "," in scope:
            raise _UsageError(
                f'--scopes {text!r}: scopes are space-separated (RFC 6749 §3.3), e.g. "{text.replace(",", " ")}"'
            )
        if '"' in scope or "\\" in scope:
            raise _UsageError(f'--scopes: {scope!r} has a character RFC 6749 §3.3 does not allow in a scope (" or \\)')
    return scopes


def _tokens_list(args: argparse.Namespace) -> int:
    p, code = _provider(args)
    if p is None:
        return code
    try:
        records = ledger(p)
        revoked = {e["jti"] for e in revocation.read(p.revocation_file)}
        kids = {str(k.get("kid")) for k in keystore.read_jwks(p.key_dir)}
    except (MintError, revocation.RevocationError, keystore.KeyStoreError, OSError) as exc:
        return _fail(str(exc))
    now = time.time()
    rows: list[tuple[str, ...]] = [("jti", "client", "kid", "scopes", "audience", "issued", "expires", "status")]
    for r in records:
        if args.client and r.get("client") != args.client:
            continue
        state = status.token_status(r, revoked=revoked, kids=kids, now=now)
        if state != status.ACTIVE and not args.all:
            continue
        scopes = ",".join(r.get("scopes", [])) or "-"  # unambiguous: --scopes refuses a comma
        fields = (r["jti"], r.get("client"), r.get("kid", "-"), scopes, r.get("audience"), r.get("issued"),
                  r.get("expires"), state)  # fmt: skip
        rows.append(tuple(str(f) for f in fields))
    for row in rows:
        print("  ".join(row))
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
