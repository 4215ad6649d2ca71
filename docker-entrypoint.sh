#!/bin/sh
# The bundled example policy verifies API tokens from /etc/gateway/demo-keys: create a
# key there on first start, so `docker run` works out of the box. A mounted policy
# brings its own keys and is not touched.
set -e
if [ "$1" = "run" ] && [ ! -f /etc/gateway/demo-keys/jwks.json ] \
   && grep -q "demo-keys/jwks.json" /etc/gateway/config.yaml 2>/dev/null; then
  gateway keys generate --dir /etc/gateway/demo-keys >/dev/null
fi
exec gateway "$@"
