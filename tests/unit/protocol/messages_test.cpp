// Encoders and decoders agree: decode(encode(x)) == x for every message sluice writes.
#include "protocol/pg/messages.hpp"

#include <catch2/catch.hpp>

using namespace sluice;
using namespace sluice::pg;

namespace {
Frame only_frame(const Buffer& b, bool startup = false) {
  auto r = startup ? next_startup_frame(b) : next_frame(b);
  REQUIRE(std::holds_alternative<Frame>(r));
  auto f = std::get<Frame>(r);
  REQUIRE(f.size == b.size());
  return f;
}
}  // namespace

TEST_CASE("startup packets decode") {
  Buffer b;
  encode_startup_message(b, {{"user", "app"}, {"database", "appdb"}, {"application_name", "psql"}});
  auto d = decode_startup(only_frame(b, true).body);
  auto& m = std::get<StartupMessage>(std::get<StartupPacket>(d));
  CHECK(m.version == kProtocolV3);
  CHECK(m.get("user") == "app");
  CHECK(m.get("database") == "appdb");
  CHECK(m.get("application_name") == "psql");
  CHECK(m.get("missing").empty());

  Buffer ssl;
  encode_ssl_request(ssl);
  CHECK(std::holds_alternative<SslRequest>(
      std::get<StartupPacket>(decode_startup(only_frame(ssl, true).body))));

  Buffer cancel;
  encode_cancel_request(cancel, {42, 0xdeadbeef});
  auto c = std::get<CancelRequest>(
      std::get<StartupPacket>(decode_startup(only_frame(cancel, true).body)));
  CHECK(c.pid == 42);
  CHECK(c.secret == 0xdeadbeef);
}

TEST_CASE("malformed startup packets are errors, not crashes") {
  auto decode = [](std::initializer_list<std::uint8_t> body) {
    Buffer b(body);
    return decode_startup(b);
  };
  CHECK(std::get<DecodeError>(decode({0, 3, 0, 0, 'u', 's'})).sqlstate == "08P01");  // no NUL
  CHECK(std::get<DecodeError>(decode({0, 2, 0, 0, 0})).sqlstate == "0A000");         // protocol 2
  CHECK(std::get<DecodeError>(decode({0x04, 0xd2, 0x16, 0x2f, 1})).sqlstate ==
        "08P01");  // SSL + junk
  CHECK(std::get<DecodeError>(decode({0x04, 0xd2})).sqlstate == "08P01");
}

TEST_CASE("backend messages round-trip") {
  Buffer b;
  encode_parameter_status(b, "server_version", "15.18");
  auto p = decode_parameter_status(only_frame(b).body);
  REQUIRE(p);
  CHECK(p->name == "server_version");
  CHECK(p->value == "15.18");

  b.clear();
  encode_backend_key_data(b, {7, 99});
  auto k = decode_backend_key_data(only_frame(b).body);
  REQUIRE(k);
  CHECK(k->pid == 7);
  CHECK(k->secret == 99);

  for (char s : {'I', 'T', 'E'}) {
    b.clear();
    encode_ready_for_query(b, s);
    CHECK(decode_ready_for_query(only_frame(b).body) == s);
  }
  b.clear();
  encode_ready_for_query(b, 'Q');
  CHECK_FALSE(decode_ready_for_query(only_frame(b).body));

  b.clear();
  encode_error_response(b, {"FATAL", "28P01", "password authentication failed", "d", "h"});
  auto f = only_frame(b);
  CHECK(f.type == 'E');
  auto e = decode_error_fields(f.body);
  REQUIRE(e);
  CHECK(e->get('S') == "FATAL");
  CHECK(e->get('C') == "28P01");
  CHECK(e->get('M') == "password authentication failed");
  CHECK(e->get('D') == "d");
  CHECK(e->get('H') == "h");

  b.clear();
  encode_notice_response(b, {"NOTICE", "00000", "hello"});
  auto n = only_frame(b);
  CHECK(n.type == 'N');
  auto nf = decode_error_fields(n.body);
  REQUIRE(nf);
  CHECK(nf->get('M') == "hello");
  CHECK(nf->get('D').empty());

  b.clear();
  encode_auth_sasl(b, {"SCRAM-SHA-256"});
  auto a = decode_authentication(only_frame(b).body);
  REQUIRE(a);
  CHECK(a->code == auth::kSasl);
  auto mechs = decode_sasl_mechanisms(a->data);
  REQUIRE(mechs);
  CHECK(*mechs == std::vector<std::string_view>{"SCRAM-SHA-256"});
}

TEST_CASE("frontend auth messages round-trip") {
  Buffer b;
  std::string payload = "n,,n=,r=abc";
  encode_sasl_initial_response(b, "SCRAM-SHA-256", bytes::as_bytes(payload));
  auto s = decode_sasl_initial_response(only_frame(b).body);
  REQUIRE(s);
  CHECK(s->mechanism == "SCRAM-SHA-256");
  REQUIRE(s->data);
  CHECK(bytes::as_chars(*s->data) == payload);

  b.clear();
  encode_password_message(b, "md5abc");
  CHECK(decode_password_message(only_frame(b).body) == "md5abc");

  Buffer bad{0, 0, 0, 0};  // no mechanism terminator
  CHECK_FALSE(decode_sasl_initial_response(bad));
  Buffer bad_len{'M', 0, 0, 0, 0, 9};  // declares 9 bytes, has 0
  CHECK_FALSE(decode_sasl_initial_response(bad_len));
}

TEST_CASE("DataRow decodes values and NULLs, rejects lies about lengths") {
  Buffer b = {0,    3,                           // three columns
              0,    0,    0,    2,    'h', 'i',  // "hi"
              0xff, 0xff, 0xff, 0xff,            // NULL
              0,    0,    0,    0};              // ""
  auto row = decode_data_row(b);
  REQUIRE(row);
  REQUIRE(row->size() == 3);
  CHECK((*row)[0] == "hi");
  CHECK(!(*row)[1]);
  CHECK((*row)[2] == "");

  Buffer too_long = {0, 1, 0, 0, 0, 9, 'x'};
  CHECK(!decode_data_row(too_long));
  Buffer huge_count = {0xff, 0xff, 0, 0, 0, 0};
  CHECK(!decode_data_row(huge_count));
  Buffer trailing = {0, 1, 0, 0, 0, 1, 'x', 'y'};
  CHECK(!decode_data_row(trailing));
}

TEST_CASE("RowDescription, DataRow and CommandComplete encode as the server sends them") {
  pg::Buffer out;
  pg::encode_row_description(out, {{"database", 25}, {"cl_active", 23}});
  pg::encode_data_row(out, {std::string_view("appdb"), std::nullopt});
  pg::encode_command_complete(out, "SHOW");
  pg::Span rest(out);
  auto t = std::get<pg::Frame>(pg::next_frame(rest));
  CHECK(t.type == 'T');
  // 2 columns; "database\0" + 18 bytes of attributes; "cl_active\0" + 18.
  CHECK(t.body.size() == 2 + 9 + 18 + 10 + 18);
  CHECK(t.body[1] == 2);
  rest = rest.subspan(t.size);
  auto d = std::get<pg::Frame>(pg::next_frame(rest));
  CHECK(d.type == 'D');
  auto row = pg::decode_data_row(d.body);
  REQUIRE(row);
  REQUIRE(row->size() == 2);
  CHECK((*row)[0] == std::optional<std::string_view>("appdb"));
  CHECK_FALSE((*row)[1]);
  rest = rest.subspan(d.size);
  auto c = std::get<pg::Frame>(pg::next_frame(rest));
  CHECK(c.type == 'C');
  CHECK(c.size == rest.size());
  CHECK(std::string_view(reinterpret_cast<const char*>(c.body.data()), c.body.size()) ==
        std::string_view("SHOW\0", 5));
}
