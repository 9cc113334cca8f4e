#!/usr/bin/python3
"""Independent reference of the EPW-A watermark's green lists (v1 and v2) and detection statistics.

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

Version 2 ("EPW-A v2: context-keyed lists") is in the second half of the file, from the same text:
list and rank seeds of context items (layer, expert, token) with -1 for an absent part, the
self-salting rank, the items of a token under epw2-et, epw2-minhash and epw2-votes, and a scorer
(score_v2) that returns every vote and the deduplicated binomial statistics. Its vectors are
tests/data/watermark_v2_vectors.json. Where the v2 text leaves a choice open, the comment at
"Version 2" below says which reading is taken.

Usage (from the repository root):
  python3 tools/watermark_reference.py vectors > tests/data/watermark_vectors.json
  python3 tools/watermark_reference.py check tests/data/watermark_vectors.json
  python3 tools/watermark_reference.py green --key-hex H --router-hash-hex R --expert E \\
      --vocab V --gamma G
  python3 tools/watermark_reference.py green --key-hex H --previous-token T --vocab V --gamma G
  python3 tools/watermark_reference.py v2vectors > tests/data/watermark_v2_vectors.json
  python3 tools/watermark_reference.py v2check tests/data/watermark_v2_vectors.json

Python 3.11 standard library only.
"""
import argparse
import difflib
import hashlib
import hmac
import json
import math
import random
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
# Version 2: context-keyed lists (docs/watermark.md, "EPW-A v2: context-keyed lists").
#
# Readings taken where the v2 text leaves a choice open:
#  - The layer of an item, the `l` of "every MoE layer l" and the keyed layer `s`, is the ordinal
#    of the MoE layer among the model's MoE layers (0 = the first MoE layer), as "v2's default is
#    0, the first MoE layer" suggests; it is not the model's layer index that IRSH hashes (the two
#    differ only for models with dense layers). experts[t][l] is indexed by that ordinal.
#  - A negative keyed layer is resolved like v1's default (-1 = the last MoE layer) before it is
#    written into an item, so an item never carries -1 ("absent") for a present layer.
#  - An item part is either -1 (absent) or 0 .. 2^31 - 1; other negatives and values that do not
#    fit an i32 are refused rather than wrapped.
#  - Dedup keys on (item, scored token) alone, across all positions and (for epw2-votes) across
#    all votes of a token; the first occurrence is the one counted (any choice gives the same
#    counts, since greenness is a function of the pair).
#  - epw2-minhash compares ranks as unsigned 64-bit integers; "the first on ties" means the first
#    item in the table's order: (0, e_0, -1), ..., (L-1, e_{L-1}, -1), then (-1, -1, x).
#  - The scored token v is the candidate of the rank, as the integer token id.
# ----------------------------------------------------------------------------

GREEN_TAG_V2 = b"EPW-A green v2".ljust(16, b"\0")
assert len(GREEN_TAG_V2) == 16

# The kind byte after the tag: 3 for an item's list seed, 4 for its rank seed.
KIND_LIST = 3
KIND_RANK = 4
ABSENT = -1

SCHEME_V2 = "EPW-A green v2"
V2_SCHEMES = ("epw2-et", "epw2-minhash", "epw2-votes")


def _i32(x):
    """Packs an item part as an i32 (two's complement, little-endian): -1 becomes ff ff ff ff."""
    if not (x == ABSENT or 0 <= x <= 0x7FFFFFFF):
        raise ValueError(f"an item part must be -1 (absent) or 0 .. 2^31 - 1, got {x}")
    return struct.pack("<i", x)


def context_message(kind, V, router_hash, layer, expert, token):
    """Returns tag2 || u8 kind || u32 V || router_hash || i32 layer || i32 expert || i32 token."""
    if len(router_hash) != 32:
        raise ValueError(f"a router hash must be 32 bytes, got {len(router_hash)}")
    return (GREEN_TAG_V2 + bytes([kind]) + _u32(V) + bytes(router_hash)
            + _i32(layer) + _i32(expert) + _i32(token))


def context_list_seed(key, V, router_hash, layer, expert, token):
    """Returns the list seed of item (layer, expert, token): the HMAC of the message with kind 3."""
    _check_key(key)
    msg = context_message(KIND_LIST, V, router_hash, layer, expert, token)
    return hmac.new(key, msg, hashlib.sha256).digest()


def context_rank_seed(key, V, router_hash, layer, expert, token):
    """Returns the rank seed of item (layer, expert, token): the same message with kind 4."""
    _check_key(key)
    msg = context_message(KIND_RANK, V, router_hash, layer, expert, token)
    return hmac.new(key, msg, hashlib.sha256).digest()


def rank_keys(rank_seed):
    """Returns (k0, k1), the first two little-endian u64 words of a rank seed."""
    if len(rank_seed) != 32:
        raise ValueError(f"a rank seed must be 32 bytes, got {len(rank_seed)}")
    return struct.unpack_from("<2Q", rank_seed)


def splitmix64_finalizer(z):
    """The splitmix64 finaliser f, all arithmetic mod 2^64."""
    z &= MASK64
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & MASK64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return z


def self_salt_rank(k0, k1, v):
    """Returns rank(i, v) = f(k0 XOR f((k1 + v) mod 2^64)) for an item with rank keys k0, k1."""
    if v < 0:
        raise ValueError(f"a candidate token must be non-negative, got {v}")
    return splitmix64_finalizer((k0 & MASK64) ^ splitmix64_finalizer((k1 + v) & MASK64))


def v2_green_list(key, V, router_hash, layer, expert, token, n_green):
    """Returns item (layer, expert, token)'s green ids in shuffle order (v1's keyed permutation)."""
    seed = context_list_seed(key, V, router_hash, layer, expert, token)
    return green_list(seed, V, n_green)


def resolve_slot(slot, L):
    """Returns the keyed MoE layer as an ordinal 0 .. L-1; -1 (v1's default) is the last one."""
    if slot == -1:
        slot = L - 1
    if not (0 <= slot < L):
        raise ValueError(f"keyed layer {slot} is outside 0 .. {L - 1} (or -1 for the last)")
    return slot


def v2_items(scheme, experts_row, x, slot=0):
    """Returns the items of a token whose previous position has token x and first choices
    experts_row[l] for each MoE layer l, in the order of the spec's table."""
    L = len(experts_row)
    if L < 1:
        raise ValueError("v2 needs at least one MoE layer")
    if scheme == "epw2-et":
        s = resolve_slot(slot, L)
        return [(s, experts_row[s], x)]
    if scheme == "epw2-minhash":
        return [(l, experts_row[l], ABSENT) for l in range(L)] + [(ABSENT, ABSENT, x)]
    if scheme == "epw2-votes":
        return [(l, experts_row[l], x) for l in range(L)]
    raise ValueError(f"unknown v2 scheme {scheme!r} (one of {', '.join(V2_SCHEMES)})")


def minhash_pick(keys, v):
    """Returns the index of the item with the smallest rank(i, v), the first one on ties.

    keys holds each item's (k0, k1) in table order.
    """
    best, best_rank = -1, None
    for idx, (k0, k1) in enumerate(keys):
        r = self_salt_rank(k0, k1, v)
        if best_rank is None or r < best_rank:
            best, best_rank = idx, r
    return best


class V2Lists:
    """Green sets and rank keys of items under one (key, router hash, V, n_green), memoised.

    A list costs n_green bounded draws in Python, so a scorer that sees the same item twice (or
    a simulation that scores many sequences under one key) builds it once.
    """

    def __init__(self, key, router_hash, V, n_green):
        _check_key(key)
        if len(router_hash) != 32:
            raise ValueError(f"a router hash must be 32 bytes, got {len(router_hash)}")
        if not (1 <= n_green <= V - 1):
            raise ValueError(f"n_green = {n_green} is outside 1 .. V - 1 for V {V}")
        self.key, self.router_hash, self.V, self.n_green = key, bytes(router_hash), V, n_green
        self._green = {}
        self._rank = {}

    def green(self, item):
        """Returns item's green list as a frozenset."""
        g = self._green.get(item)
        if g is None:
            g = frozenset(v2_green_list(self.key, self.V, self.router_hash, *item, self.n_green))
            self._green[item] = g
        return g

    def rank_keys(self, item):
        """Returns item's (k0, k1)."""
        k = self._rank.get(item)
        if k is None:
            k = rank_keys(context_rank_seed(self.key, self.V, self.router_hash, *item))
            self._rank[item] = k
        return k


def score_v2(key, router_hash, V, gamma, scheme, ids, first, experts, slot=0, dedup=True,
             cache=None):
    """Scores ids[first:] under a v2 scheme.

    experts[t][l] is the first-choice expert of MoE layer l (an ordinal) at position t; token t is
    scored under the items of position t - 1, so first must be at least 1 and experts needs a row
    for every position first - 1 .. len(ids) - 2. slot is the keyed layer of epw2-et (ignored by
    the other schemes). cache may be a V2Lists for the same key, router hash, V and n_green.

    Returns a dict: "votes", one {"position", "token", "item", "green", "counted"} per vote in
    order (item = [layer, expert, token] of the item that decided; counted = false for a vote that
    dedup dropped), "n_votes" and "green_votes" before dedup, and "n", "green", "p0" (a Fraction),
    "z" (None when n = 0) and "log10_p" over the counted votes.
    """
    if scheme not in V2_SCHEMES:
        raise ValueError(f"unknown v2 scheme {scheme!r} (one of {', '.join(V2_SCHEMES)})")
    n_green = green_count(gamma, V)
    if cache is None:
        cache = V2Lists(key, router_hash, V, n_green)
    elif (cache.key, cache.router_hash, cache.V, cache.n_green) != (key, bytes(router_hash), V,
                                                                    n_green):
        raise ValueError("the V2Lists cache belongs to another key, router hash, V or n_green")
    if first < 1:
        raise ValueError(f"first must be at least 1 (token t is scored under position t - 1), "
                         f"got {first}")
    for v in ids:
        if not (0 <= v < V):
            raise ValueError(f"token id {v} is outside 0 .. {V - 1}")
    if len(ids) > first and len(experts) < len(ids) - 1:
        raise ValueError(f"experts has {len(experts)} rows; positions up to {len(ids) - 2} "
                         f"are needed")
    L = len(experts[0]) if experts else 0
    for row in experts:
        if len(row) != L:
            raise ValueError("every row of experts needs the same number of MoE layers")
        for e in row:
            if e < 0:
                raise ValueError(f"an expert index must be non-negative, got {e}")

    votes = []
    seen = set()
    n = g = n_votes = g_votes = 0
    for t in range(first, len(ids)):
        v = ids[t]
        items = v2_items(scheme, experts[t - 1], ids[t - 1], slot)
        if scheme == "epw2-minhash":
            items = [items[minhash_pick([cache.rank_keys(i) for i in items], v)]]
        for item in items:
            green = v in cache.green(item)
            counted = not dedup or (item, v) not in seen
            seen.add((item, v))
            votes.append({"position": t, "token": v, "item": list(item), "green": green,
                          "counted": counted})
            n_votes += 1
            g_votes += green
            if counted:
                n += 1
                g += green
    p0 = Fraction(n_green, V)
    return {
        "votes": votes,
        "n_votes": n_votes,
        "green_votes": g_votes,
        "n": n,
        "green": g,
        "p0": p0,
        "z": z_score(g, n, p0) if n > 0 else None,
        "log10_p": log10_fraction(binomial_upper_tail_exact(n, g, p0)),
    }


# Version 2 vectors.

# (key, router hash, V, gamma, item). Items cover every pattern of absent parts the schemes use
# ((l, e, x) of epw2-et and epw2-votes, (l, e, -1) and (-1, -1, x) of epw2-minhash), the all-zero
# item that a wrongly encoded -1 could collide with, and large parts at V = 32000.
V2_SEED_CASES = [
    (KEY_COUNTING, ROUTER_HASH_BUNDLED, 4096, 0.25, (0, 3, 17)),
    (KEY_COUNTING, ROUTER_HASH_BUNDLED, 4096, 0.25, (-1, -1, 17)),
    (KEY_COUNTING, ROUTER_HASH_BUNDLED, 4096, 0.25, (2, 5, -1)),
    (KEY_COUNTING, ROUTER_HASH_BUNDLED, 4096, 0.25, (0, 0, 0)),
    (KEY_ONES, ROUTER_HASH_ZERO, 32000, 0.5, (47, 127, 31999)),
    (KEY_HASHED, ROUTER_HASH_BUNDLED, 32000, 0.1, (-1, -1, 0)),
    (KEY_HASHED, ROUTER_HASH_ZERO, 50, 0.1, (1, 7, 49)),
    (KEY_ONES, ROUTER_HASH_BUNDLED, 7, 0.5, (3, 0, -1)),
]

# The candidates whose ranks each seed case lists (those below V).
V2_RANK_TOKENS = (0, 1, 2, 1000)

V2_SCORING_V = 4096
V2_SCORING_GAMMA = 0.25
V2_SCORING_LEN = 64
V2_SCORING_LAYERS = 4
V2_SCORING_EXPERTS = 8
V2_SCORING_FIRST = 5
V2_SCORING_SLOT = 0
V2_SCORING_RNG_SEED = 20250611


def v2_scoring_sequence():
    """Returns the (ids, experts) that every scoring vector replays.

    Positions 40 .. 47 repeat positions 10 .. 17 (ids and experts), so tokens 41 .. 47 repeat
    every pair of tokens 11 .. 17 in every scheme and dedup drops them. Positions 50 and 51
    repeat the ids of 20 and 21 with the experts of 20 except layer 0's, so token 51 has a new
    epw2-et item (keyed layer 0) but repeats the epw2-votes items of layers 1 .. 3.
    """
    rng = random.Random(V2_SCORING_RNG_SEED)
    ids = [rng.randrange(V2_SCORING_V) for _ in range(V2_SCORING_LEN)]
    experts = [[rng.randrange(V2_SCORING_EXPERTS) for _ in range(V2_SCORING_LAYERS)]
               for _ in range(V2_SCORING_LEN)]
    for t in range(10, 18):
        ids[t + 30] = ids[t]
        experts[t + 30] = list(experts[t])
    ids[50], ids[51] = ids[20], ids[21]
    experts[50] = list(experts[20])
    experts[50][0] = (experts[20][0] + 1) % V2_SCORING_EXPERTS
    return ids, experts


def v2_seed_entry(key, router_hash, V, gamma, item):
    """Builds one v2 seed vector entry."""
    n_green = green_count(gamma, V)
    list_seed = context_list_seed(key, V, router_hash, *item)
    rank_seed = context_rank_seed(key, V, router_hash, *item)
    ids = green_list(list_seed, V, n_green)
    packed = struct.pack(f"<{n_green}I", *sorted(ids))
    k0, k1 = rank_keys(rank_seed)
    tokens = sorted({v for v in V2_RANK_TOKENS + (V - 1,) if v < V})
    return {
        "key_hex": key.hex(),
        "router_hash_hex": router_hash.hex(),
        "vocab": V,
        "gamma": gamma,
        "n_green": n_green,
        "item": list(item),
        "list_seed_hex": list_seed.hex(),
        "rank_seed_hex": rank_seed.hex(),
        "first_ids": ids[:16],
        "sorted_ids_sha256": hashlib.sha256(packed).hexdigest(),
        "id_sum": sum(ids),
        "rank_tokens": tokens,
        "ranks": [self_salt_rank(k0, k1, v) for v in tokens],
    }


def v2_scoring_entry(scheme):
    """Builds one v2 scoring vector entry (votes before dedup, statistics after)."""
    ids, experts = v2_scoring_sequence()
    key, rh = KEY_COUNTING, ROUTER_HASH_BUNDLED
    r = score_v2(key, rh, V2_SCORING_V, V2_SCORING_GAMMA, scheme, ids, V2_SCORING_FIRST, experts,
                 slot=V2_SCORING_SLOT, dedup=True)
    # Every case is meant to show dedup at work.
    assert r["n"] < r["n_votes"], scheme
    return {
        "scheme": scheme,
        "key_hex": key.hex(),
        "router_hash_hex": rh.hex(),
        "vocab": V2_SCORING_V,
        "gamma": V2_SCORING_GAMMA,
        "n_green": green_count(V2_SCORING_GAMMA, V2_SCORING_V),
        "layers": V2_SCORING_LAYERS,
        "experts_per_layer": V2_SCORING_EXPERTS,
        "first": V2_SCORING_FIRST,
        "slot": V2_SCORING_SLOT,
        "ids": ids,
        "experts": experts,
        "votes": r["votes"],
        "n_votes": r["n_votes"],
        "green_votes": r["green_votes"],
        "n": r["n"],
        "green": r["green"],
        "z": r["z"],
        "z_17g": _fmt17(r["z"]),
        "log10_p": r["log10_p"],
    }


def make_v2_vectors():
    """Returns the whole v2 vector document as a Python object."""
    return {
        "scheme": SCHEME_V2,
        "seeds": [v2_seed_entry(*c) for c in V2_SEED_CASES],
        "scoring": [v2_scoring_entry(s) for s in V2_SCHEMES],
    }


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------

def cmd_vectors(_args):
    sys.stdout.write(dumps(make_vectors()))
    return 0


def cmd_check(args):
    return _check_file(args.file, make_vectors())


def cmd_v2vectors(_args):
    sys.stdout.write(dumps(make_v2_vectors()))
    return 0


def cmd_v2check(args):
    return _check_file(args.file, make_v2_vectors())


def _check_file(path, want):
    """Compares the vector file at path with the regenerated document want (see cmd_check)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        have = json.loads(text)
    except json.JSONDecodeError as e:
        print(f"{path}: not valid JSON: {e}", file=sys.stderr)
        return 1
    # Content is compared rather than bytes, so reformatting the file is harmless; floats compare
    # exactly because json reads back the same doubles that repr() wrote.
    if have == want:
        print(f"{path}: matches the reference")
        return 0
    diff = difflib.unified_diff(dumps(have).splitlines(), dumps(want).splitlines(),
                                fromfile=path, tofile="regenerated", lineterm="", n=2)
    print(f"{path}: differs from the regenerated vectors:", file=sys.stderr)
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
    sub.add_parser("v2vectors", help="print the EPW-A v2 test-vector JSON").set_defaults(
        func=cmd_v2vectors)
    c2 = sub.add_parser("v2check", help="compare FILE with regenerated EPW-A v2 vectors")
    c2.add_argument("file")
    c2.set_defaults(func=cmd_v2check)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
