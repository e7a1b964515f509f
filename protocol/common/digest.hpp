// Message digests as lower-case hex, on OpenSSL's EVP interface (md5 auth, cache keys).
#pragma once

#include <openssl/evp.h>

#include <string>
#include <string_view>

namespace sluice::digest {

inline std::string hex(const EVP_MD* md, std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, md, nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 15]);
  }
  return out;
}

}  // namespace sluice::digest
