#!/bin/sh
# pushrun collect: send back what a run left in its out directory, then
# remove the run's directory.
#
# Invoked as: pushrun-collect BASE RUN_ID
#   (sent on stdin behind the fixed bootstrap line: src/remote/boot.rs; a
#   check that stays on its channel does the same, collectlib.sh's
#   collect_main, there: check.sh, "Then")
#   BASE    the absolute BASE that check.sh printed
#   RUN_ID  the run's id
# stdin: not read.
# stdout: a gzip'ed tar of BASE/runs/RUN_ID/out ("tar -cf - ." inside it,
#   through "gzip -1 -c"): names as they are (spaces, unicode), contents as
#   they are, empty directories, symlinks as symlinks. When there is no out
#   directory, an empty but valid tar.gz. On a host without tar or gzip,
#   the plain stream of plain-out.sh instead.
# stderr: a message when something failed.
# Exit codes: 0 sent; 3 bad arguments; 7 tar or gzip failed (what was sent
# is then incomplete). BASE/runs/RUN_ID is removed on every outcome.

# the work: collectlib.sh, prepended to this
collect_main "$@"
