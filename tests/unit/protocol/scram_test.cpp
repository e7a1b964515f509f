// SCRAM-SHA-256 against RFC 7677's test vector and client↔server exchanges; md5 hashing.
#include "protocol/pg/scram.hpp"

#include <catch2/catch.hpp>

#include "protocol/common/base64.hpp"
#include "protocol/pg/md5.hpp"

using namespace sluice;
using namespace sluice::pg;

TEST_CASE("RFC 7677 SCRAM-SHA-256 test vector (user/pencil)") {
  auto salt = base64::decode("W22ZaJ0SNY7soEsUEjb6gQ==");
  REQUIRE(salt);
  auto verifier = scram::Verifier::from_password("pencil", *salt, 4096);
  scram::ServerExchange server(verifier, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
  scram::ClientExchange client("pencil", "rOprNGfwEbeRWgbNEkqO");

  std::string first = client.client_first();
  CHECK(first == "n,,n=,r=rOprNGfwEbeRWgbNEkqO");
  auto server_first = server.on_client_first(first);
  REQUIRE(server_first);
  CHECK(*server_first ==
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
  auto client_final = client.on_server_first(*server_first);
  REQUIRE(client_final);
  auto server_final = server.on_client_final(*client_final);
  REQUIRE(server_final);
  CHECK(client.on_server_final(*server_final));
  CHECK(server.state() == scram::ServerExchange::State::kDone);
}

TEST_CASE("RFC 7677 proof with the username in n= verifies") {
  // The RFC's own messages carry n=user; PostgreSQL ignores the name, the proof still holds.
  auto salt = base64::decode("W22ZaJ0SNY7soEsUEjb6gQ==");
  scram::ServerExchange server(scram::Verifier::from_password("pencil", *salt, 4096),
                               "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
  REQUIRE(server.on_client_first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO"));
  auto final_msg = server.on_client_final(
      "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
      "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
  REQUIRE(final_msg);
  CHECK(*final_msg == "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

TEST_CASE("a wrong password fails the proof") {
  auto verifier = scram::Verifier::from_password("secret", scram::random_bytes(16));
  scram::ServerExchange server(verifier);
  scram::ClientExchange client("wrong");
  auto sf = server.on_client_first(client.client_first());
  REQUIRE(sf);
  auto cf = client.on_server_first(*sf);
  REQUIRE(cf);
  CHECK_FALSE(server.on_client_final(*cf));
  CHECK(server.error() == "password does not match");
}

TEST_CASE("verifier strings round-trip and bad ones are rejected") {
  auto v = scram::Verifier::from_password("secret", scram::random_bytes(16));
  auto parsed = scram::Verifier::parse(v.to_string());
  REQUIRE(parsed);
  CHECK(parsed->to_string() == v.to_string());
  CHECK_FALSE(scram::Verifier::parse("SCRAM-SHA-256$4096:abc"));
  CHECK_FALSE(scram::Verifier::parse("SCRAM-SHA-256$x:c2FsdA==$AAAA:BBBB"));
  CHECK_FALSE(scram::Verifier::parse("md5abcdef"));
}

TEST_CASE("malformed client messages are refused, not crashed on") {
  scram::ServerExchange server(scram::Verifier::from_password("x", scram::random_bytes(16)));
  CHECK_FALSE(server.on_client_first(""));
  CHECK_FALSE(server.on_client_first("p=tls-server-end-point,,n=,r=abc"));
  CHECK_FALSE(server.on_client_first("n,a=admin,n=,r=abc"));
  CHECK_FALSE(server.on_client_first("n,,r=abc"));
  scram::ServerExchange again(scram::Verifier::from_password("x", scram::random_bytes(16)));
  REQUIRE(again.on_client_first("y,,n=,r=abc"));
  CHECK_FALSE(again.on_client_final("c=biws,r=abc,p=AAAA"));  // wrong nonce and channel binding
}

TEST_CASE("base64 is strict") {
  CHECK(base64::encode(bytes::as_bytes("pencil")) == "cGVuY2ls");
  CHECK(base64::encode(bytes::as_bytes("pe")) == "cGU=");
  auto d = base64::decode("cGU=");
  REQUIRE(d);
  CHECK(std::string(d->begin(), d->end()) == "pe");
  CHECK_FALSE(base64::decode("cGU"));
  CHECK_FALSE(base64::decode("c=U="));
  CHECK_FALSE(base64::decode("cG!="));
}

TEST_CASE("md5 matches PostgreSQL's md5 password format") {
  // SELECT 'md5' || md5('secret' || 'app')
  CHECK(md5::stored_hash("secret", "app") == "md5" + md5::hex("secretapp"));
  CHECK(md5::hex("") == "d41d8cd98f00b204e9800998ecf8427e");
  CHECK(md5::is_stored_hash(md5::stored_hash("a", "b")));
  CHECK_FALSE(md5::is_stored_hash("md5xyz"));
  std::array<std::uint8_t, 4> salt{1, 2, 3, 4};
  auto stored = md5::stored_hash("secret", "app");
  std::string salted = stored.substr(3) + std::string("\x01\x02\x03\x04", 4);
  CHECK(md5::response_from_stored(stored, salt) == "md5" + md5::hex(salted));
}

TEST_CASE("an unknown user's verifier is shaped like a real one, its salt stable per name") {
  auto secret = scram::random_bytes(32);
  auto real = scram::Verifier::from_password("pw", scram::random_bytes(scram::kSaltLength));
  auto a = scram::mock_verifier(secret, "nobody");
  CHECK(a.iterations == real.iterations);
  CHECK(a.iterations == scram::kDefaultIterations);
  CHECK(a.salt.size() == real.salt.size());
  CHECK(scram::mock_verifier(secret, "nobody").salt == a.salt);
  CHECK(scram::mock_verifier(secret, "nobody2").salt != a.salt);
  CHECK(scram::mock_verifier(scram::random_bytes(32), "nobody").salt != a.salt);
  // No password answers it: the exchange fails at the proof, like a wrong password.
  scram::ServerExchange server(a);
  scram::ClientExchange client("");
  auto first = server.on_client_first(client.client_first());
  REQUIRE(first);
  auto final_msg = client.on_server_first(*first);
  REQUIRE(final_msg);
  CHECK_FALSE(server.on_client_final(*final_msg));
}
