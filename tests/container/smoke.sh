#!/usr/bin/env bash
# Container smoke test: build the image from the repo's Dockerfile and prove the sidecar story
# of the README ("Container sidecar") on a Debian bookworm machine WITHOUT a Docker daemon.
#
#   sudo bash tests/container/smoke.sh        (CI runs as root already)
#
# What it proves, in order:
#   1. a stand-in for python:3.11-slim-bookworm (no image registry is reachable here): a
#      debootstrap minbase rootfs with Debian's Python 3.11, committed as
#      localhost/python:3.11-slim-bookworm; built once and reused from a cache outside the repo;
#   2. the image builds from the unchanged Dockerfile through its only seam,
#      --build-arg PYTHON_IMAGE=localhost/python:3.11-slim-bookworm; build time and size printed;
#   3. run 1 (buildah run, chroot isolation, as in issue 14): UID 10001, the three volumes from
#      host folders owned by 10001, the configuration read-only; a dropped CSV gets
#      NAME.status.json "Complete" from `dropzone simulate` on 127.0.0.1; the image's own
#      HEALTHCHECK command exits 0 inside the running container; a second file is in flight
#      (submitted, not finished) when SIGTERM arrives: the daemon exits 0 within 10 s and the
#      journal passes SQLite's integrity_check and still lists that file in flight;
#   4. run 2 (runc, the OCI runtime Docker uses, when available): the same image with a READ-ONLY
#      root filesystem, all capabilities dropped, no-new-privileges, and dropzone as PID 1 (the
#      README's Kubernetes securityContext); it resumes: the in-flight file finishes without being
#      submitted again, a file dropped while the daemon was down is imported, every row reaches the
#      simulator exactly once; health inside; SIGTERM again within 10 s; nothing in the volumes is
#      owned by anyone but 10001. Without runc, run 2 is a second buildah run (read-only skipped).
#
# Needs: root, Debian bookworm (apt-get installs buildah, debootstrap and runc when missing),
# python3 on the host, the machine's apt mirror (read from /etc/apt/sources.list{,.d/}; it is never
# written into the repo) and its pip configuration (/etc/pip.conf, /etc/ssl/certs: mounted into the
# build so pip inside it reaches the same package index with the same certificates).
#
# Knobs (environment):
#   DROPZONE_SMOKE_CACHE=/var/cache/dropzone-ci  base rootfs tarball + buildah storage
#   DROPZONE_SMOKE_STORAGE_DRIVER=overlay|vfs     default: overlay if it mounts here, else vfs
#   DROPZONE_SMOKE_MIRROR=URL                    override the mirror read from apt's sources
#   DROPZONE_SMOKE_READONLY=auto|0               0: no runc, run 2 is a plain buildah run
#   DROPZONE_SMOKE_HOST_DROPZONE=PATH            dropzone for the simulator (default: .venv's)
#   DROPZONE_SMOKE_KEEP=1                        keep the work folder and the image afterwards
# Exit status 0 when every check passed; the last lines are a summary (times, sizes).
set -euo pipefail
export LC_ALL=C    # a '.' in $EPOCHREALTIME, plain messages from the tools

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${DROPZONE_SMOKE_CACHE:-/var/cache/dropzone-ci}
SUITE=bookworm
BASE_IMAGE=localhost/python:3.11-slim-bookworm
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates,passwd
# The base's cache key: this recipe's version (bump it when the recipe changes), the suite, the
# architecture, the package list and the month (a fresh base with the month's security updates).
BASE_RECIPE=1
IMAGE=localhost/dropzone:smoke-$$    # per run: two runs on one machine do not clash
RUNAS=10001:10001
STOP_LIMIT=10          # seconds SIGTERM may take (README: "SIGTERM drains within 10 s")
DEADLINE=90            # seconds any other wait may take before the test fails
JOB_SECONDS=4          # simulator import time: long enough to stop the daemon mid-import
READONLY=${DROPZONE_SMOKE_READONLY:-auto}
KEEP=${DROPZONE_SMOKE_KEEP:-0}
CONFIG_IN=/etc/dropzone/config.yaml

T0=$EPOCHREALTIME
since() { awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[smoke %6ss] %s\n' "$(since "$T0")" "$*"; }
die() { log "FAIL: $*" >&2; exit 1; }
# Any other failing command: say which, where.
trap 'log "FAIL: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR

[ "$(id -u)" = 0 ] || die "run as root: buildah, debootstrap and runc need it here"
command -v python3 >/dev/null || die "python3 is needed on the host"

# ---- tools: Debian's buildah (1.28 on bookworm), debootstrap, and runc for the read-only run ----
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "$READONLY" != 0 ] && ! command -v runc >/dev/null; then need+=(runc); fi
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Without recommends: buildah's chroot isolation needs no OCI runtime; runc is asked for above.
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
log "$(buildah --version | head -n1)"

# ---- buildah storage: our own, under the cache folder, so CI runs share the base ----
mkdir -p "$CACHE"
DRIVER=${DROPZONE_SMOKE_STORAGE_DRIVER:-overlay}
set_storage() { STORAGE="$CACHE/storage-$DRIVER"; RUNROOT="/run/dropzone-ci/$DRIVER"; }
bah() { buildah --root "$STORAGE" --runroot "$RUNROOT" --storage-driver "$DRIVER" "$@"; }
set_storage
if [ -z "${DROPZONE_SMOKE_STORAGE_DRIVER:-}" ]; then
    # overlay needs kernel overlayfs on the storage folder's filesystem; vfs (full copies) always works.
    probe=$(bah from scratch 2>/dev/null) || probe=''
    if [ -z "$probe" ] || ! bah mount "$probe" >/dev/null 2>&1; then DRIVER=vfs; fi
    if [ -n "$probe" ]; then buildah --root "$CACHE/storage-overlay" --runroot /run/dropzone-ci/overlay \
        --storage-driver overlay rm "$probe" >/dev/null 2>&1 || true; fi
    set_storage
fi
log "buildah storage: $DRIVER in $STORAGE"

# ---- the work folder, and cleanup of everything this script started ----
WORK=$(mktemp -d /tmp/dropzone-smoke.XXXXXX)
SIM_PID='' RUN_PID='' DZ_PID='' CTR='' RUNC_ID='' RUNC_ROOT="$WORK/runc" MOUNTED=0 OK=0 ROOTFS_TMP=''
cleanup() {
    local rc=$?
    set +e
    if [ -n "$RUNC_ID" ]; then runc --root "$RUNC_ROOT" delete --force "$RUNC_ID" >/dev/null 2>&1; fi
    # Only the processes this script started, by their id.
    if [ -n "$DZ_PID" ] && kill -0 "$DZ_PID" 2>/dev/null; then kill -KILL "$DZ_PID"; fi
    if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then kill -KILL "$RUN_PID"; fi
    if [ -n "$SIM_PID" ] && kill -0 "$SIM_PID" 2>/dev/null; then kill -TERM "$SIM_PID"; fi
    wait 2>/dev/null
    [ -n "$ROOTFS_TMP" ] && rm -rf "$ROOTFS_TMP"       # a debootstrap cut short
    if [ -n "$CTR" ]; then
        [ "$MOUNTED" = 1 ] && bah umount "$CTR" >/dev/null 2>&1
        bah rm "$CTR" >/dev/null 2>&1
    fi
    if [ "$OK" != 1 ]; then
        for f in "$WORK"/run1.log "$WORK"/run2.log "$WORK"/simulator.log; do
            [ -s "$f" ] && { echo "---- last lines of $f"; tail -n 25 "$f"; }
        done
    fi
    if [ "$KEEP" = 1 ]; then
        log "kept: work folder $WORK, image $IMAGE"
    else
        bah rmi "$IMAGE" >/dev/null 2>&1
        bah rmi --prune >/dev/null 2>&1    # the dangling images of earlier runs (our storage only)
        if [ "$OK" = 1 ]; then rm -rf "$WORK"; else log "work folder kept for a look: $WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT

# ---- 1. the base image standing in for python:3.11-slim-bookworm ----
arch=$(dpkg --print-architecture)
BASE_KEY=$(printf '%s\n' "recipe=$BASE_RECIPE" "suite=$SUITE" "arch=$arch" "packages=$BASE_PACKAGES" \
    "month=$(date -u +%Y-%m)" | sha256sum | cut -c1-16)
base_key() { bah inspect --type image --format '{{index .OCIv1.Config.Labels "org.dropzone.ci.base-key"}}' \
    "$BASE_IMAGE" 2>/dev/null || true; }
t_base=$EPOCHREALTIME
BASE_HOW="reused (image in the cache's storage)"
if [ "$(base_key)" != "$BASE_KEY" ]; then
    exec 9>"$CACHE/base.lock"
    flock 9                           # two CI runs on one machine build it once
    if [ "$(base_key)" != "$BASE_KEY" ]; then
        tarball="$CACHE/base-$BASE_KEY.tar"
        if [ -s "$tarball" ]; then
            BASE_HOW="imported from the cached rootfs $tarball"
        else
            BASE_HOW="built with debootstrap"
            # The mirror this machine's apt uses: the first enabled "deb" source for the suite's
            # main component (deb822 .sources or one-line .list). Read here, never stored in the repo.
            mirror=${DROPZONE_SMOKE_MIRROR:-$(python3 - "$SUITE" <<'PY'
import glob, re, sys
suite = sys.argv[1]
paths = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list")),
         *sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))]
uris = []
for path in paths:
    try:
        text = open(path, encoding="utf-8").read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for stanza in re.split(r"\n[ \t]*\n", text):
            fields, key = {}, None
            for line in stanza.splitlines():
                if not line.strip() or line.startswith("#"):
                    continue
                if line[0] in " \t" and key:
                    fields[key] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                continue
            if suite in fields.get("suites", "").split() and "main" in fields.get("components", "").split():
                uris += fields.get("uris", "").split()
    else:
        for line in text.splitlines():
            m = re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line.split("#", 1)[0].strip())
            if m and m.group(2) == suite and "main" in m.group(3).split():
                uris.append(m.group(1))
uris = [u for u in uris if u.startswith(("http://", "https://", "file:/"))]
if not uris:
    sys.exit(f"no enabled 'deb' source for {suite} main in /etc/apt/sources.list or sources.list.d/")
print(uris[0].rstrip("/"))
PY
)}
            rootfs="$CACHE/rootfs.$$"
            ROOTFS_TMP=$rootfs
            rm -rf "$rootfs"
            log "debootstrap $SUITE minbase + $BASE_PACKAGES (about a minute)"
            if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$mirror" \
                    >"$WORK/debootstrap.log" 2>&1; then
                tail -n 20 "$WORK/debootstrap.log"
                rm -rf "$rootfs"
                die "debootstrap failed (log above)"
            fi
            # Slim like the real image: no package caches, lists, docs, man pages, translations; no
            # host files that debootstrap copied in (the runtime provides resolv.conf and hostname).
            rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
                "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
                "$rootfs"/usr/share/locale/* "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
            tar --numeric-owner -C "$rootfs" -cf "$tarball.partial" .
            mv "$tarball.partial" "$tarball"
            rm -rf "$rootfs"
            ROOTFS_TMP=''
            find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$BASE_KEY.tar" -delete   # older keys
        fi
        ctr=$(bah from scratch)
        bah add "$ctr" "$tarball" / >/dev/null
        # What python:3.11-slim-bookworm sets, plus the key that says which recipe made it.
        bah config --env LANG=C.UTF-8 \
            --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --cmd python3 --label "org.dropzone.ci.base-key=$BASE_KEY" "$ctr"
        bah commit --rm -q "$ctr" "$BASE_IMAGE" >/dev/null
        bah rmi --prune >/dev/null 2>&1 || true      # the previous base, now untagged
    fi
    flock -u 9
fi
BASE_S=$(since "$t_base")
log "base $BASE_IMAGE: $BASE_HOW, ${BASE_S}s"

# ---- 2. the image, from the repo's Dockerfile through its PYTHON_IMAGE seam ----
grep -q '^ARG PYTHON_IMAGE=python:3.11-slim-bookworm$' "$REPO/Dockerfile" \
    || die "the Dockerfile lacks 'ARG PYTHON_IMAGE=python:3.11-slim-bookworm' (the base image seam)"
# shellcheck disable=SC2016  # a literal ${PYTHON_IMAGE}
grep -Fq 'FROM ${PYTHON_IMAGE}' "$REPO/Dockerfile" || die "no stage is FROM \${PYTHON_IMAGE}"
build=(--format docker --isolation chroot --pull-never --layers=false
       --build-arg "PYTHON_IMAGE=$BASE_IMAGE" -f "$REPO/Dockerfile" -t "$IMAGE")
# pip inside the build: the host's index configuration and certificates (a proxy's CA, say).
[ -f /etc/pip.conf ] && build+=(-v /etc/pip.conf:/etc/pip.conf:ro)
[ -d /etc/ssl/certs ] && build+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
log "building $IMAGE (--format docker keeps the HEALTHCHECK)"
t_build=$EPOCHREALTIME
if ! bah bud "${build[@]}" "$REPO" >"$WORK/build.log" 2>&1; then
    tail -n 30 "$WORK/build.log"
    die "the image did not build (log above)"
fi
BUILD_S=$(since "$t_build")
IMAGE_SIZE=$(bah images --format '{{.Size}}' "$IMAGE" | head -n1)
BASE_SIZE=$(bah images --format '{{.Size}}' "$BASE_IMAGE" | head -n1)
log "built in ${BUILD_S}s: $IMAGE_SIZE ($BASE_SIZE of it the stand-in base)"

# What the image declares, read from it rather than assumed: user, volumes, HEALTHCHECK, env, cwd.
bah inspect --type image "$IMAGE" >"$WORK/image.json"
python3 - "$WORK/image.json" "$WORK" <<'PY'
import json, shlex, sys
cfg = json.load(open(sys.argv[1]))["Docker"]["config"]
out = sys.argv[2]
assert cfg.get("User") == "10001:10001", f"image user is {cfg.get('User')!r}, not 10001:10001"
test = (cfg.get("Healthcheck") or {}).get("Test") or []
assert test[:1] == ["CMD"] and len(test) > 1, f"no exec-form HEALTHCHECK in the image: {test!r}"
want = {"/data/inbox", "/data/outbox", "/var/lib/dropzone"}
assert set(cfg.get("Volumes") or {}) == want, f"image volumes {sorted(cfg.get('Volumes') or {})}"
assert cfg.get("StopSignal") in (None, "SIGTERM"), cfg.get("StopSignal")
open(f"{out}/healthcheck", "w").write(shlex.join(test[1:]) + "\n")
open(f"{out}/volumes", "w").write("\n".join(sorted(want)) + "\n")
json.dump({"env": cfg.get("Env") or [], "cwd": cfg.get("WorkingDir") or "/",
           "cmd": (cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or [])}, open(f"{out}/process.json", "w"))
PY
read -r -a HEALTH <"$WORK/healthcheck"
log "image: user 10001:10001, volumes $(tr '\n' ' ' <"$WORK/volumes"), HEALTHCHECK: ${HEALTH[*]}"

# ---- 3. the simulator on the host, and the folders the container gets ----
HOST_DZ=${DROPZONE_SMOKE_HOST_DROPZONE:-$REPO/.venv/bin/dropzone}
if [ ! -x "$HOST_DZ" ]; then
    # A fresh machine without the project's venv: a throwaway one (built from a copy, so nothing
    # is written into the repo).
    log "no $HOST_DZ: installing dropzone into a throwaway venv for the simulator"
    mkdir -p "$WORK/src"
    cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/dropzone" "$WORK/src/"
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q "$WORK/src"
    HOST_DZ="$WORK/venv/bin/dropzone"
fi
"$HOST_DZ" simulate --port 0 --client-id smoke --client-secret smoke-secret \
    --job-seconds "$JOB_SECONDS" --record "$WORK/records.jsonl" >"$WORK/simulator.log" 2>&1 &
SIM_PID=$!

# wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds, or fail the test.
wait_for() {
    local limit=$1 what=$2 start=$EPOCHREALTIME
    shift 2
    until "$@"; do
        if [ -n "$RUN_PID" ] && ! kill -0 "$RUN_PID" 2>/dev/null; then
            die "the container exited while waiting for $what (its log below)"
        fi
        if awk -v a="$start" -v b="$EPOCHREALTIME" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
            die "waited ${limit}s for $what"
        fi
        sleep 0.2
    done
}
wait_for 30 "the simulator to listen" grep -q 'listening on http://127.0.0.1:' "$WORK/simulator.log"
SIM_PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$WORK/simulator.log" | grep -o '[0-9]*$')
HTTP_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "simulator on 127.0.0.1:$SIM_PORT (imports take ${JOB_SECONDS}s); daemon's http on 127.0.0.1:$HTTP_PORT"

# Host folders as an SFTP server sharing them would leave them: owned by 10001, nothing inside but
# a sentinel that must be visible in the container (buildah 1.28 can shadow a -v mount with the
# anonymous volume of the Dockerfile's VOLUME; a daemon watching an empty folder looks healthy).
mkdir -p "$WORK/inbox" "$WORK/outbox" "$WORK/state" "$WORK/config"
for d in inbox outbox state; do touch "$WORK/$d/.smoke-sentinel"; done
chown -R "$RUNAS" "$WORK/inbox" "$WORK/outbox" "$WORK/state"
cat >"$WORK/config/config.yaml" <<EOF
# dropzone smoke test: the simulator on the host's loopback, short timings.
marketo:
  endpoint: http://127.0.0.1:$SIM_PORT
  client_id: smoke
  client_secret: smoke-secret
  poll_interval: 1
state_dir: /var/lib/dropzone
inboxes:
  - path: /data/inbox
    outbox: /data/outbox
    scan_interval: 1
    quiet_period: 1
    routes:
      - match: "leads_*.csv"
        object: leads
http:
  listen: 127.0.0.1:$HTTP_PORT
log:
  format: json
EOF
chmod 0755 "$WORK/config"; chmod 0644 "$WORK/config/config.yaml"    # root's, read-only mounted

VOLS=(-v "$WORK/inbox:/data/inbox" -v "$WORK/outbox:/data/outbox" -v "$WORK/state:/var/lib/dropzone"
      -v "$WORK/config:/etc/dropzone:ro")
CTR=$(bah from --pull-never --name "dropzone-smoke-$$" "$IMAGE")
# The workaround for that shadowing: drop the image's anonymous volumes from this working container
# (the "-" suffix removes one); the -v mounts then always win. Docker and Kubernetes need none.
unvol=()
while read -r v; do unvol+=(--volume "$v-"); done <"$WORK/volumes"
bah config "${unvol[@]}" "$CTR"
ctr_run() { bah run --isolation chroot --user "$RUNAS" "${VOLS[@]}" "$CTR" -- "$@"; }

# The daemon's command line: the image's ENTRYPOINT+CMD behind a guard that checks the sentinels
# in the same mount namespace and prints the PID that becomes dropzone's (exec keeps it).
# shellcheck disable=SC2016  # expanded by sh inside the container, not here
GUARD='for d in /data/inbox /data/outbox /var/lib/dropzone; do
  [ -e "$d/.smoke-sentinel" ] || { echo "smoke: $d is not the host folder (a volume shadows it)" >&2; exit 97; }
done; echo "smoke: pid $$" >&2; exec "$@"'
read -r -a DAEMON_CMD < <(python3 -c 'import json, shlex, sys; print(shlex.join(json.load(open(sys.argv[1]))["cmd"]))' \
    "$WORK/process.json")
[ "${DAEMON_CMD[*]}" = "dropzone run --config $CONFIG_IN" ] || die "unexpected ENTRYPOINT+CMD: ${DAEMON_CMD[*]}"

# drop NAME ROWS: write a CSV as the SFTP user would (owned by 10001), under a hidden name first and
# renamed into place, with unique e-mails so every row can be followed to the simulator.
drop() {
    local name=$1 rows=$2 i
    {
        echo "email,firstName,lastName"
        for ((i = 1; i <= rows; i++)); do echo "$name-$i@smoke.example,Row$i,${name%%.*}"; done
    } >"$WORK/inbox/.$name.part"
    chown "$RUNAS" "$WORK/inbox/.$name.part"
    mv "$WORK/inbox/.$name.part" "$WORK/inbox/$name"
}
status_of() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["status"])' "$WORK/outbox/$1.status.json"; }
complete() { [ -s "$WORK/outbox/$1.status.json" ] && [ "$(status_of "$1")" = Complete ]; }
submissions() { grep -c '"record": "submission"' "$WORK/records.jsonl" 2>/dev/null || true; }
at_least_submissions() { [ "$(submissions)" -ge "$1" ]; }
healthy() { "$@" "${HEALTH[@]}" >"$WORK/health.out" 2>&1; }

# stop_within PID WHAT: wait for PID (a child of this shell) to exit, at most STOP_LIMIT seconds;
# sets STOP_S and STOP_RC.
stop_within() {
    local pid=$1 what=$2 start=$3
    while kill -0 "$pid" 2>/dev/null; do
        if awk -v a="$start" -v b="$EPOCHREALTIME" -v l="$STOP_LIMIT" 'BEGIN { exit !(b - a > l) }'; then
            die "$what still running ${STOP_LIMIT}s after SIGTERM"
        fi
        sleep 0.1
    done
    STOP_S=$(since "$start")
    STOP_RC=0
    wait "$pid" || STOP_RC=$?
}

# ---- run 1: buildah run (chroot isolation) ----
log "run 1: buildah run --isolation chroot --user $RUNAS, config read-only"
t_run1=$EPOCHREALTIME
bah run --isolation chroot --user "$RUNAS" "${VOLS[@]}" "$CTR" -- sh -c "$GUARD" sh "${DAEMON_CMD[@]}" \
    </dev/null >"$WORK/run1.log" 2>&1 &
RUN_PID=$!
wait_for 30 "run 1 to start" grep -q '^smoke: pid [0-9]*$' "$WORK/run1.log"
DZ_PID=$(sed -n 's/^smoke: pid \([0-9]*\)$/\1/p' "$WORK/run1.log")
# chroot isolation shares the host's PID namespace: that PID is dropzone's on the host too.
runs_dropzone() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'bin/dropzone run --config'; }
wait_for 10 "dropzone to exec" runs_dropzone "$DZ_PID"
wait_for 60 "the HEALTHCHECK to pass in run 1" healthy ctr_run
log "run 1: up (pid $DZ_PID), healthy after $(since "$t_run1")s: $(tr '\n' ' ' <"$WORK/health.out")"

t_file=$EPOCHREALTIME
drop leads_1.csv 3
wait_for "$DEADLINE" "leads_1.csv.status.json Complete" complete leads_1.csv
log "run 1: leads_1.csv -> status Complete in $(since "$t_file")s"
healthy ctr_run || die "HEALTHCHECK failed after the import: $(cat "$WORK/health.out")"
log "run 1: HEALTHCHECK inside the running container: exit 0"

# A second file, stopped mid-import: SIGTERM right after the simulator took its submission.
drop leads_2.csv 4
wait_for "$DEADLINE" "leads_2.csv to be submitted" at_least_submissions 2
t_stop=$EPOCHREALTIME
# What docker stop and the kubelet do: SIGTERM to the container's main process. Not to buildah:
# `buildah run` does not forward SIGTERM, it kills its child ("subprocess exited on killed").
kill -TERM "$DZ_PID"
stop_within "$RUN_PID" "run 1" "$t_stop"
DZ_PID='' RUN_PID=''
STOP1_S=$STOP_S
[ "$STOP_RC" = 0 ] || die "run 1 exited $STOP_RC after SIGTERM (expected 0)"
grep -q '"event": "daemon_stopping"' "$WORK/run1.log" || die "run 1: no daemon_stopping in its log"
log "run 1: SIGTERM -> exit 0 in ${STOP1_S}s (limit ${STOP_LIMIT}s)"
[ ! -e "$WORK/outbox/leads_2.csv.status.json" ] || log "note: leads_2.csv finished before the stop; resume check is weaker"

# The journal after the stop: SQLite's own check, read-only, as 10001; and leads_2.csv in flight.
ctr_run python -c 'import sqlite3, sys
db = sqlite3.connect("file:/var/lib/dropzone/journal.sqlite3?mode=ro", uri=True)
r = db.execute("PRAGMA integrity_check").fetchone()[0]
print("integrity_check:", r)
sys.exit(r != "ok")' >"$WORK/journal.out" 2>&1 || die "journal: $(cat "$WORK/journal.out")"
ctr_run dropzone status --config "$CONFIG_IN" >"$WORK/status1.out" 2>&1 || die "dropzone status: $(cat "$WORK/status1.out")"
grep -q 'leads_2.csv' "$WORK/status1.out" || die "leads_2.csv is not in the journal: $(cat "$WORK/status1.out")"
log "run 1: journal $(cat "$WORK/journal.out"); $(grep -m1 '^in flight' "$WORK/status1.out")"
RUN1_S=$(since "$t_run1")

# A file arriving while the daemon is down.
drop leads_3.csv 2

# ---- run 2: the same container, read-only root, resuming ----
if [ "$READONLY" != 0 ] && command -v runc >/dev/null; then
    RUN2_HOW="runc, read-only root, no capabilities, dropzone as PID 1"
else
    RUN2_HOW="buildah run (read-only root not tried: DROPZONE_SMOKE_READONLY=0 or no runc)"
fi
log "run 2: $RUN2_HOW"
t_run2=$EPOCHREALTIME
if [[ $RUN2_HOW == runc* ]]; then
    # buildah run has no --read-only; runc (Docker's runtime) takes an OCI bundle whose root is this
    # working container's filesystem, mounted read-only as docker run --read-only or
    # readOnlyRootFilesystem: true would. The host network is shared (the simulator is on loopback),
    # as containers of one Kubernetes pod share theirs.
    ROOTFS=$(bah mount "$CTR")
    MOUNTED=1
    mkdir -p "$WORK/bundle" "$RUNC_ROOT"
    (cd "$WORK/bundle" && runc spec)
    python3 - "$WORK/bundle/config.json" "$ROOTFS" "$WORK" "$RUNAS" "$WORK/process.json" "$GUARD" <<'PY'
import json, sys
path, rootfs, work, runas, process, guard = sys.argv[1:]
spec = json.load(open(path))
image = json.load(open(process))
uid, gid = (int(x) for x in runas.split(":"))
spec["root"] = {"path": rootfs, "readonly": True}
proc = spec["process"]
proc.update(terminal=False, user={"uid": uid, "gid": gid}, cwd=image["cwd"], env=image["env"],
            args=["sh", "-c", guard, "sh", *image["cmd"]], noNewPrivileges=True)
proc["capabilities"] = {k: [] for k in proc.get("capabilities", {})}   # drop: [ALL]
spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
for src, dst, ro in (("inbox", "/data/inbox", False), ("outbox", "/data/outbox", False),
                     ("state", "/var/lib/dropzone", False), ("config", "/etc/dropzone", True)):
    spec["mounts"].append({"destination": dst, "type": "bind", "source": f"{work}/{src}",
                           "options": ["rbind", "nosuid", "nodev", "ro" if ro else "rw"]})
json.dump(spec, open(path, "w"), indent=1)
PY
    RUNC_ID="dropzone-smoke-$$"
    runc --root "$RUNC_ROOT" run --bundle "$WORK/bundle" "$RUNC_ID" </dev/null >"$WORK/run2.log" 2>&1 &
    RUN_PID=$!
    inside() { runc --root "$RUNC_ROOT" exec --user "$RUNAS" --cwd /var/lib/dropzone "$RUNC_ID" "$@"; }
    wait_for 30 "run 2 to start" grep -q '^smoke: pid 1$' "$WORK/run2.log"
else
    bah run --isolation chroot --user "$RUNAS" "${VOLS[@]}" "$CTR" -- sh -c "$GUARD" sh "${DAEMON_CMD[@]}" \
        </dev/null >"$WORK/run2.log" 2>&1 &
    RUN_PID=$!
    inside() { ctr_run "$@"; }
    wait_for 30 "run 2 to start" grep -q '^smoke: pid [0-9]*$' "$WORK/run2.log"
    DZ_PID=$(sed -n 's/^smoke: pid \([0-9]*\)$/\1/p' "$WORK/run2.log")
fi
wait_for "$DEADLINE" "leads_2.csv (in flight at the stop) to finish" complete leads_2.csv
wait_for "$DEADLINE" "leads_3.csv (dropped while down) to finish" complete leads_3.csv
log "run 2: resumed: leads_2.csv and leads_3.csv Complete $(since "$t_run2")s after the start"
healthy inside || die "HEALTHCHECK failed in run 2: $(cat "$WORK/health.out")"
log "run 2: HEALTHCHECK inside the running container: exit 0"
RO_RESULT="not tried"
if [ -n "$RUNC_ID" ]; then
    # Even root inside cannot write the image's files: EROFS, not a permission error.
    if runc --root "$RUNC_ROOT" exec --user 0:0 "$RUNC_ID" sh -c ': > /opt/dropzone/.smoke-write' \
            >"$WORK/ro.out" 2>&1; then
        die "the root filesystem is writable in run 2"
    fi
    grep -qi 'read-only' "$WORK/ro.out" || die "write refused, but not as read-only: $(cat "$WORK/ro.out")"
    RO_RESULT="passed"
    log "run 2: root filesystem read-only ($(tr '\n' ' ' <"$WORK/ro.out"))"
fi

# Every row reached the simulator exactly once, and leads_2.csv was not submitted again.
python3 - "$WORK/records.jsonl" <<'PY' || die "the simulator's records disagree (above)"
import collections, json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
subs = [r for r in records if r["record"] == "submission"]
rows = collections.Counter(r["row"]["email"] for r in records if r["record"] == "row")
want = {f"leads_{f}.csv-{i}@smoke.example" for f, n in ((1, 3), (2, 4), (3, 2)) for i in range(1, n + 1)}
problems = []
if len(subs) != 3:
    problems.append(f"{len(subs)} submissions, expected 3 (one per file: none resubmitted)")
if set(rows) != want:
    problems.append(f"rows missing {sorted(want - set(rows))}, unexpected {sorted(set(rows) - want)}")
if any(n != 1 for n in rows.values()):
    problems.append(f"duplicate rows: {sorted(e for e, n in rows.items() if n != 1)}")
print("simulator:", f"{len(subs)} submissions, {sum(rows.values())} rows, {len(rows)} distinct")
sys.exit("; ".join(problems) or 0)
PY

t_stop=$EPOCHREALTIME
if [ -n "$RUNC_ID" ]; then
    runc --root "$RUNC_ROOT" kill "$RUNC_ID" TERM     # to PID 1, as docker stop does
else
    kill -TERM "$DZ_PID"
fi
stop_within "$RUN_PID" "run 2" "$t_stop"
RUN_PID='' DZ_PID=''
STOP2_S=$STOP_S
[ "$STOP_RC" = 0 ] || die "run 2 exited $STOP_RC after SIGTERM (expected 0)"
RUNC_ID=''     # runc run (not detached) deletes its container when the process exits
log "run 2: SIGTERM -> exit 0 in ${STOP2_S}s (limit ${STOP_LIMIT}s)"
RUN2_S=$(since "$t_run2")

# Afterwards: a sound journal, nothing in flight, every file and folder still 10001's, and no
# claimed file left behind in the inbox's .processing area.
ctr_run python -c 'import sqlite3, sys
db = sqlite3.connect("file:/var/lib/dropzone/journal.sqlite3?mode=ro", uri=True)
r = db.execute("PRAGMA integrity_check").fetchone()[0]
print("integrity_check:", r)
sys.exit(r != "ok")' >"$WORK/journal.out" 2>&1 || die "journal after run 2: $(cat "$WORK/journal.out")"
ctr_run dropzone status --config "$CONFIG_IN" >"$WORK/status2.out" 2>&1 || die "dropzone status: $(cat "$WORK/status2.out")"
grep -q '^in flight: 0$' "$WORK/status2.out" || die "files still in flight: $(cat "$WORK/status2.out")"
foreign=$(find "$WORK/inbox" "$WORK/outbox" "$WORK/state" ! -uid "${RUNAS%%:*}" -printf '%u %p\n' | head -n 5)
[ -z "$foreign" ] || die "not owned by ${RUNAS%%:*}: $foreign"
left=$(find "$WORK/inbox" -path '*/.processing/*' -type f | head -n 5)
[ -z "$left" ] || die "left in .processing: $left"
log "after: journal $(cat "$WORK/journal.out"), in flight 0, volumes all ${RUNAS%%:*}'s, .processing empty"

OK=1
cat <<EOF

==== dropzone container smoke test: PASSED ====
buildah            $(buildah --version | awk '{print $3}') ($DRIVER storage), runc: $(command -v runc >/dev/null && runc --version | awk 'NR==1{print $3}' || echo none)
base image         $BASE_HOW in ${BASE_S}s ($BASE_SIZE)
image build        ${BUILD_S}s
image size         $IMAGE_SIZE (stand-in base $BASE_SIZE; the real python:3.11-slim-bookworm differs)
run 1 (buildah)    import ok, HEALTHCHECK ok, SIGTERM exit 0 in ${STOP1_S}s, journal ok (${RUN1_S}s)
run 2              $RUN2_HOW
                   resumed ok, HEALTHCHECK ok, read-only root: $RO_RESULT, SIGTERM exit 0 in ${STOP2_S}s (${RUN2_S}s)
total              $(since "$T0")s
EOF
