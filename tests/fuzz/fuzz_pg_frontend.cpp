// libFuzzer: the client-facing side. Startup framing and packets, the relay scanner, and the
// auth and extended-protocol decoders: every decoded message re-encodes to the very bytes it came
// from, frames lie inside the input, and a renamed Bind keeps everything but its statement name.
// Input starting with 'c' is SCRAM text for sluice's server (client-first '\n' client-final):
// a failed step leaves the exchange failed with a reason, never done.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/pg/extended.hpp"
#include "protocol/pg/messages.hpp"
#include "protocol/pg/scanner.hpp"
#include "protocol/pg/scram.hpp"
#include "routing/request_route.hpp"

using namespace sluice;
using namespace sluice::pg;

namespace {

bool same(const Buffer& b, Span s) {
  return b.size() == s.size() && std::equal(b.begin(), b.end(), s.begin());
}

void check_startup(const Frame& f, Span whole) {
  auto d = decode_startup(f.body);
  auto* p = std::get_if<StartupPacket>(&d);
  if (p == nullptr) {
    if (std::get<DecodeError>(d).sqlstate.size() != 5) __builtin_trap();
    return;
  }
  Buffer again;
  if (std::holds_alternative<SslRequest>(*p)) {
    encode_ssl_request(again);
  } else if (auto* c = std::get_if<CancelRequest>(p)) {
    encode_cancel_request(again, {c->pid, c->secret});
  } else if (auto* m = std::get_if<StartupMessage>(p); m && m->version == kProtocolV3) {
    std::vector<std::pair<std::string, std::string>> params;
    for (const auto& [k, v] : m->params) params.emplace_back(k, v);
    encode_startup_message(again, params);
  } else {
    return;  // GSSENCRequest and protocol 3.x minor versions have no encoder
  }
  if (!same(again, whole)) __builtin_trap();
}

// Re-encodes what a decoder accepted; `whole` is the frame's bytes.
void check_message(const Frame& f, Span whole) {
  Buffer again;
  if (f.type == 'Q') {
    if (auto q = decode_query(f.body)) encode_query(again, *q);
  } else if (f.type == 'P') {
    if (auto p = decode_parse(f.body)) encode_parse(again, p->name, p->query, p->param_types);
  } else if (f.type == 'B') {
    auto b = decode_bind(f.body);
    if (!b) return;
    encode_bind_renamed(again, *b, b->statement);
    Buffer renamed;
    encode_bind_renamed(renamed, *b, "sluice_s1");
    auto back = decode_bind(Span(renamed).subspan(kHeaderSize));
    if (!back || back->statement != "sluice_s1" || back->portal != b->portal ||
        !std::ranges::equal(back->rest, b->rest))
      __builtin_trap();
  } else if (f.type == 'D' || f.type == 'C') {
    if (auto t = decode_target(f.body))
      f.type == 'D' ? encode_describe(again, *t) : encode_close(again, *t);
  } else if (f.type == 'E') {
    if (auto e = decode_execute(f.body)) encode_execute(again, *e);
  } else if (f.type == 'p') {
    if (auto pw = decode_password_message(f.body)) {
      encode_password_message(again, *pw);
      if (!same(again, whole)) __builtin_trap();
      again.clear();
    }
    if (auto s = decode_sasl_initial_response(f.body); s && s->data)
      encode_sasl_initial_response(again, s->mechanism, *s->data);
  } else if ((f.type == 'S' || f.type == 'H' || f.type == 'X') && f.body.empty()) {
    encode_empty_message(again, f.type);
  }
  if (!again.empty() && !same(again, whole)) __builtin_trap();
}

void frames(Span in) {
  if (auto r = next_startup_frame(in); auto* f = std::get_if<Frame>(&r)) {
    if (f->size > in.size() || f->body.size() + 4 != f->size) __builtin_trap();
    check_startup(*f, in.first(f->size));
    in = in.subspan(f->size);
  }
  MessageScanner scanner(1 << 20);
  constexpr WantTable kWant = make_want_table({'X', 'p', 'Q', 'P', 'B', 'D', 'C', 'E', 'S', 'H'});
  std::size_t pos = 0;
  for (int guard = 0; guard < 10000 && pos <= in.size(); ++guard) {
    auto rest = in.subspan(pos);
    auto stop = scanner.scan(rest, kWant, [](const Header&) {});
    if (stop.offset > rest.size()) __builtin_trap();
    pos += stop.offset;
    if (stop.kind != MessageScanner::Stop::kInspect) break;
    if (stop.frame.size > rest.size() - stop.offset ||
        stop.frame.body.size() + kHeaderSize != stop.frame.size)
      __builtin_trap();
    // Every decoder sees every frame: a message of the wrong type must be refused, not misread.
    (void)decode_sasl_initial_response(stop.frame.body);
    (void)decode_password_message(stop.frame.body);
    (void)decode_parse(stop.frame.body);
    (void)decode_target(stop.frame.body);
    (void)decode_execute(stop.frame.body);
    (void)decode_bind(stop.frame.body);
    check_message(stop.frame, in.subspan(pos, stop.frame.size));
    pos += stop.frame.size;
  }
}

// The cursor and the routing walk over the same bytes: frames inside the input, the walk stops
// where the cursor does, and what it asks for or answers lies inside the input.
struct CountingJudge final : routing::MessageJudge {
  std::size_t judged = 0;
  routing::MessageVerdict judge(const Frame& f, bool, bool lone) override {
    ++judged;
    const bool read = f.size % 2 == 0;
    return {read, !read, f.size % 7 == 0, static_cast<std::uint8_t>(lone && f.size % 5 == 0)};
  }
};

void cursor_and_route(Span in) {
  FrameCursor cursor(in);
  std::size_t frames = 0;
  while (auto f = cursor.next()) {
    ++frames;
    if (cursor.offset() > in.size() || f->body.size() + kHeaderSize != f->size) __builtin_trap();
  }
  if (!cursor.failure() && cursor.offset() < in.size() && cursor.need() == 0) __builtin_trap();
  CountingJudge judge;
  auto r = routing::route_requests(in, 64 * 1024, judge);
  if (judge.judged > frames || r.judged > cursor.offset()) __builtin_trap();
  if (r.kind == routing::RequestRoute::kNeedMore && r.need == 0) __builtin_trap();
  if (r.kind == routing::RequestRoute::kLocal && (r.size != in.size() || r.local == 0))
    __builtin_trap();
}

void scram_server(std::string_view text) {
  static const auto verifier = scram::Verifier::from_password("pw", {1, 2, 3, 4}, 16);
  using State = scram::ServerExchange::State;
  scram::ServerExchange server(verifier, "servernonce");
  auto nl = text.find('\n');
  auto first = server.on_client_first(text.substr(0, nl));
  if (!first) {
    if (server.error().empty() || server.state() == State::kDone) __builtin_trap();
    if (server.on_client_final("c=biws,r=x,p=AAAA")) __builtin_trap();
    return;
  }
  if (server.state() != State::kExpectFinal || !first->starts_with("r=")) __builtin_trap();
  if (nl == text.npos) return;
  auto final_msg = server.on_client_final(text.substr(nl + 1));
  // The proof of a password the fuzzer does not know can never match.
  if (final_msg || server.state() != State::kFailed || server.error().empty()) __builtin_trap();
  if (server.on_client_final(text.substr(nl + 1))) __builtin_trap();  // failed stays failed
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 0 && data[0] == 'c') {
    scram_server(bytes::as_chars(Span(data + 1, size - 1)));
    return 0;
  }
  frames(Span(data, size));
  cursor_and_route(Span(data, size));
  return 0;
}
