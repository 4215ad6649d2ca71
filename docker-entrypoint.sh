#!/bin/sh
# A policy that verifies API tokens from /etc/gateway/demo-keys (the bundled example
# does) gets a key created there on first start, so `docker run` works out of the box;
# the directory is a volume (Dockerfile), so also with `--read-only`. Any other policy
# brings its own keys and nothing is written.
set -e
config=
prev=
for arg in "$@"; do
  case "$prev" in --config) config=$arg ;; esac
  case "$arg" in --config=*) config=${arg#--config=} ;; esac
  prev=$arg
done
if [ "$1" = "run" ] && [ ! -f /etc/gateway/demo-keys/jwks.json ] \
   && grep -q "demo-keys/jwks.json" "$config" 2>/dev/null; then
  gateway keys generate --dir /etc/gateway/demo-keys >/dev/null
fi
exec gateway "$@"
