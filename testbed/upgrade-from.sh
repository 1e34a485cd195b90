#!/usr/bin/env bash
# An upgrade from an older Rialto under live connections (as root, after
# setup.sh):
#
#   bash testbed/upgrade-from.sh COMMIT
#
# builds COMMIT's `rialto` in a worktree of its own, with a target
# directory of its own (under target/, kept for the next run), then runs
# the test `an_upgrade_from_an_older_rialto_keeps_every_connection` with
# it: the older Rialto serves 16 TCP connections, this one takes over
# (`--take-over`), and every connection must answer after. Not part of
# test.sh: building another commit takes minutes.
set -euo pipefail
commit=$(git rev-parse --verify "${1:?usage: upgrade-from.sh COMMIT}^{commit}")
cd "$(dirname "$0")/.."
older=$PWD/target/older-$commit
trap 'git worktree remove --force "$older/src" 2>/dev/null || true' EXIT
git worktree add --force --detach "$older/src" "$commit" >/dev/null
(cd "$older/src" && CARGO_TARGET_DIR=$older/target cargo build --release --locked -p rialto --bin rialto)
RIALTO_OLDER=$older/target/release/rialto cargo test --release --locked -p rialto --test balance -- \
	--ignored --exact an_upgrade_from_an_older_rialto_keeps_every_connection --nocapture
