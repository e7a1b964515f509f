# sluice container image: build on Debian 12 with the same packages as scripts/setup.sh, run slim.
FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config libboost1.81-dev libpq-dev libpg-query-dev \
      libmongoc-dev libbson-dev libhiredis-dev libyaml-cpp-dev libspdlog-dev libfmt-dev catch2 \
      libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake --preset release -G Ninja -DBUILD_TESTING=OFF && cmake --build --preset release \
    && strip build/release/sluice

FROM debian:12-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libyaml-cpp0.7 libspdlog1.10 libfmt9 libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 sluice
COPY --from=build /src/build/release/sluice /usr/local/bin/sluice
COPY deploy/sluice.example.yaml /etc/sluice/sluice.yaml
USER sluice
EXPOSE 6432 9930
STOPSIGNAL SIGTERM
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="PostgreSQL and MongoDB wire proxy: pooling, routing, caching" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--config", "/etc/sluice/sluice.yaml"]
