#!/usr/bin/env bash
# Runs the deterministic simulation on fresh seeds until DURATION is up (e.g. 10m, 2h),
# and prints every failing seed with the command that replays it.
#
#   scripts/soak.sh 10m            # fresh seeds, starting from one picked by the clock
#   SOAK_FROM=5000000 scripts/soak.sh 1h
#
# Release build (the simulation runs about ten times faster than in the test profile).
# Exit code 1 if any seed failed.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:?usage: scripts/soak.sh DURATION (e.g. 10m)}
from=${SOAK_FROM:-$(( $(date +%s) * 1000 ))}

cargo build --release --locked -q -p reseq-system-tests --bin reseq-sim
echo "soak: seeds from $from for $duration"
exec target/release/reseq-sim --from "$from" --for "$duration"
