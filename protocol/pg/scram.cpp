// SCRAM-SHA-256 verifiers and exchanges built on OpenSSL's HMAC, SHA-256 and PBKDF2.
#include "protocol/pg/scram.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <charconv>
#include <stdexcept>

#include "protocol/common/base64.hpp"

namespace sluice::pg::scram {
namespace {

Key hmac(const std::uint8_t* key, std::size_t key_len, std::string_view msg) {
  Key out{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), key, static_cast<int>(key_len),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out.data(), &len);
  return out;
}
Key hmac(const Key& key, std::string_view msg) {
  return hmac(key.data(), key.size(), msg);
}

Key sha256(const Key& in) {
  Key out{};
  SHA256(in.data(), in.size(), out.data());
  return out;
}

Key salted_password(std::string_view password, const std::vector<std::uint8_t>& salt,
                    std::uint32_t iterations) {
  Key out{};
  // PostgreSQL SASLpreps the password; for ASCII passwords that is the identity.
  PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), salt.data(),
                    static_cast<int>(salt.size()), static_cast<int>(iterations), EVP_sha256(),
                    static_cast<int>(out.size()), out.data());
  return out;
}

bool equal(const Key& a, const Key& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string b64(const Key& k) {
  return base64::encode(bytes::Span(k.data(), k.size()));
}

std::optional<Key> decode_key(std::string_view text) {
  auto raw = base64::decode(text);
  if (!raw || raw->size() != 32) return std::nullopt;
  Key k{};
  std::copy(raw->begin(), raw->end(), k.begin());
  return k;
}

std::string random_nonce() {
  auto raw = random_bytes(18);
  return base64::encode(bytes::Span(raw.data(), raw.size()));
}

// Splits "a=x,b=y,..." into attributes; values may contain '=' but never ','.
std::vector<std::pair<char, std::string_view>> attributes(std::string_view msg) {
  std::vector<std::pair<char, std::string_view>> out;
  while (!msg.empty()) {
    auto comma = msg.find(',');
    std::string_view part = msg.substr(0, comma);
    if (part.size() < 2 || part[1] != '=') return {};
    out.emplace_back(part[0], part.substr(2));
    if (comma == std::string_view::npos) break;
    msg.remove_prefix(comma + 1);
    if (msg.empty()) return {};  // trailing comma
  }
  return out;
}

// A printable nonce per RFC 5802: any printable ASCII except ','.
bool valid_nonce(std::string_view n) {
  if (n.empty() || n.size() > 1024) return false;
  for (char c : n) {
    if (c < 0x21 || c > 0x7e || c == ',') return false;
  }
  return true;
}

}  // namespace

std::vector<std::uint8_t> random_bytes(std::size_t n) {
  std::vector<std::uint8_t> out(n);
  if (RAND_bytes(out.data(), static_cast<int>(n)) != 1)
    throw std::runtime_error("RAND_bytes failed");
  return out;
}

Verifier mock_verifier(std::span<const std::uint8_t> secret, std::string_view user) {
  Verifier v;
  Key salt = hmac(secret.data(), secret.size(), user);
  v.salt.assign(salt.begin(), salt.begin() + kSaltLength);
  auto keys = random_bytes(2 * sizeof(Key));
  std::copy_n(keys.begin(), v.stored_key.size(), v.stored_key.begin());
  std::copy_n(keys.begin() + sizeof(Key), v.server_key.size(), v.server_key.begin());
  return v;
}

std::optional<Verifier> Verifier::parse(std::string_view text) {
  constexpr std::string_view kPrefix = "SCRAM-SHA-256$";
  if (!text.starts_with(kPrefix)) return std::nullopt;
  text.remove_prefix(kPrefix.size());
  auto colon1 = text.find(':');
  auto dollar = text.find('$');
  if (colon1 == std::string_view::npos || dollar == std::string_view::npos || dollar < colon1)
    return std::nullopt;
  auto colon2 = text.find(':', dollar);
  if (colon2 == std::string_view::npos) return std::nullopt;
  Verifier v;
  auto iter_text = text.substr(0, colon1);
  auto [ptr, ec] =
      std::from_chars(iter_text.data(), iter_text.data() + iter_text.size(), v.iterations);
  if (ec != std::errc{} || ptr != iter_text.data() + iter_text.size() || v.iterations == 0)
    return std::nullopt;
  auto salt = base64::decode(text.substr(colon1 + 1, dollar - colon1 - 1));
  auto stored = decode_key(text.substr(dollar + 1, colon2 - dollar - 1));
  auto server = decode_key(text.substr(colon2 + 1));
  if (!salt || salt->empty() || !stored || !server) return std::nullopt;
  v.salt = std::move(*salt);
  v.stored_key = *stored;
  v.server_key = *server;
  return v;
}

Verifier Verifier::from_password(std::string_view password, std::vector<std::uint8_t> salt,
                                 std::uint32_t iterations) {
  Verifier v;
  v.iterations = iterations;
  v.salt = std::move(salt);
  Key sp = salted_password(password, v.salt, iterations);
  v.stored_key = sha256(hmac(sp, "Client Key"));
  v.server_key = hmac(sp, "Server Key");
  return v;
}

std::string Verifier::to_string() const {
  return "SCRAM-SHA-256$" + std::to_string(iterations) + ":" +
         base64::encode(bytes::Span(salt.data(), salt.size())) + "$" + b64(stored_key) + ":" +
         b64(server_key);
}

ServerExchange::ServerExchange(Verifier verifier, std::string server_nonce)
    : verifier_(std::move(verifier)),
      server_nonce_(server_nonce.empty() ? random_nonce() : std::move(server_nonce)) {}

std::optional<std::string> ServerExchange::on_client_first(std::string_view msg) {
  state_ = State::kFailed;
  // gs2-header: cbind-flag "," [authzid] ","
  std::size_t first = msg.find(',');
  if (first == std::string_view::npos)
    return error_ = "malformed client-first-message", std::nullopt;
  std::string_view flag = msg.substr(0, first);
  if (flag.starts_with("p=")) {
    error_ = "channel binding was requested but SCRAM-SHA-256-PLUS is not offered";
    return std::nullopt;
  }
  if (flag != "n" && flag != "y") return error_ = "malformed gs2 cbind flag", std::nullopt;
  std::size_t second = msg.find(',', first + 1);
  if (second == std::string_view::npos || second != first + 1) {
    error_ = "authorization identity is not supported";
    return std::nullopt;
  }
  gs2_header_ = std::string(msg.substr(0, second + 1));
  client_first_bare_ = std::string(msg.substr(second + 1));
  auto attrs = attributes(client_first_bare_);
  // n=<user> (PostgreSQL ignores it: the startup packet names the user), r=<nonce>, extensions.
  if (attrs.size() < 2 || attrs[0].first != 'n' || attrs[1].first != 'r' ||
      !valid_nonce(attrs[1].second)) {
    error_ = "malformed client-first-message";
    return std::nullopt;
  }
  for (std::size_t i = 2; i < attrs.size(); ++i) {
    if (attrs[i].first == 'm') return error_ = "unsupported mandatory extension", std::nullopt;
  }
  nonce_ = std::string(attrs[1].second) + server_nonce_;
  server_first_ = "r=" + nonce_ + ",s=" +
                  base64::encode(bytes::Span(verifier_.salt.data(), verifier_.salt.size())) +
                  ",i=" + std::to_string(verifier_.iterations);
  state_ = State::kExpectFinal;
  return server_first_;
}

std::optional<std::string> ServerExchange::on_client_final(std::string_view msg) {
  if (state_ != State::kExpectFinal) return error_ = "unexpected SCRAM message", std::nullopt;
  state_ = State::kFailed;
  auto proof_at = msg.rfind(",p=");
  if (proof_at == std::string_view::npos) return error_ = "missing client proof", std::nullopt;
  std::string_view without_proof = msg.substr(0, proof_at);
  auto attrs = attributes(without_proof);
  if (attrs.size() < 2 || attrs[0].first != 'c' || attrs[1].first != 'r')
    return error_ = "malformed client-final-message", std::nullopt;
  auto cbind = base64::decode(attrs[0].second);
  if (!cbind || bytes::as_chars(bytes::Span(cbind->data(), cbind->size())) != gs2_header_)
    return error_ = "channel binding data does not match", std::nullopt;
  if (attrs[1].second != nonce_) return error_ = "nonce does not match", std::nullopt;
  auto proof = decode_key(msg.substr(proof_at + 3));
  if (!proof) return error_ = "malformed client proof", std::nullopt;

  std::string auth_message =
      client_first_bare_ + "," + server_first_ + "," + std::string(without_proof);
  Key signature = hmac(verifier_.stored_key, auth_message);
  Key client_key{};
  for (std::size_t i = 0; i < client_key.size(); ++i) client_key[i] = (*proof)[i] ^ signature[i];
  if (!equal(sha256(client_key), verifier_.stored_key)) {
    error_ = "password does not match";
    return std::nullopt;
  }
  state_ = State::kDone;
  return "v=" + b64(hmac(verifier_.server_key, auth_message));
}

ClientExchange::ClientExchange(std::string password, std::string client_nonce)
    : password_(std::move(password)),
      client_nonce_(client_nonce.empty() ? random_nonce() : std::move(client_nonce)) {}

std::string ClientExchange::client_first() {
  client_first_bare_ = "n=,r=" + client_nonce_;
  return "n,," + client_first_bare_;
}

std::optional<std::string> ClientExchange::on_server_first(std::string_view msg) {
  auto attrs = attributes(msg);
  if (attrs.size() < 3 || attrs[0].first != 'r' || attrs[1].first != 's' || attrs[2].first != 'i')
    return error_ = "malformed server-first-message", std::nullopt;
  std::string_view nonce = attrs[0].second;
  if (!nonce.starts_with(client_nonce_) || nonce.size() == client_nonce_.size() ||
      !valid_nonce(nonce))
    return error_ = "server nonce does not extend the client nonce", std::nullopt;
  auto salt = base64::decode(attrs[1].second);
  if (!salt || salt->empty()) return error_ = "malformed salt", std::nullopt;
  std::uint32_t iterations = 0;
  auto it = attrs[2].second;
  auto [ptr, ec] = std::from_chars(it.data(), it.data() + it.size(), iterations);
  if (ec != std::errc{} || ptr != it.data() + it.size() || iterations == 0 ||
      iterations > kMaxIterations)
    return error_ = "unacceptable iteration count", std::nullopt;

  Key sp = salted_password(password_, *salt, iterations);
  Key client_key = hmac(sp, "Client Key");
  Key stored_key = sha256(client_key);
  server_key_ = hmac(sp, "Server Key");
  std::string without_proof = "c=biws,r=" + std::string(nonce);  // biws = base64("n,,")
  auth_message_ = client_first_bare_ + "," + std::string(msg) + "," + without_proof;
  Key signature = hmac(stored_key, auth_message_);
  Key proof{};
  for (std::size_t i = 0; i < proof.size(); ++i) proof[i] = client_key[i] ^ signature[i];
  return without_proof + ",p=" + b64(proof);
}

bool ClientExchange::on_server_final(std::string_view msg) {
  if (msg.starts_with("e=")) {
    error_ = "server rejected the exchange: " + std::string(msg.substr(2));
    return false;
  }
  if (!msg.starts_with("v=")) return error_ = "malformed server-final-message", false;
  auto v = decode_key(msg.substr(2));
  if (!v || !equal(*v, hmac(server_key_, auth_message_))) {
    error_ = "server signature does not match: the server does not know the password";
    return false;
  }
  return true;
}

}  // namespace sluice::pg::scram
