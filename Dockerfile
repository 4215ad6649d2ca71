# Small image, non-root, fit for a read-only root filesystem. Mount your policy (and its
# keys) and pass `run --config …`; deploy/kubernetes and deploy/compose show how.
#
# The base is pinned by version and digest: a rebuild gets the same bytes, and a new
# Python patch release or Debian update is a deliberate change of this line (the digest
# of the multi-platform index; `docker buildx imagetools inspect python:3.12.13-slim-bookworm`
# prints the current one). Its Python is one of those `make test` runs the suite on
# (Makefile PYTHONS); tests/unit/test_pythons.py checks it. Another one:
#   docker build --build-arg PYTHON_IMAGE=python:3.13-slim-bookworm .
ARG PYTHON_IMAGE=python:3.12.13-slim-bookworm@sha256:4766d8b510c428e595d74b9cc5bbb2fae8e26316fffb4adc89908d79aacd58a2

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# Nothing is written at run time but what the gateway means to write: no .pyc files
# (pip compiled them at install), so a read-only root filesystem works.
ENV PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --no-create-home gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
COPY config.example.yaml /etc/gateway/config.yaml
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN mkdir -p /etc/gateway/demo-keys && chown 10001 /etc/gateway/demo-keys
# The demo's API-token key is created here on first start (docker-entrypoint.sh): a
# volume, so `docker run --read-only` still works. The gateway's only other writes are
# the workers' metric cells, in /dev/shm (a tmpfs in every container).
VOLUME ["/etc/gateway/demo-keys"]
USER 10001
EXPOSE 8080 9901
# Alive: the admin listener answers /healthz. Python's urllib, no curl in the image; no
# proxy from the environment. Set GATEWAY_HEALTHCHECK_URL when the admin listener moves.
ENV GATEWAY_HEALTHCHECK_URL=http://127.0.0.1:9901/healthz
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open(os.environ['GATEWAY_HEALTHCHECK_URL'], timeout=2); sys.exit(r.status != 200)"]
ENTRYPOINT ["docker-entrypoint.sh"]
# The default command serves the example policy with its demo upstream; pass your own
# `run --config …` (without --demo-upstream) for real use.
CMD ["run", "--config", "/etc/gateway/config.yaml", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9901", "--demo-upstream"]
