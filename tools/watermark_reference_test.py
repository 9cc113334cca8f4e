"""Unit tests for tools/watermark_reference.py (v1 and v2: hand-checkable cases, stored vectors).

Run from the repository root with:
  python3 -m unittest tools/watermark_reference_test.py
"""
import hashlib
import hmac
import json
import math
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import unittest
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import watermark_reference as wr  # noqa: E402

TOOLS = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(TOOLS, "watermark_reference.py")
VECTORS = os.path.join(os.path.dirname(TOOLS), "tests", "data", "watermark_vectors.json")


class FakeRng:
    """Returns a fixed list of 64-bit words, so that below()'s rejection path can be steered."""

    def __init__(self, words):
        self.words = list(words)
        self.calls = 0

    def next(self):
        self.calls += 1
        return self.words.pop(0)


class HmacTest(unittest.TestCase):
    def test_rfc4231_case_2(self):
        # RFC 4231 section 4.3: key "Jefe", data "what do ya want for nothing?".
        mac = hmac.new(b"Jefe", b"what do ya want for nothing?", hashlib.sha256).hexdigest()
        self.assertEqual(mac, "5bdcc146bf60754e6a042426089575c7"
                              "5a003f089d2739839dec58b964ec3843")

    def test_tag_is_16_bytes(self):
        self.assertEqual(wr.GREEN_TAG, b"EPW-A green v1\0\0")

    def test_seed_messages_by_hand(self):
        # The messages are assembled here byte by byte, independently of the module's packing.
        key = bytes(range(32))
        rh = bytes(range(100, 132))
        epw_msg = (b"EPW-A green v1\x00\x00" + b"\x01" + b"\x00\x10\x00\x00"
                   + b"\x07\x00\x00\x00" + rh)
        self.assertEqual(wr.epw_seed(key, 4096, 7, rh),
                         hmac.new(key, epw_msg, hashlib.sha256).digest())
        kgw_msg = b"EPW-A green v1\x00\x00" + b"\x02" + b"\x00\x7d\x00\x00" + b"\xff\x0f\x00\x00"
        self.assertEqual(wr.kgw_seed(key, 32000, 4095),
                         hmac.new(key, kgw_msg, hashlib.sha256).digest())

    def test_seed_inputs_are_checked(self):
        with self.assertRaises(ValueError):
            wr.kgw_seed(bytes(31), 4096, 0)
        with self.assertRaises(ValueError):
            wr.epw_seed(bytes(32), 4096, 0, bytes(31))
        with self.assertRaises(ValueError):
            wr.kgw_seed(bytes(32), 4096, 1 << 32)

    def test_domains_and_fields_separate(self):
        key = bytes(32)
        seeds = {wr.kgw_seed(key, 4096, 0), wr.kgw_seed(key, 4096, 1), wr.kgw_seed(key, 4097, 0),
                 wr.epw_seed(key, 4096, 0, bytes(32)), wr.epw_seed(key, 4096, 1, bytes(32)),
                 wr.epw_seed(key, 4096, 0, b"\x01" + bytes(31))}
        self.assertEqual(len(seeds), 6)


class XoshiroTest(unittest.TestCase):
    def test_reference_outputs_for_state_1234(self):
        rng = wr.Xoshiro256ss([1, 2, 3, 4])
        self.assertEqual([rng.next() for _ in range(4)],
                         [11520, 0, 1509978240, 1215971899390074240])

    def test_seed_words_are_little_endian(self):
        seed = struct.pack("<4Q", 1, 2, 3, 4)
        a, b = wr.Xoshiro256ss(seed), wr.Xoshiro256ss([1, 2, 3, 4])
        self.assertEqual([a.next() for _ in range(10)], [b.next() for _ in range(10)])

    def test_outputs_stay_64_bit(self):
        rng = wr.Xoshiro256ss(b"\xff" * 32)
        for _ in range(1000):
            self.assertTrue(0 <= rng.next() <= wr.MASK64)


class BelowTest(unittest.TestCase):
    def test_rejection_path_by_hand(self):
        # For b = 3 the threshold is (2^64 - 3) mod 3 = 1, so only low = 0 (a draw of 0) is
        # rejected; 2^63 * 3 = 2^64 + 2^63 then gives result 1 with low = 2^63.
        rng = FakeRng([0, 1 << 63])
        self.assertEqual(wr.below(rng, 3), 1)
        self.assertEqual(rng.calls, 2)

    def test_low_at_least_b_skips_threshold(self):
        # For b = 2^63 + 1 a draw of 1 gives low = b, which is accepted at once with result 0.
        rng = FakeRng([1])
        self.assertEqual(wr.below(rng, (1 << 63) + 1), 0)
        # A draw of 0 is rejected (threshold 2^63 - 1); a draw of 2 gives low = 2 < b but
        # 2 < threshold too, so it is rejected; 2^63 gives low = 2^63 >= threshold, result 2^62.
        rng = FakeRng([0, 2, 1 << 63])
        self.assertEqual(wr.below(rng, (1 << 63) + 1), 1 << 62)
        self.assertEqual(rng.calls, 3)

    def test_bound_one_is_zero(self):
        rng = wr.Xoshiro256ss([1, 2, 3, 4])
        self.assertEqual([wr.below(rng, 1) for _ in range(10)], [0] * 10)

    def test_always_below_and_roughly_uniform(self):
        rng = wr.Xoshiro256ss(hashlib.sha256(b"uniformity").digest())
        for b in (2, 3, 7, 10):
            draws = 20000 * b
            counts = [0] * b
            for _ in range(draws):
                x = wr.below(rng, b)
                self.assertTrue(0 <= x < b)
                counts[x] += 1
            # Each count is Binomial(draws, 1/b) with mean 20000 and sd below 142; 5% is > 7 sd.
            for c in counts:
                self.assertLess(abs(c - 20000), 1000, (b, counts))

    def test_huge_bound_rejects_and_stays_below(self):
        rng = wr.Xoshiro256ss(hashlib.sha256(b"huge bound").digest())
        b = (1 << 63) + 1
        outs = [wr.below(rng, b) for _ in range(200)]
        self.assertTrue(all(0 <= x < b for x in outs))
        # About half of all draws are rejected here, so 200 results need well over 200 draws.
        self.assertGreater(rng.calls, 300)


class GreenListTest(unittest.TestCase):
    def test_green_count(self):
        self.assertEqual(wr.green_count(0.25, 4096), 1024)
        self.assertEqual(wr.green_count(0.5, 7), 4)      # 3.5 rounds up
        self.assertEqual(wr.green_count(0.25, 7), 2)     # 1.75 -> 2
        self.assertEqual(wr.green_count(0.1, 50), 5)
        self.assertEqual(wr.green_count(0.1, 32000), 3200)
        with self.assertRaises(ValueError):
            wr.green_count(0.01, 7)                       # rounds to 0 green tokens
        with self.assertRaises(ValueError):
            wr.green_count(0.99, 7)                       # rounds to V green tokens
        with self.assertRaises(ValueError):
            wr.green_count(1.0, 4096)

    def test_distinct_ids_in_range(self):
        key = hashlib.sha256(b"epwa test key").digest()
        for V, gamma in ((7, 0.5), (50, 0.1), (4096, 0.25), (32000, 0.5)):
            n = wr.green_count(gamma, V)
            ids = wr.green_list(wr.kgw_seed(key, V, 3), V, n)
            self.assertEqual(len(ids), n)
            self.assertEqual(len(set(ids)), n)
            self.assertTrue(all(0 <= i < V for i in ids))

    def test_nested_prefix(self):
        key = bytes(range(32))
        for V in (7, 50, 4096):
            seed = wr.epw_seed(key, V, 2, bytes(32))
            small = wr.green_list(seed, V, wr.green_count(0.25, V))
            large = wr.green_list(seed, V, wr.green_count(0.5, V))
            self.assertEqual(large[:len(small)], small)

    def test_first_step_by_hand(self):
        # The first green id is a[0] after swapping with j = below(V), i.e. just below(V).
        seed = wr.kgw_seed(bytes(32), 4096, 0)
        rng = wr.Xoshiro256ss(seed)
        self.assertEqual(wr.green_list(seed, 4096, 1), [wr.below(rng, 4096)])

    def test_lists_differ_by_expert(self):
        key, rh = bytes(range(32)), bytes(32)
        a = set(wr.green_list(wr.epw_seed(key, 4096, 0, rh), 4096, 1024))
        b = set(wr.green_list(wr.epw_seed(key, 4096, 1, rh), 4096, 1024))
        # Independent quarter-lists overlap in about 256 ids; identical ones would overlap in 1024.
        self.assertLess(len(a & b), 400)


class BinomialTest(unittest.TestCase):
    def brute(self, n, k, p):
        return sum((Fraction(math.comb(n, i)) * p ** i * (1 - p) ** (n - i)
                    for i in range(max(k, 0), n + 1)), Fraction(0))

    def test_against_brute_force(self):
        for p in (Fraction(0), Fraction(1, 4), Fraction(4, 7), Fraction(1, 2), Fraction(1)):
            for n in range(0, 13):
                for k in range(-1, n + 3):
                    exact = wr.binomial_upper_tail_exact(n, k, p)
                    self.assertEqual(exact, self.brute(n, k, p), (n, k, p))
                    self.assertEqual(wr.binomial_upper_tail(n, k, p), float(exact))

    def test_one_minus_cdf(self):
        p = Fraction(1024, 4096)
        n = 60
        for k in range(0, n + 1):
            cdf = sum((Fraction(math.comb(n, i)) * p ** i * (1 - p) ** (n - i)
                       for i in range(k)), Fraction(0))
            self.assertEqual(wr.binomial_upper_tail_exact(n, k, p), 1 - cdf)

    def test_hand_values(self):
        self.assertEqual(wr.binomial_upper_tail(10, 10, "1/2"), 2.0 ** -10)
        self.assertEqual(wr.binomial_upper_tail(2, 1, "1/2"), 0.75)
        self.assertEqual(wr.binomial_upper_tail(5, 0, "1/4"), 1.0)
        # k = n = 2000 with p = 1/4 is 4^-2000: zero as a double, but its log is kept.
        exact = wr.binomial_upper_tail_exact(2000, 2000, "1/4")
        self.assertEqual(exact, Fraction(1, 4 ** 2000))
        self.assertEqual(float(exact), 0.0)
        self.assertAlmostEqual(wr.log10_fraction(exact), -2000 * math.log10(4), places=9)

    def test_float_p_refused(self):
        with self.assertRaises(TypeError):
            wr.binomial_upper_tail(10, 3, 0.25)

    def test_z_score(self):
        self.assertEqual(wr.z_score(50, 200, 0.25), 0.0)
        self.assertAlmostEqual(wr.z_score(75, 200, 0.25), 25 / math.sqrt(37.5), places=12)
        self.assertAlmostEqual(wr.z_score(6, 10, Fraction(1, 2)),
                               1 / math.sqrt(2.5), places=12)


class VectorsTest(unittest.TestCase):
    def run_cli(self, *args):
        return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)

    def test_stored_vectors_match(self):
        proc = self.run_cli("check", VECTORS)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_check_reports_a_difference(self):
        with open(VECTORS, encoding="utf-8") as f:
            doc = json.load(f)
        doc["green_lists"][0]["first_ids"][0] += 1
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "bad.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            proc = self.run_cli("check", path)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("differs", proc.stderr)

    def test_stored_vectors_are_consistent(self):
        with open(VECTORS, encoding="utf-8") as f:
            doc = json.load(f)
        self.assertEqual(doc["scheme"], "EPW-A green v1")
        self.assertGreaterEqual(len(doc["green_lists"]), 12)
        self.assertGreaterEqual(len(doc["binomial"]), 15)
        below = doc["below"]
        self.assertGreater(below["next_calls"], len(below["outputs"]))
        for e in doc["binomial"]:
            self.assertEqual(float(e["tail_17g"]), e["tail"])

    def test_green_cli(self):
        key = bytes(range(32))
        rh = wr.ROUTER_HASH_BUNDLED
        proc = self.run_cli("green", "--key-hex", key.hex(), "--router-hash-hex", rh.hex(),
                            "--expert", "0", "--vocab", "50", "--gamma", "0.5")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        want = wr.green_list(wr.epw_seed(key, 50, 0, rh), 50, 25)
        self.assertEqual([int(x) for x in proc.stdout.split()], want)
        proc = self.run_cli("green", "--key-hex", key.hex(), "--previous-token", "9",
                            "--vocab", "7", "--gamma", "0.5")
        self.assertEqual([int(x) for x in proc.stdout.split()],
                         wr.green_list(wr.kgw_seed(key, 7, 9), 7, 4))


V2_VECTORS = os.path.join(os.path.dirname(TOOLS), "tests", "data", "watermark_v2_vectors.json")


class V2SeedTest(unittest.TestCase):
    KEY = bytes(range(32))
    RH = bytes(range(100, 132))

    def test_tag_is_16_bytes(self):
        self.assertEqual(wr.GREEN_TAG_V2, b"EPW-A green v2\0\0")

    def test_messages_by_hand(self):
        # tag2 || u8 kind || u32 V || router_hash || i32 layer || i32 expert || i32 token, built
        # here byte by byte from the spec: V = 4096, item (2, -1, 17).
        body = (b"\x00\x10\x00\x00" + self.RH
                + b"\x02\x00\x00\x00" + b"\xff\xff\xff\xff" + b"\x11\x00\x00\x00")
        list_msg = b"EPW-A green v2\x00\x00" + b"\x03" + body
        rank_msg = b"EPW-A green v2\x00\x00" + b"\x04" + body
        self.assertEqual(len(list_msg), 16 + 1 + 4 + 32 + 12)
        self.assertEqual(wr.context_list_seed(self.KEY, 4096, self.RH, 2, -1, 17),
                         hmac.new(self.KEY, list_msg, hashlib.sha256).digest())
        self.assertEqual(wr.context_rank_seed(self.KEY, 4096, self.RH, 2, -1, 17),
                         hmac.new(self.KEY, rank_msg, hashlib.sha256).digest())
        # A token-only item at V = 32000 still carries the router hash.
        msg = (b"EPW-A green v2\x00\x00" + b"\x03" + b"\x00\x7d\x00\x00" + self.RH
               + b"\xff\xff\xff\xff" * 2 + b"\xff\x7c\x00\x00")
        self.assertEqual(wr.context_list_seed(self.KEY, 32000, self.RH, -1, -1, 31999),
                         hmac.new(self.KEY, msg, hashlib.sha256).digest())

    def test_absent_is_minus_one_as_u32(self):
        self.assertEqual(wr._i32(-1), b"\xff\xff\xff\xff")
        self.assertEqual(wr._i32(0x7FFFFFFF), b"\xff\xff\xff\x7f")
        for bad in (-2, 1 << 31, 1 << 32):
            with self.assertRaises(ValueError):
                wr.context_list_seed(self.KEY, 4096, self.RH, bad, 0, 0)
        # -1 must not collide with 0 or with any other part's -1.
        seeds = {wr.context_list_seed(self.KEY, 4096, self.RH, *item)
                 for item in ((0, 0, 0), (-1, 0, 0), (0, -1, 0), (0, 0, -1), (-1, -1, 0),
                              (-1, -1, -1), (0, 3, 17), (-1, -1, 17), (0, 3, -1))}
        self.assertEqual(len(seeds), 9)

    def test_kinds_and_versions_separate(self):
        ls = wr.context_list_seed(self.KEY, 4096, self.RH, 0, 3, 17)
        rs = wr.context_rank_seed(self.KEY, 4096, self.RH, 0, 3, 17)
        self.assertNotEqual(ls, rs)
        self.assertNotEqual(ls, wr.context_list_seed(self.KEY, 4097, self.RH, 0, 3, 17))
        self.assertNotEqual(ls, wr.context_list_seed(self.KEY, 4096, bytes(32), 0, 3, 17))
        self.assertNotEqual(ls, wr.epw_seed(self.KEY, 4096, 3, self.RH))

    def test_v2_list_is_the_v1_permutation_of_the_list_seed(self):
        seed = wr.context_list_seed(self.KEY, 50, self.RH, 1, 2, 3)
        self.assertEqual(wr.v2_green_list(self.KEY, 50, self.RH, 1, 2, 3, 5),
                         wr.green_list(seed, 50, 5))
        small = wr.v2_green_list(self.KEY, 4096, self.RH, -1, -1, 9, 1024)
        large = wr.v2_green_list(self.KEY, 4096, self.RH, -1, -1, 9, 2048)
        self.assertEqual(large[:1024], small)


class V2RankTest(unittest.TestCase):
    def test_splitmix64_finalizer(self):
        # splitmix64 seeded with 0 returns f(k * 0x9e3779b97f4a7c15) for k = 1, 2, 3: the
        # published first outputs.
        g = 0x9E3779B97F4A7C15
        self.assertEqual(wr.splitmix64_finalizer(g), 0xE220A8397B1DCDAF)
        self.assertEqual(wr.splitmix64_finalizer(2 * g & wr.MASK64), 0x6E789E6AA1B965F4)
        self.assertEqual(wr.splitmix64_finalizer(3 * g & wr.MASK64), 0x06C45D188009454F)
        self.assertEqual(wr.splitmix64_finalizer(0), 0)

    def test_rank_by_hand(self):
        f = wr.splitmix64_finalizer
        k0, k1 = 0x0123456789ABCDEF, 0xFEDCBA9876543210
        self.assertEqual(wr.self_salt_rank(k0, k1, 5), f(k0 ^ f(k1 + 5)))
        # k1 + v wraps mod 2^64: k1 = 2^64 - 1 and v = 1 give f(k0 XOR f(0)) = f(k0).
        self.assertEqual(wr.self_salt_rank(k0, wr.MASK64, 1), f(k0))

    def test_rank_keys_are_the_first_two_words(self):
        seed = struct.pack("<4Q", 11, 22, 33, 44)
        self.assertEqual(wr.rank_keys(seed), (11, 22))

    def test_rank_is_deterministic_and_keyed(self):
        key, rh = bytes(range(32)), wr.ROUTER_HASH_BUNDLED
        a = wr.rank_keys(wr.context_rank_seed(key, 4096, rh, 0, 3, 17))
        b = wr.rank_keys(wr.context_rank_seed(key, 4096, rh, 0, 3, 17))
        c = wr.rank_keys(wr.context_rank_seed(key, 4096, rh, 0, 3, -1))
        ra = [wr.self_salt_rank(*a, v) for v in range(100)]
        self.assertEqual(ra, [wr.self_salt_rank(*b, v) for v in range(100)])
        self.assertNotEqual(ra, [wr.self_salt_rank(*c, v) for v in range(100)])
        self.assertEqual(len(set(ra)), 100)
        # The rank uses the rank seed, not the list seed.
        ls = wr.rank_keys(wr.context_list_seed(key, 4096, rh, 0, 3, 17))
        self.assertNotEqual(ls, a)

    def test_minhash_first_on_ties(self):
        keys = [(5, 6), (1, 2), (1, 2)]
        self.assertEqual(wr.minhash_pick([(1, 2), (1, 2)], 7), 0)
        want = min(range(3), key=lambda i: (wr.self_salt_rank(*keys[i], 7), i))
        self.assertEqual(wr.minhash_pick(keys, 7), want)

    def test_minhash_choice_depends_on_the_candidate(self):
        key, rh, V = bytes(range(32)), wr.ROUTER_HASH_BUNDLED, 4096
        items = wr.v2_items("epw2-minhash", [3, 1, 4, 1], 17)
        self.assertEqual(items, [(0, 3, -1), (1, 1, -1), (2, 4, -1), (3, 1, -1), (-1, -1, 17)])
        keys = [wr.rank_keys(wr.context_rank_seed(key, V, rh, *i)) for i in items]
        picks = [wr.minhash_pick(keys, v) for v in range(V)]
        counts = [picks.count(i) for i in range(len(items))]
        # Each item is the minimum for about V / 5 = 819 candidates (sd about 26).
        for c in counts:
            self.assertLess(abs(c - V / 5), 150, counts)
        # The scorer's vote uses the chosen item.
        lists = wr.V2Lists(key, rh, V, 1024)
        ids, experts = [17, 0], [[3, 1, 4, 1], [0, 0, 0, 0]]
        for v in (0, 1, 2, 3, 1000, 4095):
            ids[1] = v
            r = wr.score_v2(key, rh, V, 0.25, "epw2-minhash", ids, 1, experts, cache=lists)
            item = items[picks[v]]
            self.assertEqual(r["votes"], [{"position": 1, "token": v, "item": list(item),
                                           "green": v in lists.green(item), "counted": True}])


class V2ScoreTest(unittest.TestCase):
    KEY = hashlib.sha256(b"epwa test key").digest()
    RH = wr.ROUTER_HASH_BUNDLED
    V = 50
    N_GREEN = 5   # gamma 0.1

    def lists(self):
        return wr.V2Lists(self.KEY, self.RH, self.V, self.N_GREEN)

    def test_items_of_each_scheme(self):
        row = [5, 6, 7]
        self.assertEqual(wr.v2_items("epw2-et", row, 9, 0), [(0, 5, 9)])
        self.assertEqual(wr.v2_items("epw2-et", row, 9, 2), [(2, 7, 9)])
        self.assertEqual(wr.v2_items("epw2-et", row, 9, -1), [(2, 7, 9)])
        self.assertEqual(wr.v2_items("epw2-votes", row, 9),
                         [(0, 5, 9), (1, 6, 9), (2, 7, 9)])
        with self.assertRaises(ValueError):
            wr.v2_items("epw2-et", row, 9, 3)
        with self.assertRaises(ValueError):
            wr.v2_items("epw2-xx", row, 9)

    def test_tokens_use_the_previous_position(self):
        ids = [3, 8, 1, 4]
        experts = [[0, 1], [2, 3], [4, 5], [6, 7]]
        lists = self.lists()
        r = wr.score_v2(self.KEY, self.RH, self.V, 0.1, "epw2-votes", ids, 2, experts,
                        cache=lists)
        self.assertEqual([(v["position"], v["token"], v["item"]) for v in r["votes"]],
                         [(2, 1, [0, 2, 8]), (2, 1, [1, 3, 8]),
                          (3, 4, [0, 4, 1]), (3, 4, [1, 5, 1])])
        for v in r["votes"]:
            self.assertEqual(v["green"], v["token"] in lists.green(tuple(v["item"])))
        with self.assertRaises(ValueError):
            wr.score_v2(self.KEY, self.RH, self.V, 0.1, "epw2-votes", ids, 0, experts)

    def test_dedup_counts_distinct_pairs(self):
        # Pairs (x, v) = (1, 2) with experts (4, 4) at positions 0 and 3, and (1, 2) with
        # experts (4, 5) at position 5: epw2-et (layer 0) repeats its item all three times,
        # epw2-votes repeats layer 0's vote twice and layer 1's vote once.
        ids = [1, 2, 9, 1, 2, 1, 2]
        experts = [[4, 4], [0, 0], [0, 0], [4, 4], [0, 0], [4, 5], [0, 0]]
        lists = self.lists()
        for scheme, n_votes, n in (("epw2-et", 6, 4), ("epw2-votes", 12, 9)):
            r = wr.score_v2(self.KEY, self.RH, self.V, 0.1, scheme, ids, 1, experts,
                            cache=lists)
            self.assertEqual((r["n_votes"], r["n"]), (n_votes, n), scheme)
            self.assertEqual(r["green"], sum(v["green"] for v in r["votes"] if v["counted"]))
            raw = wr.score_v2(self.KEY, self.RH, self.V, 0.1, scheme, ids, 1, experts,
                              dedup=False, cache=lists)
            self.assertEqual(raw["n"], n_votes)
            self.assertTrue(all(v["counted"] for v in raw["votes"]))
            self.assertEqual(raw["green"], r["green_votes"])
            # Statistics are v1's over the counted votes.
            p0 = Fraction(self.N_GREEN, self.V)
            self.assertEqual(r["p0"], p0)
            self.assertEqual(r["z"], wr.z_score(r["green"], n, p0))
            self.assertEqual(r["log10_p"], wr.log10_fraction(
                wr.binomial_upper_tail_exact(n, r["green"], p0)))
        # epw2-minhash: the same context and candidate always choose the same item, so the
        # repeat at position 4 is dropped.
        r = wr.score_v2(self.KEY, self.RH, self.V, 0.1, "epw2-minhash", ids, 1, experts,
                        cache=lists)
        self.assertEqual(r["votes"][0]["item"], r["votes"][3]["item"])
        self.assertFalse(r["votes"][3]["counted"])

    def test_null_distribution(self):
        # Random text under random keys: z should be close to N(0, 1) in every scheme. A key
        # scores several sequences, so that its lists are built once (V2Lists) and reused; V is
        # small for the same reason. epw2-minhash keys most votes by the L * E token-free items,
        # whose few lists are fixed under one key, so its z averages over more keys (with 10 keys
        # the key-to-key spread alone would give its mean a standard error of about 0.05).
        rng = random.Random(20250611)
        V, gamma, L, E = 200, 0.25, 3, 4
        n_green = wr.green_count(gamma, V)
        keys = {"epw2-et": 10, "epw2-minhash": 100, "epw2-votes": 10}
        for scheme in wr.V2_SCHEMES:
            zs = []
            for _ in range(keys[scheme]):
                key, rh = rng.randbytes(32), rng.randbytes(32)
                lists = wr.V2Lists(key, rh, V, n_green)
                for _ in range(2000 // keys[scheme]):
                    ids = [rng.randrange(V) for _ in range(100)]
                    experts = [[rng.randrange(E) for _ in range(L)] for _ in range(100)]
                    r = wr.score_v2(key, rh, V, gamma, scheme, ids, 1, experts,
                                    slot=rng.randrange(L), cache=lists)
                    zs.append(r["z"])
            self.assertEqual(len(zs), 2000)
            mean, sd = statistics.fmean(zs), statistics.pstdev(zs)
            self.assertLess(abs(mean), 0.1, (scheme, mean, sd))
            self.assertLess(abs(sd - 1), 0.1, (scheme, mean, sd))


class V2VectorsTest(unittest.TestCase):
    def run_cli(self, *args):
        return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)

    def test_stored_vectors_match(self):
        proc = self.run_cli("v2check", V2_VECTORS)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_check_reports_a_difference(self):
        with open(V2_VECTORS, encoding="utf-8") as f:
            doc = json.load(f)
        doc["scoring"][1]["votes"][0]["green"] ^= True
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "bad.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            proc = self.run_cli("v2check", path)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("differs", proc.stderr)

    def test_stored_vectors_are_consistent(self):
        with open(V2_VECTORS, encoding="utf-8") as f:
            doc = json.load(f)
        self.assertEqual(doc["scheme"], "EPW-A green v2")
        self.assertGreaterEqual(len(doc["seeds"]), 8)
        self.assertEqual([c["scheme"] for c in doc["scoring"]], list(wr.V2_SCHEMES))
        for c in doc["seeds"]:
            k0, k1 = wr.rank_keys(bytes.fromhex(c["rank_seed_hex"]))
            self.assertEqual(c["ranks"], [wr.self_salt_rank(k0, k1, v) for v in c["rank_tokens"]])
        for c in doc["scoring"]:
            counted = [v for v in c["votes"] if v["counted"]]
            self.assertEqual(c["n"], len(counted))
            self.assertLess(c["n"], c["n_votes"])
            self.assertEqual(c["green"], sum(v["green"] for v in counted))
            self.assertEqual(float(c["z_17g"]), c["z"])
            self.assertEqual(len(c["ids"]), len(c["experts"]))
            self.assertTrue(all(len(row) == c["layers"] for row in c["experts"]))


if __name__ == "__main__":
    unittest.main()
