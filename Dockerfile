# sluice container image.
#   docker build --build-arg SLUICE_GIT_VERSION=$(git describe --always --dirty) -t sluice .
#   docker run -e SLUICE_PRIMARY_HOST=db -e SLUICE_PASSWORD=... -p 6432:6432 -p 9930:9930 sluice
# The configuration is /etc/sluice/sluice.yaml (deploy/sluice.yaml: one database, every value from
# SLUICE_* environment variables); mount a file of your own there, or point SLUICE_CONFIG at one.

# --- build: Debian 12 with exactly the packages scripts/setup.sh installs for a build ----------
FROM debian:12 AS build
COPY scripts/setup.sh /tmp/setup.sh
RUN bash /tmp/setup.sh --build-only && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# .git is not in the build context (.dockerignore): the version comes from this argument.
ARG SLUICE_GIT_VERSION=""
RUN cmake --preset release -G Ninja -DBUILD_TESTING=OFF -DSLUICE_WERROR=ON \
      -DSLUICE_GIT_VERSION="${SLUICE_GIT_VERSION}" \
    && cmake --build --preset release \
    && DESTDIR=/staging cmake --install build/release --prefix /usr/local --strip

# --- runtime: debian:12-slim plus the shared libraries the binary links, nothing else ---------
FROM debian:12-slim AS runtime
# The Debian packages of the libraries sluice links (readelf -d NEEDED), besides those of the base
# image. tests/integration/test_deploy.py checks this list against ldd of a fresh build: keep them
# equal when a dependency changes.
ARG RUNTIME_LIBRARIES="libbson-1.0-0 libfmt9 libhiredis0.14 libmongoc-1.0-0 libpq5 libspdlog1.10 libssl3 libyaml-cpp0.7"
# Linked too, and already in debian:12-slim (apt itself needs them); checked here at build time.
ARG BASE_LIBRARIES="libc6 libgcc-s1 libstdc++6"
# Not a library: the system CA bundle, for tls.server_ca-less verification of managed databases.
ARG RUNTIME_DATA="ca-certificates"
RUN dpkg-query -W ${BASE_LIBRARIES} >/dev/null \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         ${RUNTIME_LIBRARIES} ${RUNTIME_DATA} \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin sluice
COPY --from=build /staging/usr/local/bin/sluice /usr/local/bin/sluice
COPY deploy/sluice.yaml /etc/sluice/sluice.yaml
# Every library resolves, and the binary runs, in this stage (fails the build otherwise).
RUN ! ldd /usr/local/bin/sluice | grep -q "not found" && /usr/local/bin/sluice --version

ARG SLUICE_GIT_VERSION=""
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="PostgreSQL wire proxy: pooling, lag-aware read routing, Redis query cache, Prometheus metrics" \
      org.opencontainers.image.version="${SLUICE_GIT_VERSION}" \
      org.opencontainers.image.documentation="README.md" \
      org.opencontainers.image.base.name="docker.io/library/debian:12-slim"
ENV SLUICE_CONFIG=/etc/sluice/sluice.yaml \
    SLUICE_LISTEN=0.0.0.0:6432 \
    SLUICE_HTTP_LISTEN=0.0.0.0:9930
USER 10001:10001
EXPOSE 6432 9930
# /healthz: every event loop is turning (no curl in the image: sluice is its own probe).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/sluice", "--probe", "http://127.0.0.1:9930/healthz"]
# SIGTERM drains: no new clients, open transactions get shutdown_timeout (default 20 s in the
# packaged config; give `docker stop -t` a little more), then exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluice"]
