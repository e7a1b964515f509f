// libFuzzer: logical replication decoding. The input is read both as a streaming replication
// CopyData payload and as a pgoutput message. A decoded XLogData or Keepalive re-encodes to the
// very bytes it came from, and an XLogData's data is decoded as a message in turn. A decoded
// message never claims more than its bytes hold (columns, relations), its names lie inside the
// input without a NUL, Begin/Commit/Relation/Truncate re-encode to their input, and a refusal
// always says why. Timestamps convert to the system clock and back without overflow.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/pg/pgoutput.hpp"
#include "protocol/pg/test_decoding.hpp"

using namespace sluice;
using namespace sluice::pg::pgoutput;

namespace {

using Bytes = std::vector<std::uint8_t>;

void put8(Bytes& out, std::uint8_t v) {
  out.push_back(v);
}
void put32(Bytes& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}
void put64(Bytes& out, std::uint64_t v) {
  put32(out, static_cast<std::uint32_t>(v >> 32));
  put32(out, static_cast<std::uint32_t>(v));
}
void put_str(Bytes& out, std::string_view s) {
  out.insert(out.end(), s.begin(), s.end());
  out.push_back(0);
}

bool same(const Bytes& b, Span s) {
  return b.size() == s.size() && std::equal(b.begin(), b.end(), s.begin());
}

bool inside(std::string_view part, Span whole) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(part.data());
  if (part.find('\0') != part.npos) return false;
  return part.empty() || (p >= whole.data() && p + part.size() <= whole.data() + whole.size());
}

void check_time(std::int64_t us) {
  const auto t = from_pg_epoch_us(us);
  // Within system_clock's range (nanoseconds: +-292 years around 1970) the conversion is exact.
  constexpr std::int64_t kExact = 8'000'000'000'000'000;
  if (us > -kExact && us < kExact && pg_epoch_us(t) != us) __builtin_trap();
}

// The bytes the server would have sent for a decoded message, when the message keeps them all.
bool re_encode(const Message& m, Bytes& out) {
  if (const auto* b = std::get_if<Begin>(&m)) {
    put8(out, 'B');
    put64(out, b->final_lsn);
    put64(out, static_cast<std::uint64_t>(b->commit_time));
    put32(out, b->xid);
  } else if (const auto* c = std::get_if<Commit>(&m)) {
    put8(out, 'C');
    put8(out, c->flags);
    put64(out, c->commit_lsn);
    put64(out, c->end_lsn);
    put64(out, static_cast<std::uint64_t>(c->commit_time));
  } else if (const auto* r = std::get_if<Relation>(&m)) {
    put8(out, 'R');
    put32(out, r->relid);
    put_str(out, r->nspname);
    put_str(out, r->relname);
    put8(out, static_cast<std::uint8_t>(r->replica_identity));
    out.push_back(static_cast<std::uint8_t>(r->columns.size() >> 8));
    out.push_back(static_cast<std::uint8_t>(r->columns.size()));
    for (const auto& col : r->columns) {
      put8(out, col.flags);
      put_str(out, col.name);
      put32(out, col.type);
      put32(out, static_cast<std::uint32_t>(col.typmod));
    }
  } else if (const auto* t = std::get_if<Truncate>(&m)) {
    put8(out, 'T');
    put32(out, static_cast<std::uint32_t>(t->relids.size()));
    put8(out, t->options);
    for (auto id : t->relids) put32(out, id);
  } else {
    return false;
  }
  return true;
}

void message(Span in) {
  std::string why;
  auto m = decode_message(in, &why);
  if (!m) {
    if (why.empty()) __builtin_trap();
    return;
  }
  if (!why.empty() || in.empty()) __builtin_trap();
  if (const auto* r = std::get_if<Relation>(&*m)) {
    if (r->columns.size() > kMaxColumns || !inside(r->nspname, in) || !inside(r->relname, in))
      __builtin_trap();
    for (const auto& col : r->columns)
      if (!inside(col.name, in)) __builtin_trap();
  } else if (const auto* t = std::get_if<Truncate>(&*m)) {
    if (t->relids.size() * 4 > in.size()) __builtin_trap();
  } else if (const auto* c = std::get_if<Change>(&*m)) {
    if (c->kind != static_cast<char>(in[0])) __builtin_trap();
  } else if (const auto* b = std::get_if<Begin>(&*m)) {
    check_time(b->commit_time);
  }
  Bytes again;
  if (re_encode(*m, again) && !same(again, in)) __builtin_trap();
}

void copy_data(Span in) {
  auto s = decode_copy_data(in);
  if (!s) return;
  Bytes again;
  if (const auto* x = std::get_if<XLogData>(&*s)) {
    put8(again, 'w');
    put64(again, x->start);
    put64(again, x->wal_end);
    put64(again, static_cast<std::uint64_t>(x->send_time));
    again.insert(again.end(), x->data.begin(), x->data.end());
    if (x->data.data() != in.data() + 25) __builtin_trap();  // a view, not a copy
    check_time(x->send_time);
    message(x->data);
  } else {
    const auto& k = std::get<Keepalive>(*s);
    put8(again, 'k');
    put64(again, k.wal_end);
    put64(again, static_cast<std::uint64_t>(k.send_time));
    put8(again, k.reply_requested ? 1 : 0);
    check_time(k.send_time);
  }
  if (!same(again, in)) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Span in(data, size);
  copy_data(in);
  message(in);
  // The same bytes as a test_decoding line (the follower's other plugin): a refusal says why,
  // a change names at least one relation, every name non-empty.
  std::string why;
  auto line = sluice::pg::test_decoding::decode({reinterpret_cast<const char*>(data), size}, &why);
  if (!line && why.empty()) __builtin_trap();
  if (line) {
    if (const auto* c = std::get_if<sluice::pg::test_decoding::Change>(&*line)) {
      if (c->relations.empty()) __builtin_trap();
      for (const auto& r : c->relations)
        if (r.schema.empty() || r.name.empty()) __builtin_trap();
    }
  }
  return 0;
}
