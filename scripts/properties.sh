#!/usr/bin/env bash
# The long property run: every decoder's properties (protocol, node, reflex, session, streams) with
# PROPTEST_CASES cases each (default 600,000: 17 properties, about 10 million cases in all),
# release build. CI runs the same tests with proptest's default 256 cases each.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${PROPTEST_CASES:-600000}"
start=$(date +%s)
for crate in protocol node reflex session streams; do
  PROPTEST_CASES="$CASES" cargo test --release --locked -q -p "ferrocable-$crate" --test properties
done
properties=$(grep -h -c '^    fn ' crates/{protocol,node,reflex,session,streams}/tests/properties.rs | paste -sd+ | bc)
echo "properties: $properties properties x $CASES cases = $((properties * CASES)) cases in $(( $(date +%s) - start )) s"
