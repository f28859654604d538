"""How long queue.py takes to sign or check a payload, beside hmac.digest (OpenSSL), by size.

queue.py signs a payload below queue._SMALL bytes with the key's pads hashed once on CPython's
own SHA-256, and a larger one with hmac.digest; this prints both ways at each size, so that the
threshold can be checked on a machine: `python benchmarks/mac.py`.
"""
import hmac
import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import queue  # noqa: E402  (queue.py of this checkout)

KEY = "benchmark-key-0123456789abcdef"


def per_call(fn, number=2000):
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main():
    queue.configure(KEY=KEY)
    key = KEY.encode()
    print(f"{'bytes':>7} {'queue._mac us':>14} {'hmac.digest us':>15}  (threshold {queue._SMALL} B)")
    for size in (100, 300, 511, 512, 1024, 4096, 65536):
        data = os.urandom(size)
        ours = per_call(lambda: queue._mac(data))
        theirs = per_call(lambda: hmac.digest(key, data, "sha256"))
        print(f"{size:>7} {ours:>14.2f} {theirs:>15.2f}")


if __name__ == "__main__":
    main()
