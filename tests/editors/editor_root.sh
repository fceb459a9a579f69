#!/usr/bin/env bash
# Cached Debian roots with real GIMP 3 and Krita, for headless editor tests.
#
# Usage: editor_root.sh NAME COMMAND [ARGS]
#   NAME          trixie  GIMP 3.0 + Krita 5.2 (Qt5)   Debian trixie
#                 forky   GIMP 3.2 + Krita 5.3 (Qt5)   Debian forky
#                 krita6  Krita 6 (Qt6), no GIMP       Debian forky + krita from experimental
#   build         build the root if it is missing or stale, and mount /proc /sys /dev /dev/pts /dev/shm
#   path          same as build, then print the root's path on stdout
#   run CMD...    run CMD inside the root (HOME=$LM_HOME, default /root; LANG=C.UTF-8; clean environment;
#                 prefix CMD with `env VAR=VALUE ...` to pass variables)
#   bind DIR      bind-mount host directory DIR at the same path inside the root
#   unbind DIR    undo `bind DIR`
#   umount        unmount everything under the root (it stays built)
#   rebuild       wipe and build again
#
# Root: ${XDG_CACHE_HOME:-$HOME/.cache}/layermatte-ci/NAME-root
#       (LAYERMATTE_EDITOR_ROOT overrides the trixie root's path, LAYERMATTE_EDITOR_ROOTS the parent folder).
# Mirror: the Debian mirror of the host's apt sources (override: LAYERMATTE_DEBIAN_MIRROR).
# Exit code 77: this host cannot build the root (not root, no apt-get, mmdebstrap not installable).
# Several processes may call this at once: building and mounting are serialised with flock (one lock per root).
set -euo pipefail

NAME="${1:-}"
[ $# -gt 0 ] && shift
ROOT_VERSION=1
COMMON=(python3-gi xvfb xauth python3-grpcio python3-protobuf python3-numpy python3-pil)
EXTRA_SUITE=""     # a suite added to the root's sources, only for EXTRA packages (apt-get install -t)
EXTRA=()
case "$NAME" in
  trixie) SUITE=trixie; PACKAGES=(gimp python3-gi gir1.2-gimp-3.0 krita python3-pyqt5 xvfb xauth
                                  python3-grpcio python3-protobuf python3-numpy python3-pil) ;;
  forky)  SUITE=forky; PACKAGES=(gimp gir1.2-gimp-3.0 krita python3-pyqt5 "${COMMON[@]}") ;;
  krita6) SUITE=forky; PACKAGES=("${COMMON[@]}"); EXTRA_SUITE=experimental; EXTRA=(krita python3-pyqt6) ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
BASE="${LAYERMATTE_EDITOR_ROOTS:-${XDG_CACHE_HOME:-$HOME/.cache}/layermatte-ci}"
if [ "$NAME" = trixie ] && [ -n "${LAYERMATTE_EDITOR_ROOT:-}" ]; then ROOT="$LAYERMATTE_EDITOR_ROOT"
else ROOT="$BASE/$NAME-root"; fi
ROOT="${ROOT%/}"
MARKER="$ROOT/.layermatte-ready"
LOCK="$ROOT.lock"
MOUNTS=(/proc /sys /dev /dev/pts /dev/shm)
EXPECTED_MARKER="layermatte $NAME root v$ROOT_VERSION: ${PACKAGES[*]}${EXTRA_SUITE:+ + $EXTRA_SUITE: ${EXTRA[*]}}"
# The mirror's Release files for forky/sid/experimental were seen past their Valid-Until date (the
# signatures are still checked). Trixie's root is built as before.
APT_OPTS=() MMDEBSTRAP_OPTS=()
if [ "$SUITE" != trixie ]; then
  APT_OPTS=(-o Acquire::Check-Valid-Until=false)
  MMDEBSTRAP_OPTS=(--aptopt='Acquire::Check-Valid-Until "false"')
fi

log() { printf '[%s_root] %s\n' "$NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }
cannot() { log "cannot build the editor root on this host: $*"; exit 77; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME CMD...: run CMD and print how long it took.
step() {
  local name="$1" t0 t1 rc=0
  shift
  t0=$(now)
  log "$name ..."
  "$@" || rc=$?
  t1=$(now)
  log "$name: $(secs "$t0" "$t1") s (exit $rc)"
  return "$rc"
}

lock() {
  mkdir -p "$(dirname "$ROOT")"
  exec 9>"$LOCK"
  flock 9
}
unlock() { flock -u 9; exec 9>&-; }

# The first Debian archive entry of the host's apt sources (deb822 and one-line formats).
host_mirror() {
  if [ -n "${LAYERMATTE_DEBIAN_MIRROR:-}" ]; then echo "$LAYERMATTE_DEBIAN_MIRROR"; return; fi
  local codename f
  codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  local suites="$codename stable testing unstable sid oldstable bullseye bookworm trixie forky"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v good="$suites" '
      BEGIN { n = split(good, g, " "); for (i = 1; i <= n; i++) ok[g[i]] = 1 }
      $1 == "deb" {
        line = $0; sub(/^deb[ \t]+/, "", line); gsub(/\[[^]]*\]/, "", line)
        m = split(line, w, " ")
        if (m >= 3 && (w[2] in ok) && w[1] !~ /security/) {
          for (i = 3; i <= m; i++) if (w[i] == "main") { print w[1]; exit }
        }
      }' "$f" | head -n1
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v good="$suites" '
      function flush(   n, i, s, u, hit) {
        if (!done && types ~ /(^| )deb( |$)/ && comps ~ /(^| )main( |$)/ && enabled != "no") {
          n = split(suitesv, s, " "); hit = 0
          for (i = 1; i <= n; i++) if (s[i] in ok) hit = 1
          split(uris, u, " ")
          if (hit && u[1] != "" && u[1] !~ /security/) { print u[1]; done = 1 }
        }
        types = uris = suitesv = comps = enabled = key = ""
      }
      BEGIN { n = split(good, g, " "); for (i = 1; i <= n; i++) ok[g[i]] = 1 }
      /^#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { v = $0; sub(/^[ \t]+/, "", v)
                 if (key == "uris") uris = uris " " v; else if (key == "suites") suitesv = suitesv " " v
                 else if (key == "components") comps = comps " " v; else if (key == "types") types = types " " v
                 next }
      { key = tolower($0); sub(/:.*/, "", key); v = $0; sub(/^[^:]*:[ \t]*/, "", v)
        if (key == "types") types = v; else if (key == "uris") uris = v
        else if (key == "suites") suitesv = v; else if (key == "components") comps = v
        else if (key == "enabled") enabled = tolower(v) }
      END { flush() }' "$f"
  done
}

ensure_mmdebstrap() {
  command -v mmdebstrap >/dev/null && return 0
  command -v apt-get >/dev/null || cannot "mmdebstrap is missing and there is no apt-get"
  step "host: apt-get update" apt-get update -q >&2 || cannot "apt-get update failed"
  step "host: apt-get install mmdebstrap" \
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >&2 \
    || cannot "apt-get install mmdebstrap failed"
}

# Mount points under the root, deepest first.
mounts_under_root() {
  awk -v r="$ROOT" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

umount_all() {
  local m
  for m in $(mounts_under_root); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  if [ -n "$(mounts_under_root)" ]; then die "still mounted under $ROOT: $(mounts_under_root | tr '\n' ' ')"; fi
}

mount_system() {
  local m
  for m in "${MOUNTS[@]}"; do
    mkdir -p "$ROOT$m"
    mountpoint -q "$ROOT$m" || mount --bind "$m" "$ROOT$m"
  done
}

build_root() {
  local mirror
  ensure_mmdebstrap
  mirror=$(host_mirror | head -n1)
  [ -n "$mirror" ] || cannot "no Debian mirror found in the host's apt sources (set LAYERMATTE_DEBIAN_MIRROR)"
  log "building $ROOT from $mirror"
  if [ -e "$ROOT" ]; then
    umount_all
    step "wipe stale root" rm -rf --one-file-system "$ROOT"
  fi
  mkdir -p "$(dirname "$ROOT")"
  local sources=("deb $mirror $SUITE main")
  [ -z "$EXTRA_SUITE" ] || sources+=("deb $mirror $EXTRA_SUITE main")
  step "mmdebstrap $SUITE" mmdebstrap --quiet --variant=apt --components=main "${MMDEBSTRAP_OPTS[@]}" \
    "$SUITE" "$ROOT" "${sources[@]}" >&2
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod +x "$ROOT/usr/sbin/policy-rc.d"
  [ -s "$ROOT/etc/resolv.conf" ] || cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  mount_system
  step "root: apt-get update" chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    apt-get "${APT_OPTS[@]}" update -q >&2
  step "root: apt-get install ${PACKAGES[*]}" chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends \
    "${PACKAGES[@]}" >&2
  if [ -n "$EXTRA_SUITE" ]; then
    step "root: apt-get install -t $EXTRA_SUITE ${EXTRA[*]}" chroot "$ROOT" env -i \
      PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" \
      install -y -q --no-install-recommends -t "$EXTRA_SUITE" "${EXTRA[@]}" >&2
  fi
  chroot "$ROOT" apt-get clean
  printf '%s\n' "$EXPECTED_MARKER" >"$MARKER"
  log "root ready: $(du -sh --one-file-system "$ROOT" 2>/dev/null | cut -f1) at $ROOT"
}

ensure_root() {
  local t0
  t0=$(now)
  lock
  if [ "$(cat "$MARKER" 2>/dev/null)" != "$EXPECTED_MARKER" ]; then
    build_root
  fi
  mount_system
  unlock
  log "root ready check: $(secs "$t0" "$(now)") s"
}

abs_dir() {
  [ -n "${1:-}" ] || die "missing DIR"
  [ -d "$1" ] || die "not a directory: $1"
  (cd "$1" && pwd -P)
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in build|path|rebuild|umount|bind|unbind|run)
  [ "$(id -u)" = 0 ] || cannot "not running as root (mmdebstrap, chroot and mount need root)" ;;
esac
case "$cmd" in
  build) ensure_root ;;
  path) ensure_root; printf '%s\n' "$ROOT" ;;
  rebuild)
    lock; rm -f "$MARKER"; unlock
    ensure_root ;;
  umount)
    lock; umount_all; unlock ;;
  bind)
    dir=$(abs_dir "${1:-}")
    ensure_root
    lock
    mkdir -p "$ROOT$dir"
    mountpoint -q "$ROOT$dir" || mount --bind "$dir" "$ROOT$dir"
    unlock ;;
  unbind)
    [ -n "${1:-}" ] || die "missing DIR"
    dir=$(realpath -m "$1")
    lock
    if mountpoint -q "$ROOT$dir"; then umount "$ROOT$dir" || umount -l "$ROOT$dir"; fi
    rmdir "$ROOT$dir" 2>/dev/null || true
    unlock ;;
  run)
    [ $# -gt 0 ] || die "run: missing command"
    ensure_root
    home="${LM_HOME:-/root}"
    mkdir -p "$ROOT$home"
    t0=$(now)
    rc=0
    chroot "$ROOT" /usr/bin/env -i \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      HOME="$home" LANG=C.UTF-8 USER=root LOGNAME=root "$@" || rc=$?
    log "run $1: $(secs "$t0" "$(now)") s (exit $rc)"
    exit "$rc" ;;
  *)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2 ;;
esac
