#!/usr/bin/env python3
"""Where each call of a cluster test ended, and whether it ended exactly once.

Used by deploy/cluster/test.sh. For every callid of --ids, asks every node's API
(GET /api/calls/{callid}: from memory while the node remembers the call, then from its store),
then:

- prints one line per callid: callid, the nodes that hold a record of it (comma-separated,
  or "-"), state, end_cause, answered (0/1), leg_a_code;
- fails (exit 1) when a callid has records on two nodes that are not one and the same record
  (a shared PostgreSQL store answers for every node: the same record seen through two nodes
  is fine, two different records of one callid mean the intent was claimed twice);
- with --expect bridged, also fails unless every callid has a record that ended after an
  answer (state ended, answered_at set, leg_a_code 200, end_cause hangup).

The last line on stderr is a summary: records per node, callids without a record.
"""

import argparse
import json
import sys
import urllib.error
import urllib.request


def fetch(api, callid):
    """The record of callid on the node at api, or None (404)."""
    try:
        with urllib.request.urlopen(f"{api}/api/calls/{callid}", timeout=5) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise SystemExit(f"GET {api}/api/calls/{callid}: HTTP {error.code}: {error.read()[:200]!r}")
    except OSError as error:
        raise SystemExit(f"GET {api}/api/calls/{callid}: {error}")


def identity(record):
    """What makes two answers the same record (a shared store seen through two nodes)."""
    return tuple(record.get(k) for k in ("state", "invite_at", "answered_at", "ended_at", "end_cause"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", required=True, help="file of callids, one a line")
    parser.add_argument("--node", action="append", default=[], metavar="NAME=URL",
                        help="a node's API, e.g. node-1=http://127.0.0.11:8080")
    parser.add_argument("--expect", choices=("bridged", "any"), default="any")
    args = parser.parse_args()

    ids = [line.strip() for line in open(args.ids) if line.strip()]
    seen = {callid: {} for callid in ids}
    for spec in args.node:
        name, api = spec.split("=", 1)
        for callid in ids:
            record = fetch(api, callid)
            if record is not None:
                seen[callid][name] = record

    problems = []
    per_node = {}
    missing = 0
    for callid in ids:
        holders = seen[callid]
        distinct = {identity(r) for r in holders.values()}
        if len(distinct) > 1:
            problems.append(f"callid {callid} has different records on {', '.join(sorted(holders))}: "
                            + "; ".join(f"{n}: {json.dumps(r, sort_keys=True)}" for n, r in sorted(holders.items())))
        if not holders:
            missing += 1
            print(f"{callid} - - - 0 -")
            if args.expect == "bridged":
                problems.append(f"callid {callid}: no node has a record of it")
            continue
        for name in holders:
            per_node[name] = per_node.get(name, 0) + 1
        name, record = sorted(holders.items())[0]
        answered = 1 if record.get("answered_at") else 0
        print(f"{callid} {','.join(sorted(holders))} {record.get('state')} {record.get('end_cause')} "
              f"{answered} {record.get('leg_a_code')}")
        if args.expect == "bridged":
            why = None
            if record.get("state") != "ended":
                why = "state is not ended"
            elif not answered:
                why = "answered_at is not set"
            elif record.get("leg_a_code") != 200:
                why = "leg_a_code is not 200"
            elif record.get("end_cause") != "hangup":
                why = "end_cause is not hangup"
            if why:
                problems.append(f"callid {callid} on {name}: {why}: {json.dumps(record, sort_keys=True)}")

    summary = ", ".join(f"{n}: {c}" for n, c in sorted(per_node.items()))
    for problem in problems[:10]:
        print(f"records.py: {problem}", file=sys.stderr)
    print(f"records: {len(ids)} callids; records per node: {summary or 'none'}; without a record: {missing}",
          file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
