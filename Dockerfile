# aligw container image: aligwd and aligwctl on Debian 12 (bookworm-slim), running as the aligw
# user. CI builds and runs it with buildah (scripts/test-container.sh: `buildah bud --isolation
# chroot --pull-never --format docker`, FROM a bookworm-slim made locally with debootstrap);
# with Docker:
#
#   docker build -t aligw .
#   docker run -d --name aligw -v /etc/aligw:/etc/aligw:ro -v aligw-state:/var/lib/aligw \
#     -v /run/aligw:/run/aligw aligw
#   docker exec aligw aligwctl status
#
# Volumes: /etc/aligw (aligw.json and the devices file, read-only is fine), /var/lib/aligw (the
# outbox and state databases: keep it across restarts, or queued messages are lost),
# /run/aligw (the API socket, to reach it from the host) and /usr/local/lib/aligw/plugins
# (plugins of your own: a bare name is looked up there first, then among the built-in ones).
# The config keeps the default state_dir and runtime_dir (/var/lib/aligw, /run/aligw).

FROM debian:bookworm-slim AS build
WORKDIR /src
COPY scripts/deps.sh scripts/deps.sh
RUN scripts/deps.sh --build
COPY . .
RUN cmake -S . -B /build -DALIGW_WERROR=ON -DALIGW_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_INSTALL_PREFIX=/usr -DALIGW_INSTALL_EXAMPLE_CONFIG=OFF \
 && cmake --build /build -j"$(nproc)" \
 && DESTDIR=/out cmake --install /build --strip \
 && rm -rf /out/lib/systemd /out/usr/lib/sysusers.d /out/usr/lib/tmpfiles.d /out/usr/include

FROM debian:bookworm-slim
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends libuv1 libpaho-mqtt1.3 libssl3 libsqlite3-0 \
      libjansson4 libsystemd0 libcurl4 libmodbus5 libmicrohttpd12 ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system aligw \
 && useradd --system --gid aligw --home-dir /var/lib/aligw --shell /usr/sbin/nologin aligw \
 && install -d -o aligw -g aligw -m 0750 /var/lib/aligw /run/aligw \
 && install -d -m 0755 /etc/aligw /usr/local/lib/aligw/plugins
COPY --from=build /out/ /
ENV ALIGW_PLUGIN_PATH=/usr/local/lib/aligw/plugins
USER aligw
VOLUME ["/etc/aligw", "/var/lib/aligw", "/run/aligw", "/usr/local/lib/aligw/plugins"]
# aligwd stops in order on SIGTERM (the last batch committed, sessions closed).
STOPSIGNAL SIGTERM
# Healthy: the daemon answers, its store is writable and at least health.min_online of the
# devices are online (aligwctl's exit codes: docs/operations.md).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/bin/sh", "-c", "aligwctl health >/dev/null || exit 1"]
ENTRYPOINT ["/usr/bin/aligwd"]
CMD ["-c", "/etc/aligw/aligw.json"]
