#!/usr/bin/python3
"""Independent reference of the EPW-A watermark's green lists (version 1) and detection statistics.

This file is written from docs/watermark.md alone, with no epwa code, so that the C++ engine can be
checked against a second implementation of the same text. It follows these sections of that
document:

  "Secret key"        -- a key is exactly 32 raw bytes.
  "IRSH"              -- the router hash is an opaque 32-byte value here (tools/irsh_reference.py
                         computes it from a model); EPW seeds bind to it.
  "Green lists"       -- n_green = floor(gamma * V + 0.5) in IEEE double, 1 <= n_green <= V - 1,
                         and the null-hypothesis green probability p0 = n_green / V.
  "Seeds"             -- HMAC-SHA256 of a 16-byte tag and the little-endian fields of the EPW
                         (expert, router hash) or KGW (previous token) context.
  "Keyed permutation" -- xoshiro256** seeded from the HMAC output, Lemire's bounded draw, and the
                         first n_green steps of a forward Fisher-Yates shuffle.

It also gives the exact one-sided binomial tail and the z-score that a detector uses, and writes
tests/data/watermark_vectors.json, which the C++ tests read.

Usage (from the repository root):
  python3 tools/watermark_reference.py vectors > tests/data/watermark_vectors.json
  python3 tools/watermark_reference.py check tests/data/watermark_vectors.json
  python3 tools/watermark_reference.py green --key-hex H --router-hash-hex R --expert E \\
      --vocab V --gamma G
  python3 tools/watermark_reference.py green --key-hex H --previous-token T --vocab V --gamma G

Python 3.11 standard library only.
"""
import argparse
import difflib
import hashlib
import hmac
import json
import math
import re
import struct
import sys
from fractions import Fraction

MASK64 = (1 << 64) - 1

# The spec says the tag is the ASCII text "EPW-A green v1" followed by zero bytes, 16 bytes in
# total. The text is 14 characters long, so two zero bytes pad it to 16; this mirrors the IRSH tag
# ("EPW-A IRSH v1" padded with zeros to 16 bytes). The spec's prose also says "15 ASCII bytes ...
# followed by one zero byte", which cannot be met by a 14-character string; the stated total of 16
# bytes is taken as the binding part (see the report accompanying this file).
GREEN_TAG = b"EPW-A green v1".ljust(16, b"\0")
assert len(GREEN_TAG) == 16

# Domain bytes that keep EPW and KGW messages from ever colliding under one key.
DOMAIN_EPW = 1
DOMAIN_KGW = 2

SCHEME = "EPW-A green v1"


# ----------------------------------------------------------------------------
# Green lists: size, seeds, generator, permutation.
# ----------------------------------------------------------------------------

def green_count(gamma, V):
    """Returns n_green = floor(gamma * V + 0.5), computed in IEEE double as the spec requires.

    Python floats are IEEE doubles and gamma * V + 0.5 is evaluated in that precision with
    round-to-nearest, so this matches a C++ `std::floor(gamma * double(V) + 0.5)`.
    """
    gamma = float(gamma)
    if not (0.0 < gamma < 1.0):
        raise ValueError(f"gamma must lie in (0, 1), got {gamma!r}")
    if V < 2:
        raise ValueError(f"vocabulary size must be at least 2, got {V}")
    n = math.floor(gamma * float(V) + 0.5)
    # A list with no green token or no red token carries no signal, so the spec refuses both.
    if not (1 <= n <= V - 1):
        raise ValueError(f"n_green = {n} is outside 1 .. V - 1 for gamma {gamma!r}, V {V}")
    return n


def _check_key(key):
    """Refuses keys that are not exactly 32 bytes, as the "Secret key" section does."""
    if len(key) != 32:
        raise ValueError(f"a key must be exactly 32 bytes, got {len(key)}")


def _u32(x):
    """Packs a field as u32 little-endian, refusing values that would not fit rather than wrap."""
    if not (0 <= x <= 0xFFFFFFFF):
        raise ValueError(f"{x} does not fit in a u32")
    return struct.pack("<I", x)


def epw_seed(key, V, expert, router_hash):
    """Returns HMAC(key, tag || u8 1 || u32 V || u32 expert || router_hash), the EPW seed."""
    _check_key(key)
    if len(router_hash) != 32:
        raise ValueError(f"a router hash must be 32 bytes, got {len(router_hash)}")
    msg = GREEN_TAG + bytes([DOMAIN_EPW]) + _u32(V) + _u32(expert) + bytes(router_hash)
    return hmac.new(key, msg, hashlib.sha256).digest()


def kgw_seed(key, V, previous_token):
    """Returns HMAC(key, tag || u8 2 || u32 V || u32 previous_token), the KGW baseline seed."""
    _check_key(key)
    msg = GREEN_TAG + bytes([DOMAIN_KGW]) + _u32(V) + _u32(previous_token)
    return hmac.new(key, msg, hashlib.sha256).digest()


def _rotl(x, k):
    """Rotates a 64-bit value left by k bits."""
    return ((x << k) | (x >> (64 - k))) & MASK64


class Xoshiro256ss:
    """xoshiro256** (Blackman and Vigna, 2018) with all arithmetic reduced mod 2^64.

    Python integers are unbounded, so every product and shift is masked back to 64 bits to get the
    wrapping behaviour that C++ uint64_t has for free.
    """

    def __init__(self, state):
        """Takes either a 32-byte seed (four u64 little-endian words) or four integers."""
        if isinstance(state, (bytes, bytearray)):
            if len(state) != 32:
                raise ValueError(f"a seed must be 32 bytes, got {len(state)}")
            state = struct.unpack("<4Q", bytes(state))
        self.s = [int(w) & MASK64 for w in state]
        if len(self.s) != 4:
            raise ValueError("xoshiro256** needs four state words")
        # The counter lets the tests and vectors show that the rejection loop really ran.
        self.calls = 0

    def next(self):
        """Returns the next 64-bit output and advances the state."""
        s = self.s
        result = (_rotl((s[1] * 5) & MASK64, 7) * 9) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        self.calls += 1
        return result


def below(rng, b):
    """Returns a uniform draw from 0 .. b-1 by Lemire's multiply-and-reject method, as specified.

    The threshold (2^64 - b) mod b is the number of 64-bit values whose products would make some
    results one count more likely than others; rejecting exactly those makes the draw unbiased.
    It is only computed when low < b because low >= b already implies low >= threshold.
    """
    if not (1 <= b <= MASK64):
        raise ValueError(f"bound must lie in 1 .. 2^64 - 1, got {b}")
    m = rng.next() * b
    low = m & MASK64
    if low < b:
        threshold = ((1 << 64) - b) % b
        while low < threshold:
            m = rng.next() * b
            low = m & MASK64
    return m >> 64


def green_list(seed, V, n_green):
    """Returns the green ids in shuffle order: the first n_green entries of a forward Fisher-Yates.

    Only the first n_green swaps are made, because later ones cannot change a[0 .. n_green-1]; and
    because the shuffle runs forward, a smaller n_green gives a prefix of a larger one's list.
    """
    if not (1 <= n_green <= V - 1):
        raise ValueError(f"n_green = {n_green} is outside 1 .. V - 1 for V {V}")
    rng = Xoshiro256ss(seed)
    a = list(range(V))
    for i in range(n_green):
        j = i + below(rng, V - i)
        a[i], a[j] = a[j], a[i]
    return a[:n_green]


# ----------------------------------------------------------------------------
# Detection statistics.
# ----------------------------------------------------------------------------

def _as_fraction(p):
    """Accepts a Fraction, an int, or a "num/den" string, so that p0 stays exact."""
    if isinstance(p, Fraction):
        return p
    if isinstance(p, (int, str)):
        return Fraction(p)
    raise TypeError("p must be exact (a Fraction, an int or a 'num/den' string), not a float")


def binomial_upper_tail_exact(n, k, p):
    """Returns P(X >= k) for X ~ Binomial(n, p) as an exact Fraction.

    With p = a / d the tail is sum_{i>=k} C(n, i) a^i (d-a)^(n-i) / d^n, so the whole sum is done
    in integers and a single division at the end keeps it exact, however small the tail is.
    """
    p = _as_fraction(p)
    if not (0 <= p <= 1):
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if k <= 0:
        return Fraction(1)
    if k > n:
        return Fraction(0)
    a, d = p.numerator, p.denominator
    b = d - a
    # Terms are built incrementally from the one for i = k, because recomputing C(n, i) and the
    # powers for each i would make n = 2000 needlessly slow.
    term = math.comb(n, k) * a ** k * b ** (n - k)
    total = 0
    for i in range(k, n + 1):
        total += term
        if i < n:
            if b == 0:
                # With p = 1 only i = n has a non-zero term, and the update below would divide by 0.
                term = a ** n if i + 1 == n else 0
            else:
                term = term * (n - i) * a // ((i + 1) * b)
    return Fraction(total, d ** n)


def binomial_upper_tail(n, k, p):
    """Returns P(X >= k) for X ~ Binomial(n, p) as the correctly rounded float of the exact value.

    Tails below about 1e-308 become subnormal and then 0.0; use log10_fraction() on the exact value
    to keep their size.
    """
    return float(binomial_upper_tail_exact(n, k, p))


def log10_fraction(x):
    """Returns log10 of a positive Fraction without going through a float that could underflow."""
    if x <= 0:
        return -math.inf
    # math.log10 accepts arbitrarily large integers, so numerator and denominator are taken apart.
    return math.log10(x.numerator) - math.log10(x.denominator)


def z_score(green, n, p0):
    """Returns (green - p0 n) / sqrt(n p0 (1 - p0)), the normal-approximation score of a count."""
    p0 = float(p0)
    if n <= 0 or not (0.0 < p0 < 1.0):
        raise ValueError("z_score needs n > 0 and p0 in (0, 1)")
    return (green - p0 * n) / math.sqrt(n * p0 * (1.0 - p0))


# ----------------------------------------------------------------------------
# Test vectors.
# ----------------------------------------------------------------------------

KEY_COUNTING = bytes(range(32))
KEY_ONES = b"\xff" * 32
KEY_HASHED = hashlib.sha256(b"epwa test key").digest()
ROUTER_HASH_BUNDLED = bytes.fromhex(
    "122fa78b170b6890516ab6b2bc89d333f6085853245f331a3fb80bd2183dd1f8")
ROUTER_HASH_ZERO = bytes(32)

# (kind, key, router hash or None, expert or previous token, V, gamma). The first two cases share
# everything but gamma so the vectors show the prefix property; V = 50 and V = 7 are not powers of
# two, and V = 7 with gamma 0.5 rounds 3.5 up to n_green = 4.
GREEN_CASES = [
    ("epw", KEY_COUNTING, ROUTER_HASH_BUNDLED, 0, 4096, 0.25),
    ("epw", KEY_COUNTING, ROUTER_HASH_BUNDLED, 0, 4096, 0.5),
    ("epw", KEY_COUNTING, ROUTER_HASH_BUNDLED, 1, 4096, 0.25),
    ("epw", KEY_ONES, ROUTER_HASH_BUNDLED, 7, 32000, 0.25),
    ("epw", KEY_HASHED, ROUTER_HASH_ZERO, 0, 32000, 0.5),
    ("epw", KEY_ONES, ROUTER_HASH_ZERO, 0, 32000, 0.1),
    ("epw", KEY_HASHED, ROUTER_HASH_BUNDLED, 7, 50, 0.1),
    ("epw", KEY_COUNTING, ROUTER_HASH_ZERO, 1, 7, 0.5),
    ("kgw", KEY_COUNTING, None, 0, 4096, 0.25),
    ("kgw", KEY_COUNTING, None, 1, 4096, 0.25),
    ("kgw", KEY_ONES, None, 4095, 32000, 0.5),
    ("kgw", KEY_HASHED, None, 4095, 50, 0.1),
    ("kgw", KEY_HASHED, None, 0, 7, 0.25),
]

# (n, k, p). They cover the trivial tails (k = 0, k = n, n = 1), a tail of about 1e-20 (n = 200,
# k = 120), counts at and near the mean for n = 2000, a tail that underflows a double (k = n =
# 2000), and values of p that are written unreduced, as p0 = n_green / V would be.
BINOMIAL_CASES = [
    (1, 0, "1/4"),
    (1, 1, "1/4"),
    (2, 1, "1/2"),
    (10, 0, "1/2"),
    (10, 10, "1/2"),
    (20, 10, "1/4"),
    (7, 4, "4/7"),
    (50, 25, "1/4"),
    (100, 40, "1024/4096"),
    (200, 50, "1/4"),
    (200, 120, "1/4"),
    (64, 20, "5/50"),
    (500, 200, "8000/32000"),
    (1000, 600, "1/2"),
    (2000, 500, "1/4"),
    (2000, 520, "1/4"),
    (2000, 560, "1/4"),
    (2000, 2000, "1/4"),
]

# Lemire's rejection loop only runs when low < threshold, which for the vocabulary sizes above is
# too rare to show up in any vector. With b = 2^63 + 1 the threshold is 2^63 - 1, so about half of
# all draws are rejected and the loop is certainly exercised.
BELOW_SEED = hashlib.sha256(b"epwa below test").digest()
BELOW_BOUND = (1 << 63) + 1
BELOW_COUNT = 8


def _fmt17(x):
    """Formats a float with 17 significant digits, which always identifies the double exactly."""
    return format(x, ".17g")


def green_entry(kind, key, router_hash, context, V, gamma):
    """Builds one green-list vector entry."""
    n_green = green_count(gamma, V)
    if kind == "epw":
        seed = epw_seed(key, V, context, router_hash)
    else:
        seed = kgw_seed(key, V, context)
    ids = green_list(seed, V, n_green)
    packed = struct.pack(f"<{n_green}I", *sorted(ids))
    entry = {"kind": kind, "key_hex": key.hex()}
    if kind == "epw":
        entry["router_hash_hex"] = router_hash.hex()
        entry["expert"] = context
    else:
        entry["previous_token"] = context
    entry.update({
        "vocab": V,
        "gamma": gamma,
        "n_green": n_green,
        "seed_hex": seed.hex(),
        "first_ids": ids[:16],
        "sorted_ids_sha256": hashlib.sha256(packed).hexdigest(),
        "id_sum": sum(ids),
    })
    return entry


def binomial_entry(n, k, p):
    """Builds one binomial vector entry; "tail" is a JSON number and "tail_17g" its 17-digit text."""
    exact = binomial_upper_tail_exact(n, k, p)
    tail = float(exact)
    p_float = float(Fraction(p))
    entry = {
        "n": n,
        "k": k,
        "p": p,
        "tail": tail,
        "tail_17g": _fmt17(tail),
        "log10_tail": log10_fraction(exact),
    }
    # The z-score is only defined for 0 < p < 1, which every case here has.
    entry["z"] = z_score(k, n, p_float)
    return entry


def below_entry():
    """Builds the vector that forces Lemire's rejection loop."""
    rng = Xoshiro256ss(BELOW_SEED)
    outputs = [below(rng, BELOW_BOUND) for _ in range(BELOW_COUNT)]
    # A vector that never rejected would not test the loop, so the seed is checked to reject.
    assert rng.calls > BELOW_COUNT, "the below() vector seed must trigger at least one rejection"
    return {
        "seed_hex": BELOW_SEED.hex(),
        "bound": BELOW_BOUND,
        "outputs": outputs,
        "next_calls": rng.calls,
    }


def make_vectors():
    """Returns the whole vector document as a Python object."""
    return {
        "scheme": SCHEME,
        "green_lists": [green_entry(*c) for c in GREEN_CASES],
        "binomial": [binomial_entry(*c) for c in BINOMIAL_CASES],
        "below": below_entry(),
    }


def dumps(doc):
    """Serialises vectors deterministically, so that `check` can compare text as well as content.

    Python writes floats with repr(), the shortest text that reads back as the same double, and
    integers (including u64 draws above 2^53) exactly. Lists of integers are put on one line each
    so the file stays readable.
    """
    text = json.dumps(doc, indent=1)
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
                  lambda m: "[" + ", ".join(re.split(r",\s*", m.group(1))) + "]", text)
    return text + "\n"


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------

def cmd_vectors(_args):
    sys.stdout.write(dumps(make_vectors()))
    return 0


def cmd_check(args):
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    want = make_vectors()
    try:
        have = json.loads(text)
    except json.JSONDecodeError as e:
        print(f"{args.file}: not valid JSON: {e}", file=sys.stderr)
        return 1
    # Content is compared rather than bytes, so reformatting the file is harmless; floats compare
    # exactly because json reads back the same doubles that repr() wrote.
    if have == want:
        print(f"{args.file}: matches the reference")
        return 0
    diff = difflib.unified_diff(dumps(have).splitlines(), dumps(want).splitlines(),
                                fromfile=args.file, tofile="regenerated", lineterm="", n=2)
    print(f"{args.file}: differs from the regenerated vectors:", file=sys.stderr)
    for line in diff:
        print(line, file=sys.stderr)
    return 1


def cmd_green(args):
    key = bytes.fromhex(args.key_hex)
    n_green = green_count(args.gamma, args.vocab)
    if args.previous_token is not None:
        if args.expert is not None or args.router_hash_hex is not None:
            print("--previous-token (KGW) excludes --expert and --router-hash-hex (EPW)",
                  file=sys.stderr)
            return 2
        seed = kgw_seed(key, args.vocab, args.previous_token)
    else:
        if args.expert is None or args.router_hash_hex is None:
            print("EPW lists need --expert and --router-hash-hex (or give --previous-token)",
                  file=sys.stderr)
            return 2
        seed = epw_seed(key, args.vocab, args.expert, bytes.fromhex(args.router_hash_hex))
    ids = green_list(seed, args.vocab, n_green)
    if args.sorted:
        ids = sorted(ids)
    print(" ".join(str(i) for i in ids))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("vectors", help="print the test-vector JSON").set_defaults(func=cmd_vectors)
    c = sub.add_parser("check", help="compare FILE with regenerated vectors")
    c.add_argument("file")
    c.set_defaults(func=cmd_check)
    g = sub.add_parser("green", help="print a green list (space-separated, in shuffle order)")
    g.add_argument("--key-hex", required=True)
    g.add_argument("--router-hash-hex")
    g.add_argument("--expert", type=int)
    g.add_argument("--previous-token", type=int)
    g.add_argument("--vocab", type=int, required=True)
    g.add_argument("--gamma", type=float, required=True)
    g.add_argument("--sorted", action="store_true", help="print in increasing id order")
    g.set_defaults(func=cmd_green)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
