#!/usr/bin/env python3
"""Autobahn|Testsuite's cases (sections 1-7, 9 and 10; 12-13 need permessage-deflate, which the
server does not negotiate) run by kosoku 0.1.0 against a WebSocket echo endpoint.

Usage: autobahn.py ws://127.0.0.1:PORT/_echo [--report DIR] [--json FILE]
Strict: a case passes only with behaviour OK (or INFORMATIONAL, the only verdict of the cases
that probe what the RFC leaves open: 7.1.6, 7.13.x); NON-STRICT counts as a failure here. Prints one line per case that is
not OK, a summary, and node-test style "# pass N" / "# fail M" lines for scripts/test.sh."""
import argparse, asyncio, collections, json, os, sys

from kosoku import FailureError, run_fuzzingclient

SECTIONS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]


async def run(url):
    try:
        return await run_fuzzingclient(url, SECTIONS, None, concurrency=1)
    except FailureError as failure:
        return failure.results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--json", help="write every case's verdict here")
    o = ap.parse_args()
    results = asyncio.run(run(o.url))
    if not results:
        print("autobahn: no case ran", file=sys.stderr)
        print("# pass 0\n# fail 1")
        return 1
    tally = collections.Counter()
    bad = []
    rows = []
    for r in results:
        behavior, close = r.behavior.value, r.behavior_close.value
        tally[behavior] += 1
        rows.append({"case": r.case_id, "behavior": behavior, "close": close, "ms": r.duration})
        if behavior not in ("OK", "INFORMATIONAL") or close not in ("OK", "INFORMATIONAL"):
            bad.append((r.case_id, behavior, close, r.description.strip().splitlines()[0][:100]))
    for case, behavior, close, desc in bad:
        print(f"case {case}: {behavior} / close {close}: {desc}")
    print(f"autobahn: {len(results)} cases, " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    if o.json:
        with open(o.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"# pass {len(results) - len(bad)}\n# fail {len(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    code = main()
    # kosoku's native extension once aborted during interpreter teardown in CI, after every case
    # had passed and the verdicts were printed (SIGABRT, exit 134, read as a failed step). The
    # verdicts and the exit code are settled here, so leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
