#!/bin/sh
# pushrun receive: take an upload of payload files, verify it, and install
# it into the cache (or into the run's own payload directory).
#
# Invoked as: pushrun-receive BASE DIGEST RUN_ID MODE [FORMAT]
#   (sent on stdin behind the fixed bootstrap line: src/remote/boot.rs)
#   BASE    the absolute BASE that check.sh printed
#   DIGEST  the payload's digest (lowercase hex)
#   RUN_ID  the run's id, as given to check.sh
#   MODE    cache: install into BASE/cache/DIGEST
#           nocache: install into BASE/runs/RUN_ID/payload
#   FORMAT  gz (the default): stdin is a tar.gz stream; tar: a plain tar
#           (files that do not compress: no gzip process on either end)
# stdin: a tar.gz (or tar) stream. Its first member is .pushrun-expect: manifest lines
#   without the header ("<sha256> <755|644> <size> <path>"), exactly one for
#   each file sent; then those files.
#
# What it does: extracts the stream into a fresh BASE/cache/.stage-RUN_ID,
# checks that it holds exactly the expected regular files (no symlinks),
# that each file's mode is as .pushrun-expect says (a chmod only for those
# whose headers said otherwise) and verifies every file's sha256 (one
# sha256sum process, or for big payloads one openssl). Then it
# installs: when the target directory holds no file yet, the stage directory
# is renamed into place (one rename, under BASE/lock); otherwise each file is
# renamed into place, replacing what is there. Either way every file that
# appears in the target is complete and verified. The stage directory is
# removed on every outcome. No symlink under BASE is followed: one where
# BASE/cache, the target or anything inside the target belongs is removed
# (damage), a run dir (nocache) that is one is refused.
#
# stdout, one line:
#   installed <n>             (n files installed)
#   error <message>           on failure
# Exit codes: 0 installed; 3 error (bad arguments, refused BASE, lock
# timeout); 5 the upload arrived corrupt ("upload of <path> arrived
# corrupt", or a broken stream); 6 cannot write ("no space left on device
# under <dir>", or "cannot write under <dir>: <message>"); nothing is
# half-installed then.

# The work is receive_main (receivelib.sh, before this with lib.sh).

umask 077
LC_ALL=C
export LC_ALL
# shellcheck disable=SC2034 # read by receive_main
nl='
'
receive_main "$@"
