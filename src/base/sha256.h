// Incremental SHA-256 (OpenSSL's EVP interface), shared by the router hash
// (IRSH) and the weight cache's model identity.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace epwa {

class Sha256 {
 public:
  Sha256();  // throws epwa::Error if OpenSSL has no SHA-256
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Add(const void* data, size_t n);
  // Length-prefixed (u64 little-endian), so that ("ab", "c") and ("a", "bc") differ.
  void AddString(const std::string& s);
  void AddU64(uint64_t v);  // little-endian
  // Lowercase hex digest; call once.
  std::string Hex();

 private:
  EVP_MD_CTX* ctx_;
};

}  // namespace epwa
