// Decoders for streaming replication CopyData payloads and pgoutput v1 messages (PostgreSQL 15
// docs 55.4 "Streaming Replication Protocol", 55.9 "Logical Replication Message Formats";
// writers in src/backend/replication/logical/proto.c). Every count is checked against the bytes
// that remain before anything is reserved.
#include "protocol/pg/pgoutput.hpp"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <utility>

namespace sluice::pg::pgoutput {

using bytes::Reader;

namespace {

// Microseconds from 1970-01-01 (system_clock's epoch in C++20) to 2000-01-01.
constexpr std::int64_t kUnixToPgEpochUs = 946'684'800'000'000;
// The fewest bytes a Relation column takes: flags, an empty name's NUL, type OID, typmod.
constexpr std::size_t kMinColumnBytes = 1 + 1 + 4 + 4;

std::uint64_t read_u64(Reader& r) {
  const std::uint64_t hi = r.u32();
  const std::uint64_t lo = r.u32();
  return (hi << 32) | lo;
}
std::int64_t read_i64(Reader& r) {
  return static_cast<std::int64_t>(read_u64(r));
}

void put_u64(std::string& out, std::uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>(static_cast<std::uint8_t>(v >> shift)));
}

// A byte for an error message: 'x' when printable, 0x1f otherwise.
std::string show_byte(std::uint8_t b) {
  char buf[8];
  if (b >= 0x20 && b < 0x7f)
    std::snprintf(buf, sizeof buf, "'%c'", b);
  else
    std::snprintf(buf, sizeof buf, "0x%02x", b);
  return buf;
}

// One message being read: the fields after its type byte, and where to say what was wrong.
struct Decoder {
  Reader r;
  std::string_view what;  // the message's name, prefixed to every complaint
  std::string* why;

  std::nullopt_t fail(const std::string& msg) const {
    if (why != nullptr) *why = std::string(what) + ": " + msg;
    return std::nullopt;
  }
  std::nullopt_t ends_early() const { return fail("message ends early"); }
  bool refuse(const std::string& msg) const {
    fail(msg);
    return false;
  }
  // The decoded message, when every field was present and nothing follows the last one.
  std::optional<Message> done(Message m) const {
    if (!r.ok()) return ends_early();
    if (!r.at_end()) return fail(std::to_string(r.remaining()) + " bytes after the message");
    return m;
  }
  bool tuple();
};

// Walks a TupleData: Int16 column count, then per column 'n' null, 'u' unchanged TOAST value, or
// 't' text / 'b' binary followed by an Int32 length and that many bytes. False (with `why` set)
// when malformed.
bool Decoder::tuple() {
  const std::uint16_t n = r.u16();
  if (!r.ok()) return refuse("message ends early");
  if (n > kMaxColumns) {
    return refuse("tuple column count " + std::to_string(n) + " over the limit of " +
                  std::to_string(kMaxColumns));
  }
  for (std::uint16_t i = 0; i < n; ++i) {
    const std::uint8_t kind = r.u8();
    if (!r.ok()) return refuse("message ends early");
    if (kind == 'n' || kind == 'u') continue;
    if (kind != 't' && kind != 'b')
      return refuse("tuple column " + std::to_string(i) + " has kind " + show_byte(kind));
    const std::int32_t len = r.i32();
    if (!r.ok()) return refuse("message ends early");
    if (len < 0) {
      return refuse("tuple column " + std::to_string(i) + " has length " + std::to_string(len));
    }
    if (static_cast<std::size_t>(len) > r.remaining()) return refuse("message ends early");
    (void)r.take(static_cast<std::size_t>(len));
  }
  return true;
}

std::optional<Message> begin(Decoder& d) {
  Begin b;
  b.final_lsn = read_u64(d.r);
  b.commit_time = read_i64(d.r);
  b.xid = d.r.u32();
  return d.done(b);
}

std::optional<Message> commit(Decoder& d) {
  Commit c;
  c.flags = d.r.u8();
  c.commit_lsn = read_u64(d.r);
  c.end_lsn = read_u64(d.r);
  c.commit_time = read_i64(d.r);
  // The server's own reader (logicalrep_read_commit) refuses flags it does not know.
  if (d.r.ok() && c.flags != 0) return d.fail("unknown flags " + std::to_string(c.flags));
  return d.done(c);
}

std::optional<Message> relation(Decoder& d) {
  Relation rel;
  rel.relid = d.r.u32();
  rel.nspname = d.r.cstr();
  rel.relname = d.r.cstr();
  const std::uint8_t identity = d.r.u8();
  const std::uint16_t n = d.r.u16();
  if (!d.r.ok()) return d.ends_early();
  if (identity != 'd' && identity != 'n' && identity != 'f' && identity != 'i')
    return d.fail("replica identity " + show_byte(identity));
  rel.replica_identity = static_cast<char>(identity);
  if (n > kMaxColumns) {
    return d.fail("column count " + std::to_string(n) + " over the limit of " +
                  std::to_string(kMaxColumns));
  }
  if (std::size_t{n} * kMinColumnBytes > d.r.remaining()) {
    return d.fail("message ends early: " + std::to_string(n) + " columns in " +
                  std::to_string(d.r.remaining()) + " bytes");
  }
  rel.columns.reserve(n);
  for (std::uint16_t i = 0; i < n; ++i) {
    Column c;
    c.flags = d.r.u8();
    c.name = d.r.cstr();
    c.type = d.r.u32();
    c.typmod = d.r.i32();
    if (!d.r.ok()) return d.ends_early();
    rel.columns.push_back(c);
  }
  return d.done(std::move(rel));
}

// Insert: 'N' tuple. Update: optional 'K' (key) or 'O' (old row) tuple, then 'N' tuple.
// Delete: 'K' or 'O' tuple.
std::optional<Message> change(Decoder& d, char kind) {
  Change c{kind, d.r.u32()};
  std::uint8_t marker = d.r.u8();
  if (!d.r.ok()) return d.ends_early();
  if (kind == 'U' && (marker == 'K' || marker == 'O')) {
    if (!d.tuple()) return std::nullopt;
    marker = d.r.u8();
    if (!d.r.ok()) return d.ends_early();
  }
  const bool old_tuple = marker == 'K' || marker == 'O';
  if (kind == 'D' ? !old_tuple : marker != 'N') {
    return d.fail("tuple marker " + show_byte(marker) + ", expected " +
                  (kind == 'D' ? "'K' or 'O'" : "'N'"));
  }
  if (!d.tuple()) return std::nullopt;
  return d.done(c);
}

std::optional<Message> truncate(Decoder& d) {
  Truncate t;
  const std::uint32_t n = d.r.u32();
  t.options = d.r.u8();
  if (!d.r.ok()) return d.ends_early();
  if (n > d.r.remaining() / 4) {
    return d.fail("message ends early: " + std::to_string(n) + " relations in " +
                  std::to_string(d.r.remaining()) + " bytes");
  }
  t.relids.reserve(n);
  for (std::uint32_t i = 0; i < n; ++i) t.relids.push_back(d.r.u32());
  return d.done(std::move(t));
}

// Origin 'O', Type 'Y' and logical decoding message 'M': read through, then ignored.
std::optional<Message> other(Decoder& d, char kind) {
  if (kind == 'O') {
    (void)read_u64(d.r);  // the commit's LSN on the origin
    (void)d.r.cstr();     // origin name
  } else if (kind == 'Y') {
    (void)d.r.u32();   // type OID
    (void)d.r.cstr();  // namespace
    (void)d.r.cstr();  // type name
  } else {
    (void)d.r.u8();       // flags (1: transactional)
    (void)read_u64(d.r);  // LSN
    (void)d.r.cstr();     // prefix
    const std::int32_t len = d.r.i32();
    if (!d.r.ok()) return d.ends_early();
    if (len < 0) return d.fail("content length " + std::to_string(len));
    if (static_cast<std::size_t>(len) > d.r.remaining()) return d.ends_early();
    (void)d.r.take(static_cast<std::size_t>(len));
  }
  return d.done(Other{kind});
}

std::string_view message_name(char kind) {
  switch (kind) {
    case 'B':
      return "Begin";
    case 'C':
      return "Commit";
    case 'O':
      return "Origin";
    case 'R':
      return "Relation";
    case 'Y':
      return "Type";
    case 'I':
      return "Insert";
    case 'U':
      return "Update";
    case 'D':
      return "Delete";
    case 'T':
      return "Truncate";
    case 'M':
      return "Message";
    default:
      return {};
  }
}

}  // namespace

std::optional<Streamed> decode_copy_data(Span payload) {
  if (payload.empty()) return std::nullopt;
  Reader r(payload.subspan(1));
  if (payload[0] == 'w') {
    XLogData x;
    x.start = read_u64(r);
    x.wal_end = read_u64(r);
    x.send_time = read_i64(r);
    x.data = r.rest();
    if (!r.ok()) return std::nullopt;
    return x;
  }
  if (payload[0] == 'k') {
    Keepalive k;
    k.wal_end = read_u64(r);
    k.send_time = read_i64(r);
    const std::uint8_t reply = r.u8();
    if (!r.at_end() || reply > 1) return std::nullopt;
    k.reply_requested = reply == 1;
    return k;
  }
  return std::nullopt;
}

std::string encode_status_update(std::uint64_t written, std::uint64_t flushed,
                                 std::uint64_t applied, std::int64_t clock_us,
                                 bool reply_requested) {
  std::string out;
  out.reserve(1 + 4 * 8 + 1);
  out.push_back('r');
  put_u64(out, written);
  put_u64(out, flushed);
  put_u64(out, applied);
  put_u64(out, static_cast<std::uint64_t>(clock_us));
  out.push_back(reply_requested ? '\1' : '\0');
  return out;
}

std::int64_t pg_epoch_us(std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  const std::int64_t unix_us = duration_cast<microseconds>(t.time_since_epoch()).count();
  std::int64_t out = 0;
  if (__builtin_sub_overflow(unix_us, kUnixToPgEpochUs, &out))
    return std::numeric_limits<std::int64_t>::min();
  return out;
}

std::chrono::system_clock::time_point from_pg_epoch_us(std::int64_t us) {
  using namespace std::chrono;
  using Clock = system_clock;
  constexpr std::int64_t lo = duration_cast<microseconds>(Clock::duration::min()).count();
  constexpr std::int64_t hi = duration_cast<microseconds>(Clock::duration::max()).count();
  std::int64_t unix_us = 0;
  if (__builtin_add_overflow(us, kUnixToPgEpochUs, &unix_us))
    unix_us = std::numeric_limits<std::int64_t>::max();  // only a large positive `us` overflows
  unix_us = std::clamp(unix_us, lo, hi);
  return Clock::time_point(duration_cast<Clock::duration>(microseconds(unix_us)));
}

std::optional<Message> decode_message(Span data, std::string* why) {
  auto complain = [why](std::string msg) {
    if (why != nullptr) *why = std::move(msg);
    return std::nullopt;
  };
  if (data.empty()) return complain("empty message");
  const char kind = static_cast<char>(data[0]);
  Decoder d{Reader(data.subspan(1)), message_name(kind), why};
  switch (kind) {
    case 'B':
      return begin(d);
    case 'C':
      return commit(d);
    case 'R':
      return relation(d);
    case 'I':
    case 'U':
    case 'D':
      return change(d, kind);
    case 'T':
      return truncate(d);
    case 'O':
    case 'Y':
    case 'M':
      return other(d, kind);
    // Protocol version 2 (streaming=on) and two-phase messages: sluice asks for neither.
    case 'S':
    case 'E':
    case 'c':
    case 'A':
      return complain("streamed transactions are not requested");
    case 'b':
    case 'P':
    case 'K':
    case 'r':
    case 'p':
      return complain("two-phase transactions are not requested");
    default:
      return complain("unknown message type " + show_byte(data[0]));
  }
}

}  // namespace sluice::pg::pgoutput
