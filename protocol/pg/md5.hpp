// PostgreSQL md5 password authentication: "md5" + md5hex(md5hex(password + user) + salt).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace sluice::pg::md5 {

std::string hex(std::string_view data);
// The form stored in pg_authid for md5 roles: "md5" + md5hex(password + user).
std::string stored_hash(std::string_view password, std::string_view user);
// The PasswordMessage a client sends, from the stored hash ("md5..." form) and the 4-byte salt.
std::string response_from_stored(std::string_view stored, const std::array<std::uint8_t, 4>& salt);
bool is_stored_hash(std::string_view s);

}  // namespace sluice::pg::md5
