// PostgreSQL md5 password hashing helpers on OpenSSL's EVP digest.
#include "protocol/pg/md5.hpp"

#include <openssl/evp.h>

#include "protocol/common/digest.hpp"

namespace sluice::pg::md5 {

std::string hex(std::string_view data) {
  return digest::hex(EVP_md5(), data);
}

std::string stored_hash(std::string_view password, std::string_view user) {
  std::string in(password);
  in.append(user);
  return "md5" + hex(in);
}

std::string response_from_stored(std::string_view stored, const std::array<std::uint8_t, 4>& salt) {
  std::string in(stored.substr(3));
  in.append(reinterpret_cast<const char*>(salt.data()), salt.size());
  return "md5" + hex(in);
}

bool is_stored_hash(std::string_view s) {
  if (s.size() != 35 || !s.starts_with("md5")) return false;
  for (char c : s.substr(3)) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace sluice::pg::md5
