// Decoders and encoders for the PostgreSQL v3 messages sluice inspects or originates.
#include "protocol/pg/messages.hpp"

namespace sluice::pg {

using bytes::Reader;
using bytes::Writer;

std::string_view StartupMessage::get(std::string_view key) const {
  for (const auto& [k, v] : params) {
    if (k == key) return v;
  }
  return {};
}

std::variant<StartupPacket, DecodeError> decode_startup(Span body) {
  Reader r(body);
  std::uint32_t code = r.u32();
  if (!r.ok()) return DecodeError{"08P01", "invalid startup packet layout"};
  switch (code) {
    case kSslRequestCode:
      if (!r.at_end()) return DecodeError{"08P01", "invalid length of SSLRequest"};
      return SslRequest{};
    case kGssEncRequestCode:
      if (!r.at_end()) return DecodeError{"08P01", "invalid length of GSSENCRequest"};
      return GssEncRequest{};
    case kCancelRequestCode: {
      CancelRequest c{r.u32(), r.u32()};
      if (!r.at_end()) return DecodeError{"08P01", "invalid length of CancelRequest"};
      return c;
    }
    default:
      break;
  }
  if ((code >> 16) != 3) {
    return DecodeError{"0A000", "unsupported frontend protocol " + std::to_string(code >> 16) +
                                    "." + std::to_string(code & 0xffff) +
                                    ": server supports 3.0 to 3.0"};
  }
  StartupMessage m{code, {}};
  // Name/value pairs terminated by an empty name (section 55.7, StartupMessage).
  for (;;) {
    std::string_view name = r.cstr();
    if (!r.ok()) return DecodeError{"08P01", "invalid startup packet layout: expected terminator"};
    if (name.empty()) break;
    std::string_view value = r.cstr();
    if (!r.ok()) return DecodeError{"08P01", "invalid startup packet layout: missing value"};
    if (m.params.size() >= 64) return DecodeError{"08P01", "too many startup parameters"};
    m.params.emplace_back(name, value);
  }
  if (!r.at_end()) return DecodeError{"08P01", "invalid startup packet layout: trailing bytes"};
  return m;
}

std::optional<SaslInitialResponse> decode_sasl_initial_response(Span body) {
  Reader r(body);
  SaslInitialResponse out{r.cstr(), std::nullopt};
  std::int32_t len = r.i32();
  if (!r.ok()) return std::nullopt;
  if (len >= 0) {
    out.data = r.take(static_cast<std::size_t>(len));
  } else if (len != -1) {
    return std::nullopt;
  }
  if (!r.at_end()) return std::nullopt;
  return out;
}

std::optional<std::string_view> decode_password_message(Span body) {
  Reader r(body);
  std::string_view pw = r.cstr();
  if (!r.at_end()) return std::nullopt;
  return pw;
}

std::optional<std::string_view> decode_query(Span body) {
  return decode_password_message(body);
}

std::optional<DataRow> decode_data_row(Span body) {
  Reader r(body);
  std::uint16_t n = r.u16();
  // Each column takes at least its 4-byte length: bound the count before reserving.
  if (!r.ok() || std::size_t{n} * 4 > r.remaining()) return std::nullopt;
  DataRow row;
  row.reserve(n);
  for (std::uint16_t i = 0; i < n; ++i) {
    std::int32_t len = r.i32();
    if (len < 0) {
      row.emplace_back(std::nullopt);
      continue;
    }
    auto v = r.take(static_cast<std::size_t>(len));
    if (!r.ok()) return std::nullopt;
    row.emplace_back(bytes::as_chars(v));
  }
  if (!r.at_end()) return std::nullopt;
  return row;
}

std::optional<Authentication> decode_authentication(Span body) {
  Reader r(body);
  Authentication a{r.u32(), {}};
  a.data = r.rest();
  if (!r.ok()) return std::nullopt;
  if (a.code == auth::kOk && !a.data.empty()) return std::nullopt;
  if (a.code == auth::kMd5 && a.data.size() != 4) return std::nullopt;
  return a;
}

std::optional<std::vector<std::string_view>> decode_sasl_mechanisms(Span data) {
  Reader r(data);
  std::vector<std::string_view> out;
  for (;;) {
    std::string_view m = r.cstr();
    if (!r.ok() || out.size() > 16) return std::nullopt;
    if (m.empty()) break;
    out.push_back(m);
  }
  if (!r.at_end()) return std::nullopt;
  return out;
}

std::optional<ParameterStatus> decode_parameter_status(Span body) {
  Reader r(body);
  ParameterStatus p{r.cstr(), {}};
  p.value = r.cstr();
  if (!r.at_end()) return std::nullopt;
  return p;
}

std::optional<BackendKeyData> decode_backend_key_data(Span body) {
  Reader r(body);
  BackendKeyData k{r.u32(), r.u32()};
  if (!r.at_end()) return std::nullopt;
  return k;
}

std::optional<char> decode_ready_for_query(Span body) {
  Reader r(body);
  auto status = static_cast<char>(r.u8());
  if (!r.at_end()) return std::nullopt;
  if (status != 'I' && status != 'T' && status != 'E') return std::nullopt;
  return status;
}

std::string_view ErrorFields::get(char code) const {
  for (const auto& [c, v] : fields) {
    if (c == code) return v;
  }
  return {};
}

std::optional<ErrorFields> decode_error_fields(Span body) {
  Reader r(body);
  ErrorFields out;
  for (;;) {
    auto code = static_cast<char>(r.u8());
    if (!r.ok()) return std::nullopt;
    if (code == 0) break;
    std::string_view value = r.cstr();
    if (!r.ok() || out.fields.size() >= 64) return std::nullopt;
    out.fields.emplace_back(code, value);
  }
  if (!r.at_end()) return std::nullopt;
  return out;
}

namespace {
void encode_fields(Buffer& out, char type, const ErrorSpec& e) {
  Writer w(out);
  auto at = w.begin_message(type);
  w.u8('S');
  w.cstr(e.severity);
  w.u8('V');  // non-localized severity (protocol 3.0, PostgreSQL >= 9.6)
  w.cstr(e.severity);
  w.u8('C');
  w.cstr(e.sqlstate);
  w.u8('M');
  w.cstr(e.message);
  if (!e.detail.empty()) {
    w.u8('D');
    w.cstr(e.detail);
  }
  if (!e.hint.empty()) {
    w.u8('H');
    w.cstr(e.hint);
  }
  w.u8(0);
  w.end_message(at);
}
}  // namespace

void encode_error_response(Buffer& out, const ErrorSpec& e) {
  encode_fields(out, 'E', e);
}
void encode_notice_response(Buffer& out, const ErrorSpec& e) {
  encode_fields(out, 'N', e);
}

void encode_authentication(Buffer& out, std::uint32_t code, Span data) {
  Writer w(out);
  auto at = w.begin_message('R');
  w.u32(code);
  w.raw(data);
  w.end_message(at);
}

void encode_auth_sasl(Buffer& out, const std::vector<std::string_view>& mechanisms) {
  Writer w(out);
  auto at = w.begin_message('R');
  w.u32(auth::kSasl);
  for (auto m : mechanisms) w.cstr(m);
  w.u8(0);
  w.end_message(at);
}

void encode_parameter_status(Buffer& out, std::string_view name, std::string_view value) {
  Writer w(out);
  auto at = w.begin_message('S');
  w.cstr(name);
  w.cstr(value);
  w.end_message(at);
}

void encode_row_description(Buffer& out, const std::vector<Column>& columns) {
  Writer w(out);
  auto at = w.begin_message('T');
  w.u16(static_cast<std::uint16_t>(columns.size()));
  for (const auto& c : columns) {
    w.cstr(c.name);
    w.u32(0);  // table OID
    w.u16(0);  // column number
    w.u32(c.type_oid);
    w.i16(c.type_len);
    w.i32(-1);  // type modifier
    w.u16(0);   // text format
  }
  w.end_message(at);
}

void encode_data_row(Buffer& out, const std::vector<std::optional<std::string_view>>& values) {
  Writer w(out);
  auto at = w.begin_message('D');
  w.u16(static_cast<std::uint16_t>(values.size()));
  for (const auto& v : values) {
    if (!v) {
      w.i32(-1);
      continue;
    }
    w.i32(static_cast<std::int32_t>(v->size()));
    w.raw(*v);
  }
  w.end_message(at);
}

void encode_command_complete(Buffer& out, std::string_view tag) {
  Writer w(out);
  auto at = w.begin_message('C');
  w.cstr(tag);
  w.end_message(at);
}

void encode_backend_key_data(Buffer& out, BackendKeyData key) {
  Writer w(out);
  auto at = w.begin_message('K');
  w.u32(key.pid);
  w.u32(key.secret);
  w.end_message(at);
}

void encode_ready_for_query(Buffer& out, char status) {
  Writer w(out);
  auto at = w.begin_message('Z');
  w.u8(static_cast<std::uint8_t>(status));
  w.end_message(at);
}

void encode_negotiate_protocol_version(Buffer& out, std::uint32_t newest_minor,
                                       const std::vector<std::string_view>& unrecognized) {
  Writer w(out);
  auto at = w.begin_message('v');
  w.u32(newest_minor);
  w.u32(static_cast<std::uint32_t>(unrecognized.size()));
  for (auto o : unrecognized) w.cstr(o);
  w.end_message(at);
}

void encode_startup_message(Buffer& out,
                            const std::vector<std::pair<std::string, std::string>>& params) {
  Writer w(out);
  auto at = w.begin_message(0);
  w.u32(kProtocolV3);
  for (const auto& [k, v] : params) {
    w.cstr(k);
    w.cstr(v);
  }
  w.u8(0);
  w.end_message(at);
}

void encode_ssl_request(Buffer& out) {
  Writer w(out);
  auto at = w.begin_message(0);
  w.u32(kSslRequestCode);
  w.end_message(at);
}

void encode_cancel_request(Buffer& out, BackendKeyData key) {
  Writer w(out);
  auto at = w.begin_message(0);
  w.u32(kCancelRequestCode);
  w.u32(key.pid);
  w.u32(key.secret);
  w.end_message(at);
}

void encode_password_message(Buffer& out, std::string_view password) {
  Writer w(out);
  auto at = w.begin_message('p');
  w.cstr(password);
  w.end_message(at);
}

void encode_sasl_initial_response(Buffer& out, std::string_view mechanism, Span data) {
  Writer w(out);
  auto at = w.begin_message('p');
  w.cstr(mechanism);
  w.u32(static_cast<std::uint32_t>(data.size()));
  w.raw(data);
  w.end_message(at);
}

void encode_sasl_response(Buffer& out, Span data) {
  Writer w(out);
  auto at = w.begin_message('p');
  w.raw(data);
  w.end_message(at);
}

void encode_query(Buffer& out, std::string_view sql) {
  Writer w(out);
  auto at = w.begin_message('Q');
  w.cstr(sql);
  w.end_message(at);
}

void encode_terminate(Buffer& out) {
  encode_empty_message(out, 'X');
}

void encode_empty_message(Buffer& out, char type) {
  Writer w(out);
  w.end_message(w.begin_message(type));
}

}  // namespace sluice::pg
