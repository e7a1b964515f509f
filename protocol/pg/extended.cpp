// Extended-query protocol codecs (PostgreSQL protocol, section 55.2.3 "Extended Query").
#include "protocol/pg/extended.hpp"

namespace sluice::pg {

using bytes::Reader;
using bytes::Writer;

namespace {
// A bound on parameters before allocating: the protocol's own Int16 count caps it at 65535.
constexpr std::uint16_t kMaxParams = 65535;

void target_message(Buffer& out, char type, Target t) {
  Writer w(out);
  auto at = w.begin_message(type);
  w.u8(static_cast<std::uint8_t>(t.kind));
  w.cstr(t.name);
  w.end_message(at);
}
}  // namespace

std::optional<std::string_view> query_text(const Frame& f) {
  if (f.type == 'Q') return decode_query(f.body);
  if (f.type != 'P') return std::nullopt;
  auto p = decode_parse(f.body);
  if (!p) return std::nullopt;
  return p->query;
}

std::optional<Parse> decode_parse(Span body) {
  Reader r(body);
  Parse p{r.cstr(), r.cstr(), {}};
  std::uint16_t n = r.u16();
  if (!r.ok() || n > kMaxParams || r.remaining() != std::size_t{n} * 4) return std::nullopt;
  p.param_types.reserve(n);
  for (std::uint16_t i = 0; i < n; ++i) p.param_types.push_back(r.u32());
  return p;
}

void encode_parse(Buffer& out, std::string_view name, std::string_view query,
                  const std::vector<std::uint32_t>& param_types) {
  Writer w(out);
  auto at = w.begin_message('P');
  w.cstr(name);
  w.cstr(query);
  w.u16(static_cast<std::uint16_t>(param_types.size()));
  for (auto oid : param_types) w.u32(oid);
  w.end_message(at);
}

std::optional<Bind> decode_bind(Span body) {
  Reader r(body);
  Bind b{r.cstr(), r.cstr(), {}};
  if (!r.ok()) return std::nullopt;
  b.rest = r.rest();
  // The rest is only forwarded, but it must hold at least its three Int16 counts.
  if (b.rest.size() < 6) return std::nullopt;
  return b;
}

void encode_bind(Buffer& out, std::string_view portal, std::string_view statement,
                 const std::vector<std::optional<std::string>>& params) {
  Writer w(out);
  auto at = w.begin_message('B');
  w.cstr(portal);
  w.cstr(statement);
  w.u16(0);  // every parameter in text format
  w.u16(static_cast<std::uint16_t>(params.size()));
  for (const auto& p : params) {
    w.i32(p ? static_cast<std::int32_t>(p->size()) : -1);
    if (p) w.raw(std::string_view(*p));
  }
  w.u16(0);  // every result column in text format
  w.end_message(at);
}

void encode_bind_renamed(Buffer& out, const Bind& bind, std::string_view statement) {
  Writer w(out);
  auto at = w.begin_message('B');
  w.cstr(bind.portal);
  w.cstr(statement);
  w.raw(bind.rest);
  w.end_message(at);
}

std::optional<Target> decode_target(Span body) {
  Reader r(body);
  Target t{static_cast<char>(r.u8()), r.cstr()};
  if (!r.at_end() || (t.kind != 'S' && t.kind != 'P')) return std::nullopt;
  return t;
}

void encode_describe(Buffer& out, Target t) {
  target_message(out, 'D', t);
}
void encode_close(Buffer& out, Target t) {
  target_message(out, 'C', t);
}

std::optional<Execute> decode_execute(Span body) {
  Reader r(body);
  Execute e{r.cstr(), r.u32()};
  if (!r.at_end()) return std::nullopt;
  return e;
}

void encode_execute(Buffer& out, Execute e) {
  Writer w(out);
  auto at = w.begin_message('E');
  w.cstr(e.portal);
  w.u32(e.max_rows);
  w.end_message(at);
}

void encode_sync(Buffer& out) {
  encode_empty_message(out, 'S');
}
void encode_flush(Buffer& out) {
  encode_empty_message(out, 'H');
}
void encode_parse_complete(Buffer& out) {
  encode_empty_message(out, '1');
}
void encode_bind_complete(Buffer& out) {
  encode_empty_message(out, '2');
}
void encode_close_complete(Buffer& out) {
  encode_empty_message(out, '3');
}

}  // namespace sluice::pg
