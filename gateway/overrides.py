"""Request headers that tell a backend to act on another path, method, host or scheme
than the request line the gateway judged. No client may send one to a backend.

The policy matched one method, host and canonical path; a backend that reads any of
these instead would serve what no route allowed (`GET /public` + `X-Original-URL:
/admin`, or an allowed `POST` + `X-HTTP-Method-Override: DELETE`). They are dropped on
every route, from every peer (trusted proxies pass client headers through unchanged),
and no claim may be written to one. Names are compared folded (`auth.forward.fold`:
lower case, `_` `.` and other punctuation read as `-`), and also with a leading `HTTP_`
removed, the CGI spelling some IIS and PHP stacks look the header up by.
"""

from __future__ import annotations

# Who reads each (so that a reader can judge what dropping it costs).
PATH_OVERRIDES = frozenset(
    {
        "x-original-url",  # IIS URL Rewrite, ASP.NET, Symfony, Zend/Laminas, ingress-nginx auth
        "x-rewrite-url",  # IIS ISAPI_Rewrite, Symfony, Zend/Laminas
        "x-original-uri",  # the nginx auth_request convention
        "x-original-path",
        "x-forwarded-prefix",  # Spring ForwardedHeaderFilter, Werkzeug ProxyFix, Symfony, ASP.NET Core, Traefik
        "x-forwarded-path",  # Kong
        "x-forwarded-uri",  # Traefik ForwardAuth, Authelia, oauth2-proxy
        "x-forwarded-url",
        "x-replaced-path",  # Traefik ReplacePath / StripPrefix
        "x-script-name",  # the Flask/WSGI "ReverseProxied" recipe: becomes SCRIPT_NAME
        "x-override-url",
        "x-proxy-url",
        "x-request-uri",
        "request-uri",
        "x-http-destinationurl",
        "x-original-prefix",  # ASP.NET Core ForwardedHeaders (the prefix it replaced)
        "x-waws-unencoded-url",  # Azure App Service: the raw URL before decoding
    }
)
METHOD_OVERRIDES = frozenset(
    {
        "x-http-method-override",  # ASP.NET Web API, Express method-override, Rack, Symfony, Google APIs
        "x-http-method",  # OData, ASP.NET
        "x-method-override",
        "x-original-method",  # ingress-nginx auth_request
        "x-forwarded-method",  # Traefik ForwardAuth
    }
)
# Routes may match on Host; these are the non-standard ways to name another one.
HOST_OVERRIDES = frozenset({"x-host", "x-http-host-override", "x-original-host"})
# The non-standard spellings of X-Forwarded-Proto, which only a trusted proxy may set.
SCHEME_OVERRIDES = frozenset({"x-scheme", "x-url-scheme", "front-end-https", "x-original-proto"})
OVERRIDES = PATH_OVERRIDES | METHOD_OVERRIDES | HOST_OVERRIDES | SCHEME_OVERRIDES
# Envoy's internal headers: routing, retries, timeouts, `x-envoy-original-path`,
# `x-envoy-original-dst-host` (the destination of an original_dst cluster). An Envoy
# behind the gateway trusts them from a peer it counts as internal, as the gateway is.
OVERRIDE_PREFIXES = ("x-envoy-",)


def is_override(folded: str) -> bool:
    """`folded` (a header name passed through `fold`) overrides the request line."""
    if folded.startswith("http-"):
        folded = folded[5:]
    return folded in OVERRIDES or folded.startswith(OVERRIDE_PREFIXES)
