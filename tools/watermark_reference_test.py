"""Unit tests for tools/watermark_reference.py (hand-checkable cases and the stored vectors).

Run from the repository root with:
  python3 -m unittest tools/watermark_reference_test.py
"""
import hashlib
import hmac
import json
import math
import os
import random
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


if __name__ == "__main__":
    unittest.main()
