// libFuzzer: the server-facing side. Backend frames: every decoded Authentication,
// ParameterStatus, BackendKeyData, ReadyForQuery, CommandComplete re-encodes to the very bytes it
// came from, a DataRow to the same values, and ErrorResponse fields lie inside the frame. The
// SCRAM client: whole server messages of any length, and a genuine exchange with sluice's SCRAM
// server whose outcome must follow the password. The first byte picks the mode: 's' raw
// server-first '\n' server-final, 'x' a genuine exchange (password '\n' tampered server-final),
// 'e' an ErrorResponse encoded then decoded; anything else is a stream of backend frames.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "protocol/pg/messages.hpp"
#include "protocol/pg/scram.hpp"

using namespace sluice;
using namespace sluice::pg;

namespace {

bool same(const Buffer& b, Span s) {
  return b.size() == s.size() && std::equal(b.begin(), b.end(), s.begin());
}

bool inside(std::string_view part, Span whole) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(part.data());
  return part.empty() || (p >= whole.data() && p + part.size() <= whole.data() + whole.size());
}

// The decoders that apply to the frame's type must give back its exact bytes when re-encoded.
void check_round_trip(const Frame& f, Span whole) {
  Buffer again;
  switch (f.type) {
    case 'R':
      if (auto a = decode_authentication(f.body)) {
        encode_authentication(again, a->code, a->data);
        if (!same(again, whole)) __builtin_trap();
        if (a->code != auth::kSasl) break;
        if (auto m = decode_sasl_mechanisms(a->data)) {
          Buffer sasl;
          encode_auth_sasl(sasl, *m);
          if (!same(sasl, whole)) __builtin_trap();
        }
      }
      break;
    case 'S':
      if (auto p = decode_parameter_status(f.body)) {
        encode_parameter_status(again, p->name, p->value);
        if (!same(again, whole)) __builtin_trap();
      }
      break;
    case 'K':
      if (auto k = decode_backend_key_data(f.body)) {
        encode_backend_key_data(again, *k);
        if (!same(again, whole)) __builtin_trap();
      }
      break;
    case 'Z':
      if (auto z = decode_ready_for_query(f.body)) {
        encode_ready_for_query(again, *z);
        if (!same(again, whole)) __builtin_trap();
      }
      break;
    case 'C':  // CommandComplete: one NUL-terminated tag, read as a Query is
      if (auto tag = decode_query(f.body)) {
        encode_command_complete(again, *tag);
        if (!same(again, whole)) __builtin_trap();
      }
      break;
    case 'D':
      if (auto row = decode_data_row(f.body)) {
        encode_data_row(again, *row);
        auto back = decode_data_row(Span(again).subspan(kHeaderSize));
        if (!back || *back != *row || again.size() > whole.size()) __builtin_trap();
      }
      break;
    default:
      break;
  }
}

void frames(Span in) {
  for (int guard = 0; guard < 10000; ++guard) {
    auto r = next_frame(in, 1 << 20);
    auto* f = std::get_if<Frame>(&r);
    if (f == nullptr) {
      if (auto* more = std::get_if<NeedMore>(&r); more && more->bytes == 0) __builtin_trap();
      break;
    }
    if (f->size > in.size() || f->body.size() + kHeaderSize != f->size) __builtin_trap();
    // Every decoder sees every frame: a message of the wrong type must be refused, not misread.
    if (auto a = decode_authentication(f->body); a && a->code == auth::kSasl)
      (void)decode_sasl_mechanisms(a->data);
    (void)decode_parameter_status(f->body);
    (void)decode_backend_key_data(f->body);
    (void)decode_ready_for_query(f->body);
    (void)decode_data_row(f->body);
    if (auto e = decode_error_fields(f->body)) {
      for (const auto& [code, value] : e->fields) {
        if (code == 0 || !inside(value, f->body) || value.find('\0') != value.npos)
          __builtin_trap();
      }
    }
    check_round_trip(*f, in.first(f->size));
    in = in.subspan(f->size);
  }
}

// Whether every iteration count the input asks the client to compute (PBKDF2, per input) is small:
// at most 4096, leading zeros allowed.
bool cheap_iterations(std::string_view server_first) {
  for (std::size_t at = server_first.find("i="); at != std::string_view::npos;
       at = server_first.find("i=", at + 1)) {
    std::size_t p = at + 2;
    while (p < server_first.size() && server_first[p] == '0') ++p;
    std::size_t end = p;
    while (end < server_first.size() && server_first[end] >= '0' && server_first[end] <= '9') ++end;
    if (end - p > 4 || (end > p && std::stoul(std::string(server_first.substr(p, end - p))) > 4096))
      return false;
  }
  return true;
}

void raw_client(std::string_view text) {
  auto nl = text.find('\n');
  std::string_view first = text.substr(0, nl);
  std::string_view final_msg = nl == text.npos ? std::string_view{} : text.substr(nl + 1);
  if (!cheap_iterations(first)) return;
  scram::ClientExchange client("pw", "clientnonce");
  (void)client.client_first();
  auto reply = client.on_server_first(first);
  if (!reply) {
    if (client.error().empty()) __builtin_trap();  // a refusal always says why
    return;
  }
  if (!reply->starts_with("c=biws,r=clientnonce")) __builtin_trap();
  // Only the server that knows the password can sign: fuzzed text never can (nor "e=...").
  if (client.on_server_final(final_msg) && !final_msg.starts_with("v=")) __builtin_trap();
}

// A whole exchange between sluice's client (password from the input) and its server (verifier
// for "pw"): the server accepts exactly the right password, the client accepts exactly the
// server's signature.
void genuine_exchange(std::string_view text) {
  static const auto verifier = scram::Verifier::from_password("pw", {9, 8, 7, 6}, 16);
  auto nl = text.find('\n');
  std::string password(text.substr(0, nl));
  // Passwords are C strings everywhere (config, wire); HMAC pads keys with zero bytes anyway.
  if (password.find('\0') != password.npos) return;
  std::string_view tampered = nl == text.npos ? std::string_view{} : text.substr(nl + 1);
  scram::ServerExchange server(verifier, "servernonce");
  scram::ClientExchange client(password, "clientnonce");
  auto server_first = server.on_client_first(client.client_first());
  if (!server_first) __builtin_trap();
  auto client_final = client.on_server_first(*server_first);
  if (!client_final) __builtin_trap();
  auto server_final = server.on_client_final(*client_final);
  if (server_final.has_value() != (password == "pw")) __builtin_trap();
  if (!server_final) {
    if (server.state() != scram::ServerExchange::State::kFailed) __builtin_trap();
    return;
  }
  if (server.state() != scram::ServerExchange::State::kDone) __builtin_trap();
  if (client.on_server_final(tampered) != (tampered == *server_final)) __builtin_trap();
  if (!client.on_server_final(*server_final)) __builtin_trap();
}

void error_round_trip(std::string_view text) {
  // Five NUL-separated strings: severity, SQLSTATE, message, detail, hint (no NUL inside).
  std::string_view parts[5];
  for (auto& p : parts) {
    auto nul = text.find('\0');
    p = text.substr(0, nul);
    text = nul == text.npos ? std::string_view{} : text.substr(nul + 1);
  }
  if (parts[0].empty()) parts[0] = "ERROR";
  ErrorSpec spec{parts[0], parts[1], parts[2], parts[3], parts[4]};
  Buffer out;
  encode_error_response(out, spec);
  auto r = next_frame(out);
  auto* f = std::get_if<Frame>(&r);
  if (f == nullptr || f->type != 'E' || f->size != out.size()) __builtin_trap();
  auto e = decode_error_fields(f->body);
  if (!e || e->get('S') != spec.severity || e->get('C') != spec.sqlstate ||
      e->get('M') != spec.message || e->get('D') != spec.detail || e->get('H') != spec.hint)
    __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Span in(data, size);
  std::string_view text = bytes::as_chars(in);
  if (size > 0 && size < 4096 && data[0] == 's') {
    raw_client(text.substr(1));
  } else if (size > 0 && size < 4096 && data[0] == 'x') {
    genuine_exchange(text.substr(1));
  } else if (size > 0 && data[0] == 'e') {
    error_round_trip(text.substr(1));
  } else {
    frames(in);
  }
  return 0;
}
