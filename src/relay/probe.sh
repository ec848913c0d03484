#!/bin/sh
# pushrun relay probe: say what this host runs, so that the initiator sends a
# pushrun binary that can run here (or says why not) before sending anything.
#
# Invoked as: exec sh -c "$(cat probe.sh)" pushrun-probe
# stdin: not read.
# stdout: two lines, `uname -s` and `uname -m` (e.g. "Linux", "x86_64").
# Exit code: uname's.
uname -s && uname -m
