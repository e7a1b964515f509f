// The MongoDB wire codec: frames in every split, the size cap before allocation, OP_MSG flags,
// sections and checksums, OP_COMPRESSED noop, the legacy OP_QUERY/OP_REPLY handshake, BSON checks.
#include <bson/bson.h>

#include <catch2/catch.hpp>
#include <string>
#include <variant>

#include "protocol/mongo/wire.hpp"

using namespace sluice;
using mongo::Buffer;
using mongo::Span;
using mongo::WireError;

namespace {

Buffer doc(const char* json) {
  bson_error_t err;
  bson_t* b = bson_new_from_json(reinterpret_cast<const std::uint8_t*>(json), -1, &err);
  REQUIRE(b != nullptr);
  Buffer out(bson_get_data(b), bson_get_data(b) + b->len);
  bson_destroy(b);
  return out;
}

std::string json_of(Span d) {
  bson_t b;
  REQUIRE(bson_init_static(&b, d.data(), d.size()));
  char* s = bson_as_relaxed_extended_json(&b, nullptr);
  std::string out(s);
  bson_free(s);
  return out;
}

mongo::Frame frame_of(const Buffer& b) {
  auto r = mongo::next_frame(b);
  REQUIRE(std::holds_alternative<mongo::Frame>(r));
  return std::get<mongo::Frame>(r);
}

WireError msg_error(const Buffer& b) {
  auto d = mongo::decode_msg(frame_of(b));
  REQUIRE(std::holds_alternative<mongo::Failure>(d));
  return std::get<mongo::Failure>(d).error;
}

void put32(Buffer& b, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
void set32(Buffer& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i)
    b[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
}

// An OP_MSG assembled by hand: flags, then raw section bytes.
Buffer raw_msg(std::uint32_t flags, const Buffer& sections) {
  Buffer b;
  put32(b, 0);
  put32(b, 1);
  put32(b, 0);
  put32(b, mongo::kOpMsg);
  put32(b, flags);
  b.insert(b.end(), sections.begin(), sections.end());
  set32(b, 0, static_cast<std::uint32_t>(b.size()));
  return b;
}

}  // namespace

TEST_CASE("mongo: an OP_MSG with a body and a document sequence, fed in every split") {
  auto body = doc(R"({"insert": "things", "$db": "test", "ordered": true})");
  auto d1 = doc(R"({"_id": 1, "name": "a"})");
  auto d2 = doc(R"({"_id": 2, "tags": ["x", "y"], "sub": {"k": 1.5}})");
  mongo::DocumentSequence seq{"documents", {Span(d1), Span(d2)}};
  Buffer wire;
  mongo::encode_msg(wire, 42, 0, 0, body, std::span(&seq, 1));
  // Two messages back to back, split at every point.
  Buffer two = wire;
  two.insert(two.end(), wire.begin(), wire.end());
  for (std::size_t cut = 0; cut <= two.size(); ++cut) {
    Span first(two.data(), cut);
    auto r = mongo::next_frame(first);
    if (cut < wire.size()) {
      REQUIRE(std::holds_alternative<mongo::NeedMore>(r));
      CHECK(std::get<mongo::NeedMore>(r).bytes == (cut < 4 ? 4 - cut : wire.size() - cut));
      continue;
    }
    REQUIRE(std::holds_alternative<mongo::Frame>(r));
    const auto& f = std::get<mongo::Frame>(r);
    CHECK(f.message.size() == wire.size());
    CHECK(f.header.request_id == 42);
    CHECK(f.header.op_code == mongo::kOpMsg);
    auto rest = mongo::next_frame(first.subspan(f.message.size()));
    CHECK(std::holds_alternative<mongo::Frame>(rest) == (cut == two.size()));
  }
  auto d = mongo::decode_msg(frame_of(wire));
  REQUIRE(std::holds_alternative<mongo::Msg>(d));
  const auto& m = std::get<mongo::Msg>(d);
  CHECK(mongo::command_name(m.body) == "insert");
  CHECK(json_of(m.body) == json_of(body));
  REQUIRE(m.sequences.size() == 1);
  CHECK(m.sequences[0].identifier == "documents");
  REQUIRE(m.sequences[0].documents.size() == 2);
  CHECK(json_of(m.sequences[0].documents[1]) == json_of(d2));
  CHECK_FALSE(m.checksum);
  CHECK_FALSE(m.more_to_come());
}

TEST_CASE("mongo: message lengths are capped before anything is buffered") {
  // A header claiming 2 GB: refused from its first 4 bytes.
  const Buffer huge{0x00, 0x00, 0x00, 0x80};
  auto r = mongo::next_frame(huge);
  REQUIRE(std::holds_alternative<mongo::Failure>(r));
  CHECK(std::get<mongo::Failure>(r).error == WireError::kLengthTooLarge);
  CHECK(std::get<mongo::Failure>(r).detail.find("maxMessageSizeBytes 48000000") !=
        std::string::npos);
  Buffer at_cap;
  put32(at_cap, mongo::kMaxMessageSize);
  CHECK(std::holds_alternative<mongo::NeedMore>(mongo::next_frame(at_cap)));
  Buffer over;
  put32(over, mongo::kMaxMessageSize + 1);
  CHECK(std::get<mongo::Failure>(mongo::next_frame(over)).error == WireError::kLengthTooLarge);
  Buffer tiny;
  put32(tiny, 15);
  CHECK(std::get<mongo::Failure>(mongo::next_frame(tiny)).error == WireError::kLengthTooSmall);
  // Garbage: ASCII text read as a length.
  const std::string garbage = "GET / HTTP/1.1\r\n\r\n";
  auto g = mongo::next_frame(bytes::as_bytes(garbage));
  CHECK(std::get<mongo::Failure>(g).error == WireError::kLengthTooLarge);
}

TEST_CASE("mongo: OP_MSG flag bits: unknown required bits refused, optional ones ignored") {
  auto body = doc(R"({"ping": 1, "$db": "admin"})");
  Buffer section{0};
  section.insert(section.end(), body.begin(), body.end());
  CHECK(msg_error(raw_msg(1u << 2, section)) == WireError::kUnknownRequiredFlag);
  CHECK(msg_error(raw_msg(1u << 15, section)) == WireError::kUnknownRequiredFlag);
  auto ok = mongo::decode_msg(frame_of(raw_msg(
      (1u << 20) | mongo::msg_flag::kExhaustAllowed | mongo::msg_flag::kMoreToCome, section)));
  REQUIRE(std::holds_alternative<mongo::Msg>(ok));
  CHECK(std::get<mongo::Msg>(ok).more_to_come());
  CHECK(std::get<mongo::Msg>(ok).exhaust_allowed());
}

TEST_CASE("mongo: OP_MSG checksums are checked, and rewritten with the ids") {
  auto body = doc(R"({"find": "c", "filter": {"a": {"$gt": 3}}, "$db": "test"})");
  Buffer wire;
  mongo::encode_msg(wire, 5, 0, mongo::msg_flag::kChecksumPresent, body);
  auto d = mongo::decode_msg(frame_of(wire));
  REQUIRE(std::holds_alternative<mongo::Msg>(d));
  CHECK(std::get<mongo::Msg>(d).checksum.has_value());
  CHECK(json_of(std::get<mongo::Msg>(d).body) == json_of(body));
  // A flipped bit anywhere (header included) is caught.
  for (std::size_t at : {std::size_t{4}, std::size_t{25}, wire.size() - 6}) {
    Buffer bad = wire;
    bad[at] ^= 0x01;
    CHECK(msg_error(bad) == WireError::kChecksumMismatch);
  }
  // Forwarding with new ids keeps the message valid.
  mongo::rewrite_ids(wire, 1000, 77);
  auto f = frame_of(wire);
  CHECK(f.header.request_id == 1000);
  CHECK(f.header.response_to == 77);
  CHECK(std::holds_alternative<mongo::Msg>(mongo::decode_msg(f)));
  // ...and clearing a flag on the way (exhaustAllowed) recomputes the checksum over the new bits;
  // checksumPresent itself is never cleared.
  wire[mongo::kHeaderSize + 2] |= 0x01;  // bit 16: exhaustAllowed
  mongo::rewrite_ids(wire, 1001, 0,
                     mongo::msg_flag::kExhaustAllowed | mongo::msg_flag::kChecksumPresent);
  auto cleared = mongo::decode_msg(frame_of(wire));
  REQUIRE(std::holds_alternative<mongo::Msg>(cleared));
  CHECK_FALSE(std::get<mongo::Msg>(cleared).exhaust_allowed());
  CHECK(std::get<mongo::Msg>(cleared).checksum.has_value());
  // Known CRC-32C vector.
  CHECK(mongo::crc32c(bytes::as_bytes("123456789")) == 0xE3069283u);
  // Checksum flag without room for one.
  CHECK(msg_error(raw_msg(mongo::msg_flag::kChecksumPresent, {})) == WireError::kTruncated);
}

TEST_CASE("mongo: OP_MSG sections: one body, known kinds, everything inside the message") {
  auto body = doc(R"({"ping": 1})");
  Buffer one{0};
  one.insert(one.end(), body.begin(), body.end());
  Buffer two = one;
  two.insert(two.end(), one.begin(), one.end());
  CHECK(msg_error(raw_msg(0, two)) == WireError::kTwoBodies);
  CHECK(msg_error(raw_msg(0, {})) == WireError::kNoBody);
  Buffer kind2 = one;
  kind2.push_back(2);
  CHECK(msg_error(raw_msg(0, kind2)) == WireError::kUnknownSectionKind);
  // A sequence alone has no body.
  Buffer seq{1};
  put32(seq, 4 + 2 + static_cast<std::uint32_t>(body.size()));
  seq.push_back('d');
  seq.push_back(0);
  seq.insert(seq.end(), body.begin(), body.end());
  CHECK(msg_error(raw_msg(0, seq)) == WireError::kNoBody);
  Buffer with_seq = one;
  with_seq.insert(with_seq.end(), seq.begin(), seq.end());
  CHECK(std::holds_alternative<mongo::Msg>(mongo::decode_msg(frame_of(raw_msg(0, with_seq)))));
  // A sequence size past the end of the message.
  Buffer long_seq = with_seq;
  set32(long_seq, one.size() + 1, 1000);
  CHECK(msg_error(raw_msg(0, long_seq)) == WireError::kTruncated);
  // A sequence whose documents do not fill it exactly.
  Buffer short_seq = with_seq;
  set32(short_seq, one.size() + 1, 4 + 2 + static_cast<std::uint32_t>(body.size()) - 1);
  CHECK(msg_error(raw_msg(0, short_seq)) == WireError::kBadDocument);
  // A truncated OP_MSG: the body's length claims more than is there.
  Buffer truncated = one;
  truncated.resize(truncated.size() - 3);
  CHECK(msg_error(raw_msg(0, truncated)) == WireError::kBadDocument);
  // Malformed BSON inside a well-sized document: a string element whose length runs past it.
  Buffer bad = doc(R"({"s": "abc"})");
  set32(bad, 4 + 1 + 2, 100);
  Buffer bad_section{0};
  bad_section.insert(bad_section.end(), bad.begin(), bad.end());
  CHECK(msg_error(raw_msg(0, bad_section)) == WireError::kBadDocument);
}

TEST_CASE("mongo: a document sequence holds at most maxWriteBatchSize documents") {
  auto body = doc(R"({"insert": "c", "$db": "t"})");
  const Buffer empty_doc{5, 0, 0, 0, 0};
  std::vector<Span> docs(100'001, Span(empty_doc));
  mongo::DocumentSequence seq{"documents", docs};
  Buffer wire;
  mongo::encode_msg(wire, 1, 0, 0, body, std::span(&seq, 1));
  CHECK(msg_error(wire) == WireError::kBadDocument);
  seq.documents.pop_back();
  Buffer fits;
  mongo::encode_msg(fits, 1, 0, 0, body, std::span(&seq, 1));
  auto d = mongo::decode_msg(frame_of(fits));
  REQUIRE(std::holds_alternative<mongo::Msg>(d));
  CHECK(std::get<mongo::Msg>(d).sequences[0].documents.size() == 100'000);
}

TEST_CASE("mongo: OP_COMPRESSED with the noop compressor; others refused") {
  auto body = doc(R"({"count": "c", "$db": "t"})");
  Buffer inner;
  mongo::encode_msg(inner, 9, 0, mongo::msg_flag::kChecksumPresent, body);
  Buffer wire;
  put32(wire, 0);
  put32(wire, 9);
  put32(wire, 0);
  put32(wire, mongo::kOpCompressed);
  put32(wire, mongo::kOpMsg);
  put32(wire, static_cast<std::uint32_t>(inner.size() - 16));
  wire.push_back(mongo::kCompressorNoop);
  wire.insert(wire.end(), inner.begin() + 16, inner.end());
  set32(wire, 0, static_cast<std::uint32_t>(wire.size()));
  auto out = mongo::decompress(frame_of(wire));
  REQUIRE(std::holds_alternative<mongo::Frame>(out));
  const auto& f = std::get<mongo::Frame>(out);
  CHECK(f.header.op_code == mongo::kOpMsg);
  auto m = mongo::decode_msg(f);  // the checksum covers the uncompressed header: still valid
  REQUIRE(std::holds_alternative<mongo::Msg>(m));
  CHECK(mongo::command_name(std::get<mongo::Msg>(m).body) == "count");
  Buffer zlib = wire;
  zlib[16 + 8] = 2;
  CHECK(std::get<mongo::Failure>(mongo::decompress(frame_of(zlib))).error ==
        WireError::kUnsupportedCompressor);
  Buffer lying = wire;
  set32(lying, 16 + 4, 3);
  CHECK(std::get<mongo::Failure>(mongo::decompress(frame_of(lying))).error ==
        WireError::kTruncated);
}

TEST_CASE("mongo: the legacy handshake: OP_QUERY hello in, OP_REPLY out") {
  auto hello = doc(R"({"isMaster": 1, "helloOk": true, "client": {"driver": {"name": "x"}}})");
  Buffer q;
  put32(q, 0);
  put32(q, 3);
  put32(q, 0);
  put32(q, mongo::kOpQuery);
  put32(q, 0);
  for (char c : std::string("admin.$cmd")) q.push_back(static_cast<std::uint8_t>(c));
  q.push_back(0);
  put32(q, 0);
  put32(q, static_cast<std::uint32_t>(-1));
  q.insert(q.end(), hello.begin(), hello.end());
  set32(q, 0, static_cast<std::uint32_t>(q.size()));
  auto d = mongo::decode_query(frame_of(q));
  REQUIRE(std::holds_alternative<mongo::Query>(d));
  const auto& query = std::get<mongo::Query>(d);
  CHECK(query.collection == "admin.$cmd");
  CHECK(query.limit == -1);
  CHECK(mongo::command_name(query.query) == "isMaster");
  CHECK_FALSE(query.fields);
  Buffer trailing = q;
  trailing.push_back(0);
  set32(trailing, 0, static_cast<std::uint32_t>(trailing.size()));
  CHECK(std::holds_alternative<mongo::Failure>(mongo::decode_query(frame_of(trailing))));

  auto answer = doc(R"({"ismaster": true, "maxWireVersion": 17, "ok": 1.0})");
  Buffer reply;
  mongo::encode_reply(reply, 100, 3, answer);
  auto f = frame_of(reply);
  CHECK(f.header.response_to == 3);
  CHECK(f.header.op_code == mongo::kOpReply);
  auto r = mongo::decode_reply(f);
  REQUIRE(std::holds_alternative<mongo::Reply>(r));
  REQUIRE(std::get<mongo::Reply>(r).documents.size() == 1);
  CHECK(json_of(std::get<mongo::Reply>(r).documents[0]) == json_of(answer));
  Buffer lying = reply;
  set32(lying, 16 + 16, 1'000'000);  // numberReturned
  CHECK(std::holds_alternative<mongo::Failure>(mongo::decode_reply(frame_of(lying))));
}

TEST_CASE("mongo: error documents look like a server's") {
  auto e = mongo::error_document(6, "HostUnreachable", "no server for the primary");
  CHECK(json_of(e) == R"({ "ok" : 0.0, "errmsg" : "no server for the primary", "code" : 6, )"
                      R"("codeName" : "HostUnreachable" })");
  CHECK(mongo::valid_document(e, mongo::kMaxBsonObjectSize, nullptr));
  CHECK(mongo::command_name(e) == "ok");
  std::string why;
  const Buffer five{5, 0, 0, 0, 1};
  CHECK_FALSE(mongo::valid_document(five, 100, &why));
  CHECK(why == "document does not end with a NUL byte");
  CHECK_FALSE(mongo::valid_document(e, 10, &why));
  CHECK(why.find("exceeds 10") != std::string::npos);
}
