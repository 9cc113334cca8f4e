#include "base/sha256.h"

#include <gtest/gtest.h>

namespace epwa {
namespace {

// FIPS 180-2 test vectors.
TEST(Sha256, KnownVectors) {
  Sha256 empty;
  EXPECT_EQ(empty.Hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  Sha256 abc;
  abc.Add("ab", 2);
  abc.Add("c", 1);  // incremental
  EXPECT_EQ(abc.Hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256, LengthPrefixSeparatesStrings) {
  Sha256 a, b;
  a.AddString("ab");
  a.AddString("c");
  b.AddString("a");
  b.AddString("bc");
  EXPECT_NE(a.Hex(), b.Hex());
}

}  // namespace
}  // namespace epwa
