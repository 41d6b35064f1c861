#!/usr/bin/python3
"""Management load and timing client for benches/mgmt/run.py (Qpid Proton,
system Python).

    client.py query --url U --type T [--page N] [--repeat R]
        Pages through QUERY of entity type T (count N per request, as
        skstat/skmanage do with 500) R times; prints one JSON line per
        repeat: {"rows": ..., "pages": ..., "ms": ...} (first request sent
        to last answer received, decoding included).
    client.py load --url U --rate R --seconds S --type T [--page N]
        Sends R requests/s (QUERY of T, first page of N rows) for S
        seconds, one outstanding at a time on a schedule; prints
        {"sent": ..., "answered": ..., "errors": ..., "p50_ms": ..., "p99_ms": ...}.
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


def cmd_load(a):
    conn, client = connect(a.url, a.timeout)
    sent = answered = errors = 0
    lat = []
    interval = 1.0 / a.rate
    start = time.perf_counter()
    end = start + a.seconds
    next_at = start
    try:
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if now < next_at:
                time.sleep(min(next_at - now, end - now))
                continue
            next_at += interval
            sent += 1
            t0 = time.perf_counter()
            try:
                request(client, a.type, 0, a.page)
                answered += 1
                lat.append((time.perf_counter() - t0) * 1000.0)
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors += 1
                print(json.dumps({"error": str(e)}), file=sys.stderr, flush=True)
    finally:
        conn.close()
    lat.sort()
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None  # noqa: E731
    elapsed = time.perf_counter() - start
    print(json.dumps({"sent": sent, "answered": answered, "errors": errors,
                      "rate": round(answered / elapsed, 1),
                      "p50_ms": pick(0.5), "p99_ms": pick(0.99)}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("query")
    q.add_argument("--url", required=True)
    q.add_argument("--type", default="io.tether.router.router.address")
    q.add_argument("--page", type=int, default=500)
    q.add_argument("--repeat", type=int, default=5)
    q.add_argument("--timeout", type=float, default=30.0)
    l = sub.add_parser("load")
    l.add_argument("--url", required=True)
    l.add_argument("--type", default="io.tether.router.router.address")
    l.add_argument("--page", type=int, default=100)
    l.add_argument("--rate", type=float, default=100.0)
    l.add_argument("--seconds", type=float, default=10.0)
    l.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    {"query": cmd_query, "load": cmd_load}[a.cmd](a)


if __name__ == "__main__":
    main()
