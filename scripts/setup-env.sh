#!/usr/bin/env bash
# Installs and starts what kaibuild's integration tests and demo need, on a
# fresh Debian 12 machine as root: a Docker engine (containerd image store)
# with buildx, QEMU binfmt for arm64, Go 1.24.4, and a loopback registry
# seeded with stand-in base images under the names kaibuild.toml uses.
# Idempotent: each step checks before it acts, so a second run takes seconds.
# Prints nothing on stdout but the environment to source (scripts/dev-env.sh sources it).
set -euo pipefail

STATE=${KAIBUILD_ENV_DIR:-/var/lib/kaibuild-env}
RUN=${KAIBUILD_ENV_RUN:-/run/kaibuild-env}
REGISTRY_PORT=${KAIBUILD_REGISTRY_PORT:-5055}
REGISTRY=127.0.0.1:$REGISTRY_PORT
GO_VERSION=1.24.4
HERE=$(cd "$(dirname "$0")" && pwd)

log() { echo "setup-env: $*" >&2; }
mkdir -p "$STATE" "$RUN"
# One run at a time: tests and people start it concurrently, and two runs
# would build in the same directories. (Daemons started below close fd 9.)
exec 9>"$RUN/setup-env.lock"
flock -n 9 || { log "waiting for another run of setup-env.sh"; flock 9; }

# --- packages -----------------------------------------------------------
install_packages() {
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  [ -x /usr/libexec/docker/cli-plugins/docker-buildx ] || need+=(docker-buildx)
  [ -e /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
  command -v update-binfmts >/dev/null || need+=(binfmt-support)
  command -v docker-registry >/dev/null || need+=(docker-registry)
  [ -e /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -q '^sh$' && file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v file >/dev/null || need+=(file)
  command -v curl >/dev/null || need+=(curl)
  command -v jq >/dev/null || need+=(jq)
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing ${need[*]}"
  # Debian 12 has no buildx; Debian 13 has docker.io 26 + buildx 0.13. A low
  # pin keeps the rest of the system on bookworm.
  if [ ! -f /etc/apt/sources.list.d/kaibuild-trixie.sources ]; then
    cat > /etc/apt/sources.list.d/kaibuild-trixie.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    cat > /etc/apt/preferences.d/kaibuild-trixie <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq -t trixie docker-buildx docker.io qemu-user-static binfmt-support >&2
  apt-get install -y -qq docker-registry busybox-static debootstrap file curl jq >&2
}

# --- Go 1.24.4 from the Go module proxy (golang.org/toolchain) ----------------
# The toolchain module is a complete GOROOT; the same route gives arm64's.
go_root_for() { # arch -> GOROOT path (downloads once)
  local arch=$1 mod="golang.org/toolchain@v0.0.1-go$GO_VERSION.linux-$1"
  local dir
  dir=$(GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "$mod" 2>/dev/null | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -n "$dir" ] && [ -f "$dir/bin/go" ] || { log "could not download $mod through the Go module proxy"; exit 1; }
  echo "$dir"
}
install_go() {
  if [ -x "$STATE/go/bin/go" ] && "$STATE/go/bin/go" version | grep -q "go$GO_VERSION "; then return 0; fi
  command -v go >/dev/null || { log "a bootstrap 'go' is needed on PATH to fetch Go $GO_VERSION"; exit 1; }
  local root; root=$(go_root_for amd64)
  rm -rf "$STATE/go.tmp"; cp -a "$root" "$STATE/go.tmp"; chmod -R u+w "$STATE/go.tmp"
  # The module cache stores files read-only and without exec bits.
  chmod +x "$STATE/go.tmp"/bin/* "$STATE/go.tmp"/pkg/tool/*/*
  rm -rf "$STATE/go"; mv "$STATE/go.tmp" "$STATE/go"
  log "Go: $("$STATE/go/bin/go" version)"
}

# Go $GO_VERSION for linux/arm64 (for the arm64 golang:*-bullseye stand-in).
# Taken from the Go module proxy when it has it; otherwise (some proxies carry
# only a few arm64 toolchains) from Debian 13's golang-1.24-go:arm64, which is
# Go $GO_VERSION too (its src/ etc. are symlinks into golang-1.24-src: copied
# dereferenced). Runs in $(...), where bash drops set -e: hence the checks.
go_arm64_root() { # -> GOROOT path with bin/go for linux/arm64
  local dir="$STATE/go-linux-arm64" mod="golang.org/toolchain@v0.0.1-go$GO_VERSION.linux-arm64" root dl
  [ -f "$dir/bin/go" ] && grep -qx "go$GO_VERSION" "$dir/VERSION" 2>/dev/null && { echo "$dir"; return; }
  rm -rf "$dir.tmp"
  root=$(GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "$mod" 2>/dev/null | sed -n 's/.*"Dir": "\(.*\)".*/\1/p') || true
  if [ -n "$root" ] && [ -f "$root/bin/go" ]; then
    cp -a "$root" "$dir.tmp"; chmod -R u+w "$dir.tmp"
    # The module cache stores files read-only and without exec bits.
    chmod +x "$dir.tmp"/bin/* "$dir.tmp"/pkg/tool/*/*
  else
    log "$mod is not on the Go module proxy; using Debian's golang-1.24-go:arm64"
    dpkg --print-foreign-architectures | grep -q arm64 || { dpkg --add-architecture arm64; apt-get update -qq >&2; }
    dl=$(mktemp -d)
    (cd "$dl" && apt-get download -qq -t trixie golang-1.24-go:arm64 golang-1.24-src >&2) || { log "apt-get download of Go for arm64 failed"; exit 1; }
    for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$dl/x" || exit 1; done
    grep -qx "go$GO_VERSION" "$dl/x/usr/lib/go-1.24/VERSION" || { log "Debian's Go for arm64 is not $GO_VERSION"; exit 1; }
    cp -aL "$dl/x/usr/lib/go-1.24" "$dir.tmp" || exit 1
    rm -rf "$dl"
  fi
  file -L "$dir.tmp/bin/go" | grep -q aarch64 || { log "$dir.tmp/bin/go is not an arm64 binary"; exit 1; }
  rm -rf "$dir"; mv "$dir.tmp" "$dir"; echo "$dir"
}

# --- QEMU binfmt for arm64 ---------------------------------------------------
enable_binfmt() {
  [ -d /proc/sys/fs/binfmt_misc ] || mkdir -p /proc/sys/fs/binfmt_misc
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  # Debian 13's qemu-user ships a systemd binfmt.d entry; with no systemd we
  # register it ourselves (F: the interpreter is opened now, so it works
  # inside containers too).
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register || true
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { log "qemu-aarch64 binfmt could not be enabled"; exit 1; }
}

# --- Docker engine -------------------------------------------------------
start_dockerd() {
  export DOCKER_HOST=unix://$RUN/docker.sock
  if docker info >/dev/null 2>&1; then return 0; fi
  mkdir -p "$STATE/docker" "$RUN/exec"
  cat > "$STATE/daemon.json" <<JSON
{"features": {"containerd-snapshotter": true}, "storage-driver": "overlayfs"}
JSON
  log "starting dockerd"
  # setsid: the engine outlives the shell (and process group) that started
  # it; logs are appended so a restart keeps the evidence of a crash.
  setsid nohup dockerd --config-file "$STATE/daemon.json" --data-root "$STATE/docker" \
    --exec-root "$RUN/exec" --pidfile "$RUN/docker.pid" --host "$DOCKER_HOST" \
    >>"$STATE/dockerd.log" 2>&1 9>&- &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
  log "dockerd did not start; see $STATE/dockerd.log"; tail -20 "$STATE/dockerd.log" >&2; exit 1
}

# --- loopback registry -----------------------------------------------------
start_registry() {
  if curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1; then return 0; fi
  mkdir -p "$STATE/registry"
  cat > "$STATE/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE/registry}
  delete: {enabled: true}
http: {addr: $REGISTRY}
YML
  log "starting registry on $REGISTRY"
  setsid nohup docker-registry serve "$STATE/registry.yml" >>"$STATE/registry.log" 2>&1 9>&- &
  for _ in $(seq 1 30); do curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "registry did not start; see $STATE/registry.log"; exit 1
}

# --- stand-in base images --------------------------------------------------
# Real registries are unreachable here, so each base image kaibuild.toml names
# is replaced by a small image of the right platform, pushed under the same
# name below $REGISTRY/<original registry host>/... (see the mirrors).
# Bump when a stand-in's content changes, so existing registries are reseeded.
SEED_VERSION=2
has_tag() { [ -e "$STATE/seeded/$1:$2.v$SEED_VERSION" ] && curl -fs -o /dev/null -H 'Accept: application/vnd.oci.image.index.v1+json' "http://$REGISTRY/v2/$1/manifests/$2"; }

busybox_rootfs() { # arch -> dir with a static busybox as /bin/sh etc.
  local arch=$1 dir="$STATE/rootfs/busybox-$1"
  [ -x "$dir/bin/busybox" ] && { echo "$dir"; return; }
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp/bin" "$dir.tmp/tmp" "$dir.tmp/etc"
  if [ "$arch" = amd64 ]; then
    cp /bin/busybox "$dir.tmp/bin/busybox"
  else
    local dl; dl=$(mktemp -d)
    dpkg --print-foreign-architectures | grep -q arm64 || { dpkg --add-architecture arm64; apt-get update -qq >&2; }
    (cd "$dl" && apt-get download -qq busybox-static:arm64 >&2)
    dpkg-deb -x "$dl"/busybox-static_*_arm64.deb "$dl/x"
    cp "$dl/x/bin/busybox" "$dir.tmp/bin/busybox"; rm -rf "$dl"
  fi
  for c in sh ls cat echo env uname sleep true false mkdir cp rm; do ln -sf busybox "$dir.tmp/bin/$c"; done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$dir.tmp/etc/passwd"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"; echo "$dir"
}

distroless_rootfs() { # arch -> busybox plus glibc, like a distroless base with libc
  local arch=$1 dir="$STATE/rootfs/distroless-$1"
  [ -e "$dir/etc/passwd" ] && { echo "$dir"; return; }
  local busy dl; busy=$(busybox_rootfs "$arch"); dl=$(mktemp -d)
  dpkg --print-foreign-architectures | grep -q arm64 || { dpkg --add-architecture arm64; apt-get update -qq >&2; }
  (cd "$dl" && apt-get download -qq "libc6:$arch" >&2)
  rm -rf "$dir.tmp"; cp -a "$busy" "$dir.tmp"
  dpkg-deb -x "$dl"/libc6_*_"$arch".deb "$dl/x"
  cp -a "$dl/x/." "$dir.tmp/"
  # usrmerge layouts put the loader under usr/lib; binaries ask for /lib*/...
  [ -e "$dir.tmp/lib64" ] || [ ! -d "$dir.tmp/usr/lib64" ] || ln -s usr/lib64 "$dir.tmp/lib64"
  [ -e "$dir.tmp/lib" ] || ln -s usr/lib "$dir.tmp/lib"
  rm -rf "$dl" "$dir.tmp/usr/share"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"; echo "$dir"
}

umount_under() { # dir: unmount everything mounted at or below it, deepest first
  local d; d=$(readlink -m "$1")
  awk -v p="$d" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
}

bullseye_go_rootfs() { # [arch] -> faithful stand-in for golang:1.24.4-bullseye
  local arch=${1:-amd64} dir="$STATE/rootfs/golang-bullseye-${1:-amd64}"
  [ -x "$dir/usr/local/go/bin/go" ] && { echo "$dir"; return; }
  umount_under "$dir.tmp"; rm -rf --one-file-system "$dir.tmp"
  if [ "$arch" = amd64 ]; then
    log "debootstrap bullseye (about a minute)"
    debootstrap --variant=minbase --include=gcc,libc6-dev,make,git,ca-certificates,curl \
      bullseye "$dir.tmp" http://deb.debian.org/debian >&2
    cp -a "$STATE/go" "$dir.tmp/usr/local/go"
  else
    # Runs in $(...), where bash drops set -e: hence the explicit checks.
    local goroot t0 t1
    goroot=$(go_arm64_root) || exit 1
    log "debootstrap bullseye $arch, first stage"; t0=$SECONDS
    debootstrap --arch="$arch" --foreign --variant=minbase --include=gcc,libc6-dev,make,git,ca-certificates,curl \
      bullseye "$dir.tmp" http://deb.debian.org/debian >&2 || { log "debootstrap (first stage) failed"; exit 1; }
    log "first stage took $((SECONDS - t0))s; second stage under QEMU (several minutes)"; t1=$SECONDS
    # The second stage mounts /proc (and maybe more) inside; never leave them.
    trap 'umount_under "'"$dir.tmp"'"' EXIT
    chroot "$dir.tmp" /debootstrap/debootstrap --second-stage >&2 || { log "debootstrap (second stage) failed"; exit 1; }
    umount_under "$dir.tmp"; trap - EXIT
    log "second stage took $((SECONDS - t1))s"
    [ ! -e "$dir.tmp/debootstrap" ] || { log "debootstrap left $dir.tmp/debootstrap: incomplete"; exit 1; }
    cp -a "$goroot" "$dir.tmp/usr/local/go" || exit 1
  fi
  mkdir -p "$dir.tmp/go/bin" "$dir.tmp/go/src"
  rm -rf "$dir.tmp/var/cache/apt/archives/"*.deb
  rm -rf "$dir"; mv "$dir.tmp" "$dir"; echo "$dir"
}

import_and_push() { # rootfs platform ref [docker import -c changes...]
  local rootfs=$1 platform=$2 ref=$3; shift 3
  local changes=() c
  for c in "$@"; do changes+=(-c "$c"); done
  tar -C "$rootfs" -c . | docker import --platform "$platform" "${changes[@]}" - "$ref" >/dev/null
  docker push -q "$ref" >/dev/null
}

seed_image() { # repo tag platforms(comma) rootfs-kind [changes...]
  local repo=$1 tag=$2 platforms=$3 kind=$4; shift 4
  has_tag "$repo" "$tag" && return 0
  log "seeding $REGISTRY/$repo:$tag ($platforms)"
  local parts=() p arch rootfs
  for p in ${platforms//,/ }; do
    arch=${p#linux/}
    case $kind in
      busybox) rootfs=$(busybox_rootfs "$arch") ;;
      distroless) rootfs=$(distroless_rootfs "$arch") ;;
      golang-bullseye) rootfs=$(bullseye_go_rootfs "$arch") ;;
    esac
    import_and_push "$rootfs" "$p" "$REGISTRY/$repo:$tag-$arch" "$@"
    parts+=("$REGISTRY/$repo:$tag-$arch")
  done
  docker buildx imagetools create -t "$REGISTRY/$repo:$tag" "${parts[@]}" >&2
  # Leave the engine's store empty of them: builds must get base images
  # through kaibuild, as they would on a user's machine.
  docker image rm "${parts[@]}" >/dev/null 2>&1 || true
  mkdir -p "$(dirname "$STATE/seeded/$repo:$tag")"; touch "$STATE/seeded/$repo:$tag.v$SEED_VERSION"
}

GOLANG_BULLSEYE_CHANGES=(
  'ENV PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV GOPATH=/go' 'ENV GOLANG_VERSION=1.24.4' 'WORKDIR /go' 'CMD ["bash"]')

# golang:1.24.4-bullseye was first seeded amd64-only, and tests pin that
# manifest's digest; so arm64 is added beside it, never by reseeding. The
# index itself is the marker: nothing is done once it lists linux/arm64.
add_arm64_to_golang_bullseye() {
  local repo=docker.io/library/golang tag=1.24.4-bullseye raw amd64
  raw=$(docker buildx imagetools inspect --raw "$REGISTRY/$repo:$tag")
  jq -e '[.manifests[]? | select(.platform.os == "linux" and .platform.architecture == "arm64")] | length > 0' \
    <<<"$raw" >/dev/null && return 0
  amd64=$(jq -r '.manifests[]? | select(.platform.os == "linux" and .platform.architecture == "amd64") | .digest' <<<"$raw")
  [ -n "$amd64" ] || { log "$REGISTRY/$repo:$tag has no linux/amd64 entry to keep"; exit 1; }
  log "adding linux/arm64 to $REGISTRY/$repo:$tag (keeping amd64 $amd64)"
  local rootfs; rootfs=$(bullseye_go_rootfs arm64)
  import_and_push "$rootfs" linux/arm64 "$REGISTRY/$repo:$tag-arm64" "${GOLANG_BULLSEYE_CHANGES[@]}"
  docker buildx imagetools create -t "$REGISTRY/$repo:$tag" "$REGISTRY/$repo@$amd64" "$REGISTRY/$repo:$tag-arm64" >&2
  docker image rm "$REGISTRY/$repo:$tag-arm64" >/dev/null 2>&1 || true
}

seed_images() {
  local busy_env='ENV PATH=/usr/local/bin:/usr/bin:/bin'
  seed_image docker.io/library/golang 1.24.4-bullseye linux/amd64 golang-bullseye "${GOLANG_BULLSEYE_CHANGES[@]}"
  add_arm64_to_golang_bullseye
  seed_image docker.io/library/golang 1.22 linux/amd64,linux/arm64 busybox "$busy_env" 'CMD ["sh"]'
  seed_image nvcr.io/nvidia/distroless/go v3.2.1 linux/amd64,linux/arm64 distroless "$busy_env"
  seed_image registry.access.redhat.com/ubi9/ubi-minimal latest linux/amd64,linux/arm64 busybox "$busy_env" 'CMD ["sh"]'
  # Extra images of the offline bundle.
  seed_image docker.io/golangci/golangci-lint v1.64.8 linux/amd64,linux/arm64 busybox "$busy_env" 'CMD ["sh"]'
  seed_image docker.io/helmunittest/helm-unittest 3.17.2-0.8.1 linux/amd64,linux/arm64 busybox "$busy_env" 'CMD ["sh"]'
}

install_packages
install_go
enable_binfmt
start_dockerd
start_registry
seed_images
cat <<ENV
export DOCKER_HOST=unix://$RUN/docker.sock
export KAIBUILD_REGISTRY_MIRRORS=docker.io=$REGISTRY/docker.io,nvcr.io=$REGISTRY/nvcr.io,registry.access.redhat.com=$REGISTRY/registry.access.redhat.com
export KAIBUILD_TEST_REGISTRY=$REGISTRY
export PATH=$STATE/go/bin:\$PATH
ENV
