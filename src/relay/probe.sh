#!/bin/sh
# pushrun relay probe: say what this host runs, so that the initiator sends a
# pushrun binary that can run here (or says why not) before sending anything.
#
# Invoked as: pushrun-probe
#   (sent on stdin behind the fixed bootstrap line: src/remote/boot.rs)
# stdin: not read.
# stdout: two lines, `uname -s` and `uname -m` (e.g. "Linux", "x86_64").
# Exit code: uname's.
uname -s && uname -m
