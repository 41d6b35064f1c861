#!/usr/bin/python3
"""Management timing client for benches/mgmt/run.py (Qpid Proton,
system Python); the load comes from load.c.

    client.py query --url U --type T [--page N] [--repeat R]
        Pages through QUERY of entity type T (count N per request, as
        skstat/skmanage do with 500) R times; prints one JSON line per
        repeat: {"rows": ..., "pages": ..., "ms": ...} (first request sent
        to last answer received, decoding included).
"""

import argparse
import json
import sys
import time

from proton import Message
from proton.utils import BlockingConnection, SyncRequestResponse

NODE_TYPE = "org.amqp.management"


def request(client, entity_type, offset, count):
    req = Message(
        address="$management",
        properties={
            "operation": "QUERY",
            "type": NODE_TYPE,
            "entityType": entity_type,
            "offset": offset,
            "count": count,
        },
        body={"attributeNames": []},
    )
    resp = client.call(req)
    code = resp.properties.get("statusCode")
    if code != 200:
        raise RuntimeError(f"statusCode {code}: {resp.properties.get('statusDescription')}")
    return resp.body["results"]


def connect(url, timeout):
    conn = BlockingConnection(url, timeout=timeout)
    return conn, SyncRequestResponse(conn, "$management")


def cmd_query(a):
    conn, client = connect(a.url, a.timeout)
    try:
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            rows, pages, offset = 0, 0, 0
            for _ in range(100000):
                page = request(client, a.type, offset, a.page)
                rows += len(page)
                pages += 1
                if len(page) < a.page:
                    break
                offset += a.page
            ms = (time.perf_counter() - t0) * 1000.0
            print(json.dumps({"rows": rows, "pages": pages, "ms": round(ms, 2)}), flush=True)
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("query")
    q.add_argument("--url", required=True)
    q.add_argument("--type", default="io.tether.router.router.address")
    q.add_argument("--page", type=int, default=500)
    q.add_argument("--repeat", type=int, default=5)
    q.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    cmd_query(a)


if __name__ == "__main__":
    main()
