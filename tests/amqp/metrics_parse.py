#!/usr/bin/env python3
"""Parses a Prometheus text exposition with prometheus_client's parser.

Reads the exposition from ``--file PATH`` (or stdin when it is absent or
``-``) and prints one JSON line per sample, so the Rust tests check the
router's ``/metrics`` with the reference parser rather than their own.
Needs Debian's ``python3-prometheus-client`` (no Proton).

Lines:
  sample   family, type (counter, gauge, histogram, ...), name (the sample
           name: ``..._total``, ``..._bucket``, ``..._count``, ...), labels
           (an object), value (a number; NaN and infinities as strings)
  error    the parser refused the text (error)
  done     ok, families, samples

Exit status 0 when the text parsed, 1 when it did not, 3 on the hard
``--timeout``.
"""

import argparse
import json
import math
import os
import sys
import threading


def emit(event, **fields):
    sys.stdout.write(json.dumps(dict(event=event, **fields), sort_keys=True) + "\n")
    sys.stdout.flush()


def number(v):
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return v


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--file", help="exposition file ('-' or absent: stdin)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="hard limit for the whole program, seconds")
    args = p.parse_args()

    def fire():
        emit("timeout", after_s=args.timeout)
        os._exit(3)

    watchdog = threading.Timer(args.timeout, fire)
    watchdog.daemon = True
    watchdog.start()

    from prometheus_client.parser import text_string_to_metric_families

    if args.file in (None, "-"):
        text = sys.stdin.read()
    else:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    families = samples = 0
    try:
        for fam in text_string_to_metric_families(text):
            families += 1
            for s in fam.samples:
                samples += 1
                emit("sample", family=fam.name, type=fam.type, name=s.name,
                     labels=dict(s.labels), value=number(s.value))
    except Exception as e:  # the parser's ValueError, or anything else it raises
        emit("error", error=repr(e))
        emit("done", ok=False, families=families, samples=samples)
        sys.stdout.flush()
        os._exit(1)
    emit("done", ok=True, families=families, samples=samples)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
