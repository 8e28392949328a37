#!/usr/bin/env bash
# Builds the test images the docker and swarm tests run in place of Grafana (the engine on CI
# machines cannot pull images): grafana-standin, statically linked, in a `FROM scratch` image laid
# out like grafana/grafana (same GF_PATHS_*, data in /var/lib/grafana, port from
# GF_SERVER_HTTP_PORT), tagged like Grafana versions:
#   pug-test/grafana:11.3.0, pug-test/grafana:11.4.0  healthy stand-ins of those versions
#   pug-test/grafana:11.5.0-broken                    crashes on start (GF_STANDIN_MODE=crash)
# plus /usr/bin/healthcheck, the HTTP probe the containers' HEALTHCHECK runs (no shell in scratch).
#
# Usage: crates/pug-docker/tests/images/build.sh   (from anywhere; idempotent)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
target="x86_64-unknown-linux-gnu"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
[ "${SKIP_CARGO_BUILD:-}" = 1 ] || RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --target "$target" -p grafana-standin
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/share/grafana/bin" "$ctx/rootfs/usr/bin" "$ctx/rootfs/var/lib/grafana" \
  "$ctx/rootfs/var/log/grafana" "$ctx/rootfs/etc/grafana/provisioning" "$ctx/rootfs/tmp"
cp "$target_dir/$target/release/grafana-standin" "$ctx/rootfs/usr/share/grafana/bin/grafana"
rustc --edition 2021 -O -C target-feature=+crt-static --target "$target" \
  -o "$ctx/rootfs/usr/bin/healthcheck" "$here/healthcheck.rs"
if ldd "$ctx/rootfs/usr/share/grafana/bin/grafana" >/dev/null 2>&1 \
  && ! ldd "$ctx/rootfs/usr/share/grafana/bin/grafana" 2>&1 | grep -q "statically linked"; then
  echo "grafana-standin is not statically linked" >&2
  exit 1
fi
build() { # tag version [extra Dockerfile lines]
  cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
ENV GF_PATHS_HOME=/usr/share/grafana GF_PATHS_DATA=/var/lib/grafana GF_PATHS_LOGS=/var/log/grafana \\
    GF_PATHS_PLUGINS=/var/lib/grafana/plugins GF_PATHS_PROVISIONING=/etc/grafana/provisioning \\
    STANDIN_VERSION=$2
$3
LABEL org.opencontainers.image.title="grafana-standin (pug's Grafana test double, not Grafana)"
EXPOSE 3000
ENTRYPOINT ["/usr/share/grafana/bin/grafana", "server", "--homepath=/usr/share/grafana", "--packaging=docker"]
DOCKERFILE
  docker build --quiet -t "$1" "$ctx" >/dev/null
  echo "built $1"
}
build pug-test/grafana:11.3.0 11.3.0 ""
build pug-test/grafana:11.4.0 11.4.0 ""
build pug-test/grafana:11.5.0-broken 11.5.0 "ENV GF_STANDIN_MODE=crash"
