# shellcheck shell=bash
# Shared helpers of the project's scripts: package installs, the private containerd and
# registry, and the fixture images. Sourced by scripts/demo, scripts/test and scripts/stack.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Everything the stack makes lives under one state directory, never in the machine's
# default containerd paths.
FNRT_STATE=${FNRT_STATE:-/var/lib/fnrt-dev}
FNRT_REGISTRY=${FNRT_REGISTRY:-127.0.0.1:5000}
CONTAINERD_SOCK="$FNRT_STATE/containerd/containerd.sock"
PACKAGES=(containerd runc containernetworking-plugins docker-registry buildah protobuf-compiler iproute2 e2fsprogs curl nats-server nftables golang-go etcd-server libprotobuf-dev)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs the Debian packages the project needs, only those that are missing.
ensure_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  [ "$(id -u)" = 0 ] || die "installing packages needs root (run as root or install: ${missing[*]})"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# gVisor's runsc, for the agent's gvisor sandbox class. Debian 12's own runsc (2022)
# cannot start a sandbox in a user namespace with the node's network (the agent's
# instances have both), so on bookworm the backports one (2024) is installed, with
# bookworm-backports added to apt's sources if it is not there.
RUNSC_MIN_VERSION=0.0~20240729
ensure_runsc() {
  if dpkg -s runsc >/dev/null 2>&1 &&
    dpkg --compare-versions "$(dpkg-query -W -f='${Version}' runsc)" ge "$RUNSC_MIN_VERSION"; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "installing gVisor needs root (install runsc >= $RUNSC_MIN_VERSION)"
  local codename target=()
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = bookworm ]; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      log "adding Debian's bookworm-backports to apt's sources (for gVisor's runsc)"
      cat >/etc/apt/sources.list.d/fnrt-bookworm-backports.sources <<'APT'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
APT
    fi
    target=(-t bookworm-backports)
  fi
  log "installing gVisor (runsc ${target[*]})"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${target[@]}" runsc >/dev/null
}

# Whether the process of pid file $1 runs, and (given $2) runs a program named $2: a pid
# file left by a process that died may name a pid the system has given to another since.
pid_alive() {
  [ -f "$1" ] || return 1
  local pid
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  [ -z "${2:-}" ] && return 0
  local argv0
  argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -1)
  [ "$(basename "${argv0:-?}")" = "$2" ]
}

# Starts a containerd of our own: its root, state, sockets and config under $FNRT_STATE.
start_containerd() {
  local d="$FNRT_STATE/containerd"
  mkdir -p "$d/root" "$d/state" "$d/opt"
  if pid_alive "$d/pid" containerd && [ -S "$CONTAINERD_SOCK" ]; then return 0; fi
  cat >"$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
TOML
  log "starting containerd ($CONTAINERD_SOCK)"
  containerd --config "$d/config.toml" >"$d/containerd.log" 2>&1 &
  echo $! >"$d/pid"
  for _ in $(seq 1 100); do
    [ -S "$CONTAINERD_SOCK" ] && ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -20 "$d/containerd.log" >&2
  die "containerd did not come up; its log is $d/containerd.log"
}

# Stops the process of pid file $1 ($2 names it in the log; given $3, only if it runs the
# program $3): SIGTERM, then SIGKILL after 15 s (an agent drains its calls for up to 10 s).
stop_pidfile() {
  local pidfile=$1 name=$2 prog=${3:-}
  if pid_alive "$pidfile" "$prog"; then
    log "stopping $name"
    kill "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 1 150); do pid_alive "$pidfile" "$prog" || break; sleep 0.1; done
    pid_alive "$pidfile" "$prog" && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

stop_containerd() { stop_pidfile "$FNRT_STATE/containerd/pid" containerd containerd; }

# Starts docker-registry (the OCI distribution registry) on $FNRT_REGISTRY, storage under
# $FNRT_STATE/registry.
start_registry() {
  local d="$FNRT_STATE/registry"
  mkdir -p "$d/data"
  if pid_alive "$d/pid" docker-registry; then return 0; fi
  cat >"$d/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $d/data
  delete:
    enabled: true
http:
  addr: $FNRT_REGISTRY
YML
  log "starting registry on $FNRT_REGISTRY"
  docker-registry serve "$d/config.yml" >"$d/registry.log" 2>&1 &
  echo $! >"$d/pid"
  for _ in $(seq 1 100); do
    curl -fsS "http://$FNRT_REGISTRY/v2/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -20 "$d/registry.log" >&2
  die "registry did not come up on $FNRT_REGISTRY; its log is $d/registry.log"
}

stop_registry() { stop_pidfile "$FNRT_STATE/registry/pid" registry docker-registry; }

# Whether the registry holds fnrt/$1:latest built from inputs whose hash is $2 (recorded
# by image_built beside the registry's data, so `demo down` forgets it with the images).
image_current() {
  local f="$FNRT_STATE/registry/built/$1"
  [ -f "$f" ] && [ "$(cat "$f")" = "$2" ] &&
    curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
      "http://$FNRT_REGISTRY/v2/fnrt/$1/manifests/latest" 2>/dev/null
}
image_built() { mkdir -p "$FNRT_STATE/registry/built" && echo "$2" >"$FNRT_STATE/registry/built/$1"; }
inputs_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }

# Builds the fixture program (static x86_64) and packs images of images/ FROM scratch with
# buildah, then pushes them to the registry as $FNRT_REGISTRY/fnrt/<name>:latest; then the
# code runtimes' base images. With no argument every image (the tests'); with names
# (`echo`, `runtime-python311`...) only those. An image whose inputs have not changed since
# it was pushed is not built again.
build_images() {
  log "building fixture program"
  (cd "$ROOT/images/fixture" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --quiet --target x86_64-unknown-linux-gnu)
  local bin="$ROOT/images/fixture/target/x86_64-unknown-linux-gnu/release/fixture"
  local b=(buildah --storage-driver vfs --root "$FNRT_STATE/buildah/root" --runroot "$FNRT_STATE/buildah/run")
  local wanted=" $* "
  for cf in "$ROOT"/images/*/Containerfile; do
    local name ctx hash
    name=$(basename "$(dirname "$cf")")
    [ $# -eq 0 ] || [[ "$wanted" == *" $name "* ]] || continue
    hash=$(inputs_hash "$bin" "$cf")
    if image_current "$name" "$hash"; then continue; fi
    ctx=$(mktemp -d)
    cp "$bin" "$ctx/fixture"
    log "image $FNRT_REGISTRY/fnrt/$name:latest"
    "${b[@]}" bud --quiet --format oci -f "$cf" -t "fnrt/$name:latest" "$ctx" >/dev/null
    "${b[@]}" push --quiet --tls-verify=false "fnrt/$name:latest" "docker://$FNRT_REGISTRY/fnrt/$name:latest"
    if [ "$name" = echo ] && [ $# -eq 0 ]; then
      # The refusal fixtures: the echo image built for arm64 only, and an index that
      # offers only that arm64 manifest.
      log "image $FNRT_REGISTRY/fnrt/arm64-only:latest and fnrt/index-no-amd64:latest"
      "${b[@]}" bud --quiet --format oci --arch arm64 --os linux -f "$cf" -t fnrt/arm64-only:latest "$ctx" >/dev/null
      "${b[@]}" push --quiet --tls-verify=false fnrt/arm64-only:latest "docker://$FNRT_REGISTRY/fnrt/arm64-only:latest"
      "${b[@]}" manifest rm fnrt/index-no-amd64:latest >/dev/null 2>&1 || true
      "${b[@]}" manifest create fnrt/index-no-amd64:latest >/dev/null
      "${b[@]}" manifest add fnrt/index-no-amd64:latest fnrt/arm64-only:latest >/dev/null
      "${b[@]}" manifest push --quiet --all --tls-verify=false fnrt/index-no-amd64:latest \
        "docker://$FNRT_REGISTRY/fnrt/index-no-amd64:latest"
    fi
    rm -rf "$ctx"
    image_built "$name" "$hash"
  done
  if [ $# -eq 0 ]; then
    push_too_large
    build_runtime_images python311 node18 custom
  else
    local rts=()
    for n in "$@"; do case "$n" in runtime-*) rts+=("${n#runtime-}") ;; esac; done
    [ ${#rts[@]} -eq 0 ] || build_runtime_images "${rts[@]}"
  fi
}

# `name=version` of Debian's own build of package `name` (another repository, such as
# NodeSource's for the Serverless Framework's Node.js, may hold a newer candidate), or
# `name` when Debian has none listed.
debian_version_of() {
  local v
  v=$(apt-cache madison "$1" 2>/dev/null | awk -F'|' '/debian\.org/ { gsub(/ /, "", $2); print $2; exit }')
  if [ -n "$v" ]; then echo "$1=$v"; else echo "$1"; fi
}

# The code runtimes' base images named ($@, of runtimes/*), from Debian's packages:
# python311 (CPython 3.11 and fnrt's wrapper), node18 (Node.js 18 and fnrt's wrapper) and
# custom (BusyBox's shell for scf_bootstrap; go119's compiled code runs on it too).
build_runtime_images() {
  local b=(buildah --storage-driver vfs --root "$FNRT_STATE/buildah/root" --runroot "$FNRT_STATE/buildah/run")
  local debs="$ROOT/target/runtime-debs"
  mkdir -p "$debs"
  local python=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g libexpat1 libffi8
    libssl3 libbz2-1.0 liblzma5 libcrypt1 libgcc-s1)
  local custom=(busybox-static)
  local node=(nodejs libnode108 node-acorn node-cjs-module-lexer node-undici libc6 libgcc-s1 libstdc++6 libuv1
    libicu72 libssl3 zlib1g libbrotli1 libc-ares2 libnghttp2-14)
  for rt in "$@"; do
    local ctx pkgs hash
    case "$rt" in
      python311) pkgs=("${python[@]}") ;;
      node18) pkgs=("${node[@]}") ;;
      *) pkgs=("${custom[@]}") ;;
    esac
    hash=$( (echo "${pkgs[*]}"; cat "$ROOT/runtimes/$rt/"*; declare -f build_runtime_images) | sha256sum | cut -d' ' -f1)
    if image_current "runtime-$rt" "$hash"; then continue; fi
    ctx=$(mktemp -d)
    (cd "$debs" && for p in "${pkgs[@]}"; do
      ls "$p"_*.deb >/dev/null 2>&1 || apt-get download -qq "$(debian_version_of "$p")" 2>/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get download -qq "$(debian_version_of "$p")"; }
    done)
    mkdir -p "$ctx/rootfs"
    for p in "${pkgs[@]}"; do dpkg-deb -x "$(ls "$debs/$p"_*.deb | head -1)" "$ctx/rootfs"; done
    rm -rf "$ctx/rootfs/usr/share/doc" "$ctx/rootfs/usr/share/man" "$ctx/rootfs/usr/share/locale"
    if [ "$rt" = custom ]; then
      ln -sf busybox "$ctx/rootfs/bin/sh"
    elif [ "$rt" = python311 ]; then
      # Debian makes the standard library's .pyc files when it installs the package; the
      # image's root is read-only, so without them every start compiles what it imports
      # (3.6 s instead of 0.75 s for the wrapper's imports at a 256 MB function's 0.14
      # vCPU). Hash-based and unchecked: the image never changes under them.
      chroot "$ctx/rootfs" /usr/bin/python3.11 -m compileall -q --invalidation-mode unchecked-hash \
        /usr/lib/python3.11 >/dev/null
    fi
    cp "$ROOT/runtimes/$rt/"* "$ctx/"
    log "image $FNRT_REGISTRY/fnrt/runtime-$rt:latest"
    "${b[@]}" bud --quiet --format oci -f "$ctx/Containerfile" -t "fnrt/runtime-$rt:latest" "$ctx" >/dev/null
    "${b[@]}" push --quiet --tls-verify=false "fnrt/runtime-$rt:latest" "docker://$FNRT_REGISTRY/fnrt/runtime-$rt:latest"
    rm -rf "$ctx"
    image_built "runtime-$rt" "$hash"
  done
}

# Builds and pushes fnrt/large (about 200 MB, several layers) for the benchmarks.
build_large_image() {
  local bin="$ROOT/images/fixture/target/x86_64-unknown-linux-gnu/release/fixture"
  local b=(buildah --storage-driver vfs --root "$FNRT_STATE/buildah/root" --runroot "$FNRT_STATE/buildah/run")
  local ctx
  ctx=$(mktemp -d)
  "$ROOT/images/large/build.sh" "$ctx" "$bin"
  log "image $FNRT_REGISTRY/fnrt/large:latest"
  "${b[@]}" bud --quiet --layers --format oci -f "$ctx/Containerfile" -t fnrt/large:latest "$ctx" >/dev/null
  "${b[@]}" push --quiet --tls-verify=false fnrt/large:latest "docker://$FNRT_REGISTRY/fnrt/large:latest"
  rm -rf "$ctx"
}

# Uploads a blob from a file through the registry's API; prints its digest.
push_blob() {
  local repo=$1 file=$2 digest location
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  location=$(curl -fsS -X POST -D - -o /dev/null "http://$FNRT_REGISTRY/v2/$repo/blobs/uploads/" |
    tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  case "$location" in http*) ;; *) location="http://$FNRT_REGISTRY$location" ;; esac
  case "$location" in *\?*) location="$location&digest=$digest" ;; *) location="$location?digest=$digest" ;; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" "$location" >/dev/null
  echo "$digest"
}

# fnrt/too-large: two layers of 537 MB of random bytes each (over 1 GiB together, each
# under it), real bytes in the registry, pushed through the API since no pull may ever
# unpack them. Built once per registry.
push_too_large() {
  local repo=fnrt/too-large
  curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$FNRT_REGISTRY/v2/$repo/manifests/latest" 2>/dev/null && return 0
  log "image $FNRT_REGISTRY/$repo:latest (2 x 537 MB of random bytes)"
  local tmp d1 d2 cfg dc size=$((537 * 1000 * 1000))
  tmp=$(mktemp -d)
  head -c "$size" /dev/urandom >"$tmp/l1"
  d1=$(push_blob "$repo" "$tmp/l1")
  head -c "$size" /dev/urandom >"$tmp/l1"
  d2=$(push_blob "$repo" "$tmp/l1")
  cfg='{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/fixture","echo"]},"rootfs":{"type":"layers","diff_ids":["'$d1'","'$d2'"]}}'
  printf '%s' "$cfg" >"$tmp/config"
  dc=$(push_blob "$repo" "$tmp/config")
  cat >"$tmp/manifest" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$dc","size":${#cfg}},
 "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$d1","size":$size},
           {"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$d2","size":$size}]}
JSON
  curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "@$tmp/manifest" \
    "http://$FNRT_REGISTRY/v2/$repo/manifests/latest" >/dev/null
  rm -rf "$tmp"
}

build_rust() {
  log "building the workspace"
  (cd "$ROOT" && cargo build --release --quiet --bins)
}

# Removes whatever a stack under $FNRT_STATE left: shims and their containers, mounts,
# network namespaces of the agent's containerd namespace prefix ($1), the bridges ($2...).
# Used by `demo down` and before and after the test suite, so a run that was killed
# half-way never poisons the next one.
scrub_state() {
  local ns_prefix=$1 sock="$FNRT_STATE/containerd/containerd.sock"
  local pids
  pids=$(pgrep -f "containerd-shim.*-address $sock" || true)
  if [ -n "$pids" ]; then
    log "killing leftover shims: $pids"
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
  fi
  stop_containerd
  { grep -F " $FNRT_STATE/" /proc/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  # The instances' /tmp filesystems of test agents (their state is in temporary dirs).
  { grep -F "/scratch/$ns_prefix" /proc/mounts || true; } | awk '{print $2}' | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if [ -d /run/netns ]; then
    for n in /run/netns/"$ns_prefix"*; do
      [ -e "$n" ] || continue
      # Stacked mounts when /run/netns became a shared mount of itself (ip netns does that).
      for _ in 1 2 3 4; do umount -l "$n" 2>/dev/null || break; done
      # One that stays mounted (under a stacked /run/netns) must not stop the scrub.
      rm -f "$n" 2>/dev/null || log "cannot remove $n (still mounted?)"
    done
  fi
  # Processes of an instance whose shim was killed keep its cgroups alive: kill them in
  # every hierarchy first, then remove the cgroups once they are gone.
  local cg_dirs=()
  for cg in /sys/fs/cgroup/fnrt/"$ns_prefix"* /sys/fs/cgroup/*/fnrt/"$ns_prefix"*; do
    if [ -d "$cg" ]; then cg_dirs+=("$cg"); fi
  done
  for cg in "${cg_dirs[@]}"; do
    { xargs -r kill -9 <"$cg/cgroup.procs"; } 2>/dev/null || true
  done
  for cg in "${cg_dirs[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      rmdir "$cg" 2>/dev/null && break
      sleep 0.2
    done
  done
  for root in /sys/fs/cgroup /sys/fs/cgroup/*; do
    rmdir "$root/fnrt" 2>/dev/null || true
  done
  # runsc's state of gVisor instances (their sandbox and file server were killed with
  # their cgroups above); agent/src/runtime/class.rs names this root.
  rm -rf /run/containerd/runsc/"$ns_prefix"*
  # Each bridge given and the agents' network policy for it (agent/src/firewall.rs names it).
  local b
  for b in "${@:2}"; do
    ip link del "$b" 2>/dev/null || true
    nft delete table inet "fnrt_${b//[-.]/_}" 2>/dev/null || true
  done
}

# A virtual environment with Scaleway's official Python SDK (the reference client of the
# control plane's API), pytest, and schemathesis (tests/api_fuzz.rs fuzzes the API against
# its OpenAPI document with it), under target/; exports FNRT_SDK_PYTHON.
ensure_sdk_venv() {
  local venv="$ROOT/target/sdk-venv"
  if ! "$venv/bin/python" -c 'import scaleway, pytest, requests, schemathesis' 2>/dev/null; then
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
      PACKAGES+=(python3 python3-venv)
      ensure_packages
    fi
    log "python virtual environment with the Scaleway SDK ($venv)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      scaleway==2.12.0 scaleway-core==2.12.0 pytest==9.2.0 requests==2.34.2 schemathesis==4.32.5
  fi
  export FNRT_SDK_PYTHON="$venv/bin/python"
}

# The Serverless Framework v3 and Scaleway's plugin for it, at the versions of
# tests/serverless/package-lock.json, under target/serverless (npm ci, from the npm
# registry); exports FNRT_SERVERLESS_DIR. tests/shipped.rs deploys with them.
ensure_serverless() {
  local dir="$ROOT/target/serverless" want="$ROOT/tests/serverless"
  if ! command -v npm >/dev/null 2>&1; then
    PACKAGES+=(nodejs npm)
    ensure_packages
  fi
  if ! cmp -s "$want/package-lock.json" "$dir/package-lock.json" || [ ! -x "$dir/node_modules/.bin/serverless" ] ||
    ! (cd "$dir" && node -e 'require("argon2")' >/dev/null 2>&1); then
    log "the Serverless Framework and Scaleway's plugin ($dir)"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$want/package.json" "$want/package-lock.json" "$dir/"
    # The plugin checks secrets with argon2, a native module built here: Node's headers
    # (in /usr/include/node with Debian's or NodeSource's nodejs), make and g++.
    if [ -f /usr/include/node/node.h ]; then export npm_config_nodedir=/usr; fi
    (cd "$dir" && timeout 900 npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
      die "npm ci of the Serverless Framework failed in $dir (it needs the npm registry, make and g++)"
  fi
  export FNRT_SERVERLESS_DIR="$dir"
}
