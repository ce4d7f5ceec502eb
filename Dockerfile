# aligw container image. Docker has no engine on the CI machines, so this file cannot be built in
# CI; its build steps are kept identical to what .ci/run runs (scripts/deps.sh for the packages,
# the same cmake configure and build), so a green CI means this builds too.
#
#   docker build -t aligw .
#   docker run -v /etc/aligw:/etc/aligw:ro -v aligw-state:/var/lib/aligw aligw

FROM debian:bookworm-slim AS build
WORKDIR /src
COPY scripts/deps.sh scripts/deps.sh
RUN scripts/deps.sh
COPY . .
RUN cmake -S . -B build -DALIGW_WERROR=ON -DALIGW_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_INSTALL_PREFIX=/usr \
 && cmake --build build -j"$(nproc)" \
 && DESTDIR=/out cmake --install build

FROM debian:bookworm-slim
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends libuv1 libpaho-mqtt1.3 libssl3 libsqlite3-0 \
      libjansson4 libsystemd0 libcurl4 libmodbus5 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system aligw && useradd --system --gid aligw --home-dir /var/lib/aligw aligw \
 && install -d -o aligw -g aligw -m 0750 /var/lib/aligw /run/aligw
COPY --from=build /out/ /
USER aligw
VOLUME ["/etc/aligw", "/var/lib/aligw"]
ENTRYPOINT ["/usr/bin/aligwd"]
CMD ["-c", "/etc/aligw/aligw.json"]
