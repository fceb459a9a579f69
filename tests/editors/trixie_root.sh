#!/usr/bin/env bash
# The trixie editor root (GIMP 3.0, Krita 5.2): editor_root.sh trixie COMMAND [ARGS].
exec bash "$(dirname "$0")/editor_root.sh" trixie "$@"
