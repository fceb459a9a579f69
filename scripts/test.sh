#!/usr/bin/env bash
# Sets up and runs the whole test suite (real model, real daemon, real editors).
# pytest's "no tests collected" (exit 5) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test,ray || exit 1
# In CI the editor tests must run, not skip.
export LAYERMATTE_REQUIRE_EDITORS=${LAYERMATTE_REQUIRE_EDITORS:-${CI:+1}}
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected: failing" >&2
  exit 1
fi
exit "$rc"
