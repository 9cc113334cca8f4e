#include "base/sha256.h"

#include <openssl/evp.h>

#include "base/error.h"

namespace epwa {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  Require(ctx_ && EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) == 1, "SHA-256 unavailable");
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::Add(const void* data, size_t n) { EVP_DigestUpdate(ctx_, data, n); }

void Sha256::AddU64(uint64_t v) {
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(v >> (8 * i));
  Add(le, 8);
}

void Sha256::AddString(const std::string& s) {
  AddU64(s.size());
  Add(s.data(), s.size());
}

std::string Sha256::Hex() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx_, md, &len);
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += digits[md[i] >> 4];
    out += digits[md[i] & 15];
  }
  return out;
}

}  // namespace epwa
