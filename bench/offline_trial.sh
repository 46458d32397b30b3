#!/usr/bin/env bash
# The offline trial on a real workspace (a KAI-Scheduler checkout): build
# online, export a bundle, import it into a second, empty Docker engine in a
# network namespace with no route anywhere, build offline there. Prints the
# time of each step, the bundle's size by section, and whether the offline
# build's binary and image digests equal the online build's. Asserts nothing.
#
#   bench/offline_trial.sh KAI_CHECKOUT WORK_DIR [PLATFORM] [TARGET]
#
# WORK_DIR keeps the online cache (cache-a; reused by a second run, so point
# KAIBUILD_CACHE_DIR at an existing cache to skip the first build's work),
# the bundle, and the offline machine's workspace and cache.
set -euo pipefail

kai=$(realpath "$1")
work=$(realpath -m "$2")
platform=${3:-linux/amd64}
target=${4:-//services:scheduler}
here=$(cd "$(dirname "$0")/.." && pwd)
eval "$(bash "$here/scripts/setup-env.sh")"
export PYTHONPATH=$here
cache_a=${KAIBUILD_CACHE_DIR:-$work/cache-a}
unset KAIBUILD_CACHE_DIR
mkdir -p "$work"
rm -rf "$work/bundle" "$work/offline-ws" "$work/cache-b" "$work"/*.events

step() {  # step NAME COMMAND...: run it, print its wall time
    local name=$1 start end
    shift
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    printf 'trial: %-14s %6.1f s\n' "$name" "$(echo "$end - $start" | bc)" >&2
}

kb() { python -m kaibuild "$@"; }

step build-online kb build "$target" --platform "$platform" --workspace "$kai" --cache-dir "$cache_a" --json \
    > "$work/online.events"
step export kb export-offline --platform "$platform" --workspace "$kai" --cache-dir "$cache_a" \
    -o "$work/bundle" --allow-missing
echo "trial: bundle $(du -sh "$work/bundle" | cut -f1); by section:" >&2
du -sh "$work/bundle"/* >&2
python - "$work/bundle/manifest.json" >&2 <<'EOF'
import json, sys
manifest = json.load(open(sys.argv[1]))
images = manifest["images"]
whole = sum(image["size"] for image in images)
blobs = {b for image in images for b in image["blobs"]}
print(f"trial: {len(images)} images, {whole / 1e6:.0f} MB as separate tarballs; {len(blobs)} distinct blobs")
print("trial: missing:", ", ".join(m["name"] for m in manifest["missing"]) or "nothing")
EOF

# The machine with no network: an empty engine in its own network namespace.
engine=$(mktemp -d /var/tmp/kb-trial-engine-XXXXXX)
netns="kaibuild-trial-$$"
ip netns add "$netns"
nsenter --net="/var/run/netns/$netns" ip link set lo up
echo '{"features": {"containerd-snapshotter": true}}' > "$engine/daemon.json"
nsenter --net="/var/run/netns/$netns" dockerd --config-file "$engine/daemon.json" --data-root "$engine/data" \
    --exec-root "$engine/exec" --pidfile "$engine/docker.pid" --host "unix://$engine/docker.sock" \
    > "$engine/dockerd.log" 2>&1 &
dockerd_pid=$!
cleanup() {
    kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null || true
    ip netns delete "$netns" 2>/dev/null || true
    rm -rf "$engine"
}
trap cleanup EXIT
for _ in $(seq 60); do DOCKER_HOST="unix://$engine/docker.sock" docker info >/dev/null 2>&1 && break; sleep 1; done

offline_env=(env DOCKER_HOST="unix://$engine/docker.sock"
             KAIBUILD_REGISTRY_MIRRORS="docker.io=127.0.0.1:9/x,nvcr.io=127.0.0.1:9/x,registry.access.redhat.com=127.0.0.1:9/x")
step import "${offline_env[@]}" python -m kaibuild import-offline "$work/bundle" --workspace "$work/offline-ws" \
    --cache-dir "$work/cache-b"
# The build runs in the namespace too: no route to any registry or proxy.
step build-offline nsenter --net="/var/run/netns/$netns" "${offline_env[@]}" python -m kaibuild build "$target" --offline \
    --platform "$platform" --workspace "$work/offline-ws" --cache-dir "$work/cache-b" --json > "$work/offline.events"

python - "$work/online.events" "$work/offline.events" >&2 <<'EOF'
import json, sys
def digests(path):
    events = [json.loads(line) for line in open(path) if line.startswith("{")]
    return {e["node"]: e["digest"] for e in events if e.get("event") in ("cached", "finished")}
online, offline = digests(sys.argv[1]), digests(sys.argv[2])
for node in sorted(online):
    same = "same" if offline.get(node) == online[node] else "DIFFERENT"
    print(f"trial: {node}: {same} digest online and offline")
EOF
