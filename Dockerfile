# syntax=docker/dockerfile:1
# rolloutd container image.
#
#   docker build -t rolloutd .
#   docker run --rm --stop-timeout 30 -p 127.0.0.1:9108:9108 \
#       -v "$PWD/deploy/rolloutd.yaml:/etc/rolloutd/rolloutd.yaml:ro" \
#       -v rolloutd-state:/var/lib/rolloutd -e ROLLOUTD_TOKEN rolloutd
#
# Config: mount it at /etc/rolloutd/rolloutd.yaml (the CMD reads it there); secrets come in
# as environment variables named by its ${VAR} references. In a container, `http.listen`
# must be 0.0.0.0:9108 for Prometheus and a published port to reach it.
# State: /var/lib/rolloutd is a volume and the working directory; set
# `state.path: /var/lib/rolloutd/rolloutd-state.db` (the default ./rolloutd-state.db lands
# there too). The documented example config is in /usr/share/doc/rolloutd/.
# Stop: SIGTERM drains within --grace (10 s), so give the container more than Docker's
# default 10 s (`--stop-timeout 30`, compose `stop_grace_period: 30s`).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# A C compiler for mypyc (the builder stage only; Debian's current gcc, as in CI).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY requirements/ requirements/
COPY pyproject.toml README.md LICENSE ./
COPY scripts/compile_core.py scripts/
COPY daemon/rolloutd/ daemon/rolloutd/
# Every dependency is the locked release, checked against its hash (requirements/*.lock, as
# the tests ran); rolloutd's wheel is built by the locked setuptools of a throwaway venv,
# whose locked mypyc compiles the engine as scripts/setup.sh does for the tests. The
# extensions go beside the installed source, and the build fails unless they load.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes -r requirements/dev.lock \
    && /opt/build/bin/python scripts/compile_core.py \
    && test "$(/opt/build/bin/python scripts/compile_core.py --check)" = current \
    && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && python -m venv /opt/rolloutd \
    && /opt/rolloutd/bin/pip install --require-hashes -r requirements/runtime.lock \
    && /opt/rolloutd/bin/pip install --no-deps /wheels/rolloutd-*.whl \
    && site=$(/opt/rolloutd/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && cp daemon/rolloutd/core/*.so "$site/rolloutd/core/" \
    && cp daemon/*__mypyc*.so "$site/" \
    && /opt/rolloutd/bin/python -c \
        "from rolloutd.engine_build import engine_kind; assert engine_kind() == 'compiled'"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/rolloutd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 rolloutd \
    && useradd --system --uid 10001 --gid rolloutd --home-dir /var/lib/rolloutd \
        --no-create-home --shell /usr/sbin/nologin rolloutd \
    && install -d -o rolloutd -g rolloutd -m 0700 /var/lib/rolloutd \
    && install -d -m 0755 /etc/rolloutd
COPY --from=builder /opt/rolloutd /opt/rolloutd
COPY config/rolloutd.yaml /usr/share/doc/rolloutd/rolloutd.example.yaml
WORKDIR /var/lib/rolloutd
VOLUME /var/lib/rolloutd
EXPOSE 9108
USER 10001:10001
STOPSIGNAL SIGTERM
# No curl in the slim image: Python's urllib. A non-2xx answer raises, so the check fails.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('ROLLOUTD_HEALTHZ', 'http://127.0.0.1:9108/healthz'), timeout=3)"]
ENTRYPOINT ["rolloutd"]
CMD ["run", "--config", "/etc/rolloutd/rolloutd.yaml"]
