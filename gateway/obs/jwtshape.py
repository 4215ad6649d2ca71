"""Finding JWT-shaped text in linear time, for redaction.

JWT-shaped: from an `eyJ` (base64url of `{"`) through the end of its chain of
base64url runs, when that chain holds at least two dots (`.` or an escaped `%2E`): a
JWS (three parts) or a JWE (five). A chain with fewer dots after its first `eyJ` has
fewer after any later one, so the scan resumes past the chain's end: every character
is looked at a bounded number of times.

SECURITY: the regex this replaces (`eyJ[…]*\\.[…]+\\.[…]*`) rescanned the rest of the
run from every `eyJ` in it, quadratic in the run's length: 17 KB of `eyJ` in a
`Referer` cost 0.36 s of event-loop time per request (issue 11, defect 10).
"""

from __future__ import annotations

import re

# One chain: base64url characters and dot separators, possessive (`*+`): it never gives
# characters back, and nothing follows it in the pattern that could make it.
_CHAIN = re.compile(r"(?:[A-Za-z0-9_-]|\.|%2[Ee])*+")


def without_jwts(text: str, marker: str, cut: bool = False) -> str:
    """`text` with every JWT-shaped chain replaced by `marker`.

    `cut`: `text` is the start of something longer, so a chain that runs to its end may
    have lost its later parts to the cut; such a chain is redacted if it starts with
    `eyJ` at all (a token's first part is still not for a log)."""
    i = text.find("eyJ")
    if i < 0:
        return text
    out: list[str] = []
    done = 0
    n = len(text)
    while i >= 0:
        end = _CHAIN.match(text, i).end()  # type: ignore[union-attr]  # `*+` always matches
        dots = text.count(".", i, end) + text.count("%2E", i, end) + text.count("%2e", i, end)
        # A cut `%` or `%2` at the very end is a separator the cut took the rest of.
        if dots >= 2 or (cut and n - end <= 2 and text[end:] in ("", "%", "%2")):
            out.append(text[done:i])
            out.append(marker)
            done = end
        i = text.find("eyJ", end)
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)
