// pgoutput v1 and streaming replication decoders: messages captured from a real PostgreSQL 15
// (pg_logical_slot_peek_binary_changes, proto_version 1) decode to the expected fields, every
// prefix and every lying count is refused, and the standby status update is byte-exact.
#include "protocol/pg/pgoutput.hpp"

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

using namespace sluice;
using namespace sluice::pg::pgoutput;

namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes from_hex(std::string_view hex) {
  Bytes out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<std::uint8_t>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  return out;
}

// Real messages from PostgreSQL 15.18 for: CREATE TYPE mood AS ENUM (...); CREATE TABLE items
// (id int PRIMARY KEY, name text, qty int, feel mood, big text) (relid 16433); CREATE TABLE audit
// (id bigint, note text) REPLICA IDENTITY FULL (relid 16440); then inserts, updates, deletes, a
// TRUNCATE of both, pg_logical_emit_message and a transaction replayed from origin "upstream".
constexpr std::string_view kBegin = "420000000003027300000304db5eae1c1a000002ed";
constexpr std::string_view kCommit = "430000000000030273000000000003027330000304db5eae1c1a";
constexpr std::string_view kType = "590000402b7075626c6963006d6f6f6400";
constexpr std::string_view kRelationItems =
    "52000040317075626c6963006974656d73006400050169640000000017ffffffff006e616d650000000019ffffff"
    "ff007174790000000017ffffffff006665656c000000402bffffffff006269670000000019ffffffff";
constexpr std::string_view kRelationAudit =
    "52000040387075626c6963006175646974006600020169640000000014ffffffff016e6f74650000000019ffffff"
    "ff";
// INSERT INTO items VALUES (2, NULL, 5, 'ok', NULL)
constexpr std::string_view kInsert = "49000040314e00057400000001326e74000000013574000000026f6b6e";
// The same row with 'binary', 'true'
constexpr std::string_view kInsertBinary =
    "49000040314e00056200000004000000026e62000000040000000562000000026f6b6e";
// UPDATE items SET id = 10 WHERE id = 2: the old key ('K'), then the new row
constexpr std::string_view kUpdateKey =
    "55000040314b00057400000001326e6e6e6e4e0005740000000231306e74000000013574000000026f6b6e";
// UPDATE audit SET note = 'SEVEN': the whole old row ('O', replica identity full)
constexpr std::string_view kUpdateOld =
    "55000040384f00027400000001377400000005736576656e4e00027400000001377400000005534556454e";
// UPDATE items SET qty = 2 WHERE id = 3: the toasted `big` column is unchanged ('u')
constexpr std::string_view kUpdateToast =
    "55000040314e0005740000000133740000000470656172740000000132740000000373616475";
constexpr std::string_view kDeleteKey = "44000040314b0005740000000231306e6e6e6e";
constexpr std::string_view kDeleteOld = "44000040384f00027400000001377400000005534556454e";
// TRUNCATE items, audit RESTART IDENTITY CASCADE
constexpr std::string_view kTruncate = "5400000002030000403100004038";
// pg_logical_emit_message(true, 'sluice', 'hello') with 'messages', 'true'
constexpr std::string_view kMessage = "4d010000000003028d50736c75696365000000000568656c6c6f";
constexpr std::string_view kOrigin = "4f0000000012345678757073747265616d00";
// The Begin of the origin's transaction: commit time 2024-01-02 03:04:05+00 from the origin.
constexpr std::string_view kBeginFromOrigin = "4200000000030290380002b0ec8515f340000002f7";

constexpr std::string_view kAllReal[] = {
    kBegin,     kCommit,    kType,         kRelationItems,  kRelationAudit, kInsert,
    kUpdateKey, kUpdateOld, kUpdateToast,  kDeleteKey,      kDeleteOld,     kTruncate,
    kMessage,   kOrigin,    kInsertBinary, kBeginFromOrigin};

Message decoded(const Bytes& b) {
  std::string why;
  auto m = decode_message(b, &why);
  INFO(why);
  REQUIRE(m);
  CHECK(why.empty());
  return *m;
}
Message decoded(std::string_view hex) {
  return decoded(from_hex(hex));
}

std::string refusal(const Bytes& b) {
  std::string why;
  auto m = decode_message(b, &why);
  CHECK_FALSE(m);
  CHECK_FALSE(why.empty());
  return why;
}

// Builds messages field by field, big-endian.
struct Msg {
  Bytes b;
  Msg& u8(std::uint8_t v) { return b.push_back(v), *this; }
  Msg& u16(std::uint16_t v) {
    return u8(static_cast<std::uint8_t>(v >> 8)).u8(static_cast<std::uint8_t>(v & 0xff));
  }
  Msg& u32(std::uint32_t v) { return u16(static_cast<std::uint16_t>(v >> 16)).u16(v & 0xffff); }
  Msg& u64(std::uint64_t v) { return u32(static_cast<std::uint32_t>(v >> 32)).u32(v & 0xffffffff); }
  Msg& str(std::string_view s) {
    b.insert(b.end(), s.begin(), s.end());
    return u8(0);
  }
};

}  // namespace

TEST_CASE("pgoutput Begin and Commit from a real server") {
  auto b = std::get<Begin>(decoded(kBegin));
  CHECK(b.final_lsn == 0x3027300);
  CHECK(b.commit_time == 0x000304db5eae1c1a);
  CHECK(b.xid == 749);
  auto c = std::get<Commit>(decoded(kCommit));
  CHECK(c.flags == 0);
  CHECK(c.commit_lsn == 0x3027300);
  CHECK(c.end_lsn == 0x3027330);
  CHECK(c.commit_time == b.commit_time);

  auto origin_begin = std::get<Begin>(decoded(kBeginFromOrigin));
  using namespace std::chrono;
  CHECK(from_pg_epoch_us(origin_begin.commit_time) ==
        sys_days{year{2024} / January / 2} + hours{3} + minutes{4} + seconds{5});
}

TEST_CASE("pgoutput Commit with unknown flags is refused, as the server's own reader does") {
  auto bytes = from_hex(kCommit);
  bytes[1] = 1;
  CHECK(refusal(bytes) == "Commit: unknown flags 1");
}

TEST_CASE("pgoutput Relation from a real server") {
  // The names are views into the message: its bytes must outlive them.
  const auto items = from_hex(kRelationItems);
  auto r = std::get<Relation>(decoded(items));
  CHECK(r.relid == 16433);
  CHECK(r.nspname == "public");
  CHECK(r.relname == "items");
  CHECK(r.replica_identity == 'd');
  REQUIRE(r.columns.size() == 5);
  const char* names[] = {"id", "name", "qty", "feel", "big"};
  const std::uint32_t types[] = {23, 25, 23, 16427, 25};  // int4, text, int4, mood, text
  for (std::size_t i = 0; i < 5; ++i) {
    CHECK(r.columns[i].name == names[i]);
    CHECK(r.columns[i].type == types[i]);
    CHECK(r.columns[i].typmod == -1);
    CHECK(r.columns[i].flags == (i == 0 ? 1 : 0));  // the primary key
  }

  const auto audit_bytes = from_hex(kRelationAudit);
  auto audit = std::get<Relation>(decoded(audit_bytes));
  CHECK(audit.relid == 16440);
  CHECK(audit.relname == "audit");
  CHECK(audit.replica_identity == 'f');
  REQUIRE(audit.columns.size() == 2);
  CHECK(audit.columns[0].name == "id");
  CHECK(audit.columns[0].type == 20);
  CHECK(audit.columns[1].flags == 1);  // identity full: every column is part of the key
}

TEST_CASE("pgoutput Insert, Update and Delete from a real server") {
  struct Case {
    std::string_view hex;
    char kind;
    std::uint32_t relid;
  };
  for (const auto& c :
       {Case{kInsert, 'I', 16433}, Case{kInsertBinary, 'I', 16433}, Case{kUpdateKey, 'U', 16433},
        Case{kUpdateOld, 'U', 16440}, Case{kUpdateToast, 'U', 16433}, Case{kDeleteKey, 'D', 16433},
        Case{kDeleteOld, 'D', 16440}}) {
    INFO(c.hex);
    auto change = std::get<Change>(decoded(c.hex));
    CHECK(change.kind == c.kind);
    CHECK(change.relid == c.relid);
  }
}

TEST_CASE("pgoutput Truncate, Type, Origin and Message from a real server") {
  auto t = std::get<Truncate>(decoded(kTruncate));
  CHECK(t.options == 3);  // CASCADE | RESTART IDENTITY
  CHECK(t.relids == std::vector<std::uint32_t>{16433, 16440});
  CHECK(std::get<Other>(decoded(kType)).kind == 'Y');
  CHECK(std::get<Other>(decoded(kOrigin)).kind == 'O');
  CHECK(std::get<Other>(decoded(kMessage)).kind == 'M');
}

TEST_CASE("pgoutput: every prefix of a valid message is refused, and so is a byte more") {
  for (auto hex : kAllReal) {
    INFO(hex);
    const auto whole = from_hex(hex);
    for (std::size_t n = 0; n < whole.size(); ++n) {
      INFO("prefix of " << n << " bytes");
      refusal(Bytes(whole.begin(), whole.begin() + static_cast<long>(n)));
    }
    auto longer = whole;
    longer.push_back(0);
    CHECK_THAT(refusal(longer), Catch::EndsWith(": 1 bytes after the message"));
  }
}

TEST_CASE("pgoutput hand-built messages decode to their fields") {
  auto b = std::get<Begin>(decoded(Msg{}.u8('B').u64(0x0102030405060708).u64(~0ull).u32(7).b));
  CHECK(b.final_lsn == 0x0102030405060708);
  CHECK(b.commit_time == -1);
  CHECK(b.xid == 7);
  // pg_catalog's namespace is sent as "", replica identity index, a typmod, a column of flags 1
  const auto rel =
      Msg{}.u8('R').u32(99).str("").str("t").u8('i').u16(1).u8(1).str("c").u32(1043).u32(36).b;
  auto r = std::get<Relation>(decoded(rel));
  CHECK(r.nspname.empty());
  CHECK(r.replica_identity == 'i');
  REQUIRE(r.columns.size() == 1);
  CHECK(r.columns[0].typmod == 36);
  CHECK(std::get<Change>(decoded(Msg{}.u8('I').u32(5).u8('N').u16(0).b)).relid == 5);
  auto none = std::get<Truncate>(decoded(Msg{}.u8('T').u32(0).u8(0).b));
  CHECK(none.relids.empty());
  // A zero-length text value and an empty logical decoding message
  CHECK(std::get<Change>(decoded(Msg{}.u8('D').u32(5).u8('K').u16(1).u8('t').u32(0).b)).kind ==
        'D');
  CHECK(std::get<Other>(decoded(Msg{}.u8('M').u8(0).u64(1).str("p").u32(0).b)).kind == 'M');
}

TEST_CASE("pgoutput refuses counts over the limits before reserving") {
  // 1665 well-formed columns: one over MaxTupleAttributeNumber
  Msg rel;
  rel.u8('R').u32(1).str("s").str("t").u8('d').u16(1665);
  for (int i = 0; i < 1665; ++i) rel.u8(0).str("c").u32(23).u32(0xffffffff);
  CHECK(refusal(rel.b) == "Relation: column count 1665 over the limit of 1664");
  // 1000 columns claimed, room for one
  CHECK(refusal(Msg{}
                    .u8('R')
                    .u32(1)
                    .str("s")
                    .str("t")
                    .u8('d')
                    .u16(1000)
                    .u8(0)
                    .str("c")
                    .u32(23)
                    .u32(0)
                    .b) == "Relation: message ends early: 1000 columns in 11 bytes");
  CHECK(refusal(Msg{}.u8('T').u32(0x80000000).u8(0).u32(1).u32(2).b) ==
        "Truncate: message ends early: 2147483648 relations in 8 bytes");
  CHECK(refusal(Msg{}.u8('T').u32(3).u8(0).u32(1).u32(2).b) ==
        "Truncate: message ends early: 3 relations in 8 bytes");
  // A tuple of 1665 NULLs
  Msg wide;
  wide.u8('I').u32(1).u8('N').u16(1665);
  for (int i = 0; i < 1665; ++i) wide.u8('n');
  CHECK(refusal(wide.b) == "Insert: tuple column count 1665 over the limit of 1664");
  CHECK(refusal(Msg{}.u8('I').u32(1).u8('N').u16(1).u8('t').u32(0x7fffffff).u8('x').b) ==
        "Insert: message ends early");
  CHECK(refusal(Msg{}.u8('I').u32(1).u8('N').u16(1).u8('t').u32(0xfffffffe).b) ==
        "Insert: tuple column 0 has length -2");
  CHECK(refusal(Msg{}.u8('M').u8(1).u64(1).str("p").u32(0xffffffff).b) ==
        "Message: content length -1");
  CHECK(refusal(Msg{}.u8('M').u8(1).u64(1).str("p").u32(6).u8('h').b) ==
        "Message: message ends early");
}

TEST_CASE("pgoutput refuses malformed structure with a reason") {
  CHECK(refusal({}) == "empty message");
  CHECK(refusal(Msg{}.u8('Z').b) == "unknown message type 'Z'");
  CHECK(refusal(Msg{}.u8(0xff).b) == "unknown message type 0xff");
  for (char kind : {'S', 'E', 'c', 'A'})
    CHECK(refusal(Msg{}.u8(static_cast<std::uint8_t>(kind)).u32(1).b) ==
          "streamed transactions are not requested");
  CHECK(refusal(Msg{}.u8('I').u32(1).u8('K').u16(0).b) == "Insert: tuple marker 'K', expected 'N'");
  CHECK(refusal(Msg{}.u8('D').u32(1).u8('N').u16(0).b) ==
        "Delete: tuple marker 'N', expected 'K' or 'O'");
  // An Update with two old tuples
  CHECK(refusal(Msg{}.u8('U').u32(1).u8('K').u16(0).u8('O').u16(0).b) ==
        "Update: tuple marker 'O', expected 'N'");
  CHECK(refusal(Msg{}.u8('I').u32(1).u8('N').u16(2).u8('n').u8('x').b) ==
        "Insert: tuple column 1 has kind 'x'");
  CHECK(refusal(Msg{}.u8('R').u32(1).str("s").str("t").u8('z').u16(0).b) ==
        "Relation: replica identity 'z'");
  // An origin name without its terminator
  CHECK(refusal(Msg{}.u8('O').u64(1).u8('a').b) == "Origin: message ends early");
}

TEST_CASE("XLogData and keepalive CopyData payloads") {
  const auto begin = from_hex(kBegin);
  Msg w;
  w.u8('w').u64(0x3027110).u64(0x3029080).u64(0x000304db5eae1c1a);
  w.b.insert(w.b.end(), begin.begin(), begin.end());
  auto s = decode_copy_data(w.b);
  REQUIRE(s);
  const auto& x = std::get<XLogData>(*s);
  CHECK(x.start == 0x3027110);
  CHECK(x.wal_end == 0x3029080);
  CHECK(x.send_time == 0x000304db5eae1c1a);
  CHECK(Bytes(x.data.begin(), x.data.end()) == begin);
  CHECK(std::get<Begin>(decoded(Bytes(x.data.begin(), x.data.end()))).xid == 749);
  for (std::size_t n = 0; n < 25; ++n) CHECK_FALSE(decode_copy_data(Span(w.b).first(n)));

  for (std::uint8_t reply : {std::uint8_t{0}, std::uint8_t{1}}) {
    auto k = decode_copy_data(Msg{}.u8('k').u64(42).u64(~0ull).u8(reply).b);
    REQUIRE(k);
    CHECK(std::get<Keepalive>(*k).wal_end == 42);
    CHECK(std::get<Keepalive>(*k).send_time == -1);
    CHECK(std::get<Keepalive>(*k).reply_requested == (reply == 1));
  }
  const auto keepalive = Msg{}.u8('k').u64(42).u64(7).u8(1).b;
  for (std::size_t n = 0; n < keepalive.size(); ++n)
    CHECK_FALSE(decode_copy_data(Span(keepalive).first(n)));
  CHECK_FALSE(decode_copy_data(Msg{}.u8('k').u64(42).u64(7).u8(1).u8(0).b));  // a byte more
  CHECK_FALSE(decode_copy_data(Msg{}.u8('k').u64(42).u64(7).u8(2).b));
  CHECK_FALSE(decode_copy_data(Msg{}.u8('r').u64(42).u64(7).u64(7).u64(7).u8(0).b));
}

TEST_CASE("standby status update is byte-exact") {
  const std::string s =
      encode_status_update(0x0102030405060708, 0x1112131415161718, 0x2122232425262728, -2, true);
  const Bytes expected = from_hex(
      "72"
      "0102030405060708"
      "1112131415161718"
      "2122232425262728"
      "fffffffffffffffe"
      "01");
  CHECK(Bytes(s.begin(), s.end()) == expected);
  CHECK(s.size() == 34);  // 'r', four Int64, a Byte1
  CHECK(encode_status_update(0, 0, 0, 0, false) == std::string(34, '\0').replace(0, 1, "r"));
}

TEST_CASE("PostgreSQL epoch conversions") {
  using namespace std::chrono;
  const system_clock::time_point y2k = sys_days{year{2000} / January / 1};
  CHECK(pg_epoch_us(y2k) == 0);
  CHECK(pg_epoch_us(system_clock::time_point{}) == -946'684'800'000'000);
  CHECK(from_pg_epoch_us(0) == y2k);
  CHECK(from_pg_epoch_us(1'500'000) == y2k + microseconds{1'500'000});
  const auto t = y2k + days{9000} + microseconds{123456};
  CHECK(from_pg_epoch_us(pg_epoch_us(t)) == t);
  // Untrusted wire values saturate instead of overflowing.
  CHECK(from_pg_epoch_us(std::numeric_limits<std::int64_t>::max()) >=
        system_clock::time_point::max() - microseconds{1});
  CHECK(from_pg_epoch_us(std::numeric_limits<std::int64_t>::min()) <=
        system_clock::time_point::min() + microseconds{1});
}
