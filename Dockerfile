# Small image, non-root. Mount your policy at /etc/gateway/config.yaml (and its keys).
# The image's Python is one of those `make test` runs the suite on (Makefile PYTHONS);
# the minor version is pinned, its patch releases (security fixes) follow the tag.
ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
RUN useradd --system --uid 10001 --no-create-home gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
COPY config.example.yaml /etc/gateway/config.yaml
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN mkdir -p /etc/gateway/demo-keys && chown 10001 /etc/gateway/demo-keys
USER 10001
EXPOSE 8080 9901
ENTRYPOINT ["docker-entrypoint.sh"]
# The default command serves the example policy with its demo upstream; pass your own
# `run --config …` (without --demo-upstream) for real use.
CMD ["run", "--config", "/etc/gateway/config.yaml", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9901", "--demo-upstream"]
