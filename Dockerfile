# syntax=docker/dockerfile:1
#
# splitproxy in a container.
#
#   docker build -t splitproxy .
#   docker run --rm -p 8080:8080 -p 9901:9901 \
#       -e SPLITPROXY_ADMIN_TOKEN="$(openssl rand -hex 32)" \
#       -v "$PWD/splitproxy.yaml:/etc/splitproxy/splitproxy.yaml:ro" \
#       -v splitproxy-state:/var/lib/splitproxy \
#       splitproxy
#
# Config  /etc/splitproxy/splitproxy.yaml   config/docker.yaml is the default; mount yours
#                                           over it (check it: docker run --rm -v ... splitproxy
#                                           check -c /etc/splitproxy/splitproxy.yaml)
# State   /var/lib/splitproxy               a volume owned by the splitproxy user (uid 10001)
# Ports   8080 proxy, 9901 admin (/healthz, /readyz, admin API)
#
# SPLITPROXY_ADMIN_TOKEN is required: the default config's admin listener is on 0.0.0.0,
# not loopback, and splitproxy refuses that without a bearer token (SPEC §3).
#
# Stopping: SIGTERM drains in-flight requests for up to --grace (default 30s), but
# `docker stop` kills after 10s. Give it longer (docker stop --time 35, Compose
# stop_grace_period: 35s) or pass a shorter --grace.

# Build stage: the wheel with the data plane compiled by mypyc and the C JSON walk
# (setup.py, native/). The compiler and headers stay here; the runtime image gets the wheel.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY native ./native
COPY proxy ./proxy
# The dependencies and mypy first: mypyc type-checks the modules against them.
RUN pip install --no-cache-dir setuptools wheel "mypy>=2.2,<3" types-PyYAML . \
 && SPLITPROXY_COMPILE=1 pip wheel --no-cache-dir --no-build-isolation --no-deps -w /wheels .

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid, so that a bind-mounted state directory can be given to it on the host.
RUN groupadd --system --gid 10001 splitproxy \
 && useradd --system --uid 10001 --gid splitproxy --no-create-home \
        --home-dir /var/lib/splitproxy --shell /usr/sbin/nologin splitproxy

# The compiled wheel from the build stage, with its dependencies; no compiler, no sources.
# `splitproxy --version` says "data plane: compiled".
COPY --from=build /wheels /tmp/wheels
RUN pip install /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && splitproxy --version | grep -q "data plane: compiled"

# Root-owned and read-only for the proxy: the config is input, not state.
COPY config/docker.yaml /etc/splitproxy/splitproxy.yaml

# Created and chowned before VOLUME: changes to a volume path after it is declared are lost.
RUN install -d -o splitproxy -g splitproxy -m 0750 /var/lib/splitproxy
VOLUME ["/var/lib/splitproxy"]
WORKDIR /var/lib/splitproxy

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

EXPOSE 8080 9901

# slim has no curl; the admin port is the one in config/docker.yaml. HTTPError (any
# non-2xx) and connection errors both exit non-zero.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2)"]

# splitproxy runs as PID 1 and handles SIGTERM itself: stop accepting, drain, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["splitproxy"]
CMD ["run", "-c", "/etc/splitproxy/splitproxy.yaml"]
