// SCRAM-SHA-256 (RFC 5802/7677 as PostgreSQL uses it): verifiers, server and client exchanges.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::pg::scram {

inline constexpr std::string_view kMechanism = "SCRAM-SHA-256";
inline constexpr std::uint32_t kDefaultIterations = 4096;
inline constexpr std::uint32_t kMaxIterations = 10'000'000;  // refuse servers that ask for more
inline constexpr std::size_t kSaltLength = 16;  // PostgreSQL's and sluice's own verifiers

using Key = std::array<std::uint8_t, 32>;

// The form stored in pg_authid: SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>
struct Verifier {
  std::uint32_t iterations = kDefaultIterations;
  std::vector<std::uint8_t> salt;
  Key stored_key{};
  Key server_key{};

  static std::optional<Verifier> parse(std::string_view text);
  static Verifier from_password(std::string_view password, std::vector<std::uint8_t> salt,
                                std::uint32_t iterations = kDefaultIterations);
  std::string to_string() const;
};

std::vector<std::uint8_t> random_bytes(std::size_t n);

// For a login name with no usable verifier: one shaped like a real verifier (the default
// iteration count, a salt of the usual length that stays the same for the name, as a real salt
// does: HMAC-SHA-256(secret, name) cut to kSaltLength) whose keys no password matches.
Verifier mock_verifier(std::span<const std::uint8_t> secret, std::string_view user);

// Server side of one exchange. Feed the client's messages; read the replies to send.
class ServerExchange {
 public:
  enum class State { kExpectFirst, kExpectFinal, kDone, kFailed };

  explicit ServerExchange(Verifier verifier, std::string server_nonce = {});

  // client-first-message → server-first-message, or nullopt on a malformed message.
  std::optional<std::string> on_client_first(std::string_view msg);
  // client-final-message → server-final-message when the proof is right; nullopt otherwise.
  std::optional<std::string> on_client_final(std::string_view msg);
  // Why the last step failed (for the log, never containing secrets).
  const std::string& error() const { return error_; }
  State state() const { return state_; }

 private:
  Verifier verifier_;
  std::string server_nonce_;
  std::string client_first_bare_;
  std::string server_first_;
  std::string gs2_header_;
  std::string nonce_;
  std::string error_;
  State state_ = State::kExpectFirst;
};

// Client side, for sluice logging in to a server.
class ClientExchange {
 public:
  explicit ClientExchange(std::string password, std::string client_nonce = {});

  std::string client_first();
  std::optional<std::string> on_server_first(std::string_view msg);  // → client-final
  bool on_server_final(std::string_view msg);                        // verifies the server
  const std::string& error() const { return error_; }

 private:
  std::string password_;
  std::string client_nonce_;
  std::string client_first_bare_;
  std::string auth_message_;
  Key server_key_{};
  std::string error_;
};

}  // namespace sluice::pg::scram
