#!/usr/bin/env bash
# The main job on the bundled samples, from nothing: install, fetch the default
# model, start the daemon, cut a photo out, write a PSD with a layer mask.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
LM=.venv/bin/layermatte
mkdir -p out
echo "== fetching the default model (ISNet, verified by sha256)"
$LM models pull
echo "== starting the daemon"
$LM serve >out/daemon.log 2>&1 &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  $LM doctor 2>/dev/null | grep -q "daemon .*running" && break
  sleep 0.1
done
echo "== cutting out samples/astronaut.jpg"
$LM cut samples/astronaut.jpg out/astronaut-cutout.png
$LM cut samples/astronaut.jpg out/astronaut-matte.png --mask-only
echo "== writing a PSD with a layer mask"
$LM batch samples out/psd --format psd --force
echo "== done:"
ls -l out/astronaut-cutout.png out/astronaut-matte.png out/psd/*.psd
