// libFuzzer: the client-facing side — startup framing, startup packets, typed frames, the relay
// scanner, auth and extended-protocol messages, the SCRAM server — never crash, hang or
// over-allocate.
#include <cstddef>
#include <cstdint>

#include "protocol/pg/extended.hpp"
#include "protocol/pg/messages.hpp"
#include "protocol/pg/scanner.hpp"
#include "protocol/pg/scram.hpp"

using namespace sluice;
using namespace sluice::pg;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Span in(data, size);
  if (auto r = next_startup_frame(in); auto* f = std::get_if<Frame>(&r)) {
    (void)decode_startup(f->body);
    in = in.subspan(f->size);
  }
  MessageScanner scanner(1 << 20);
  constexpr WantTable kWant = make_want_table({'X', 'p', 'Q', 'P', 'B', 'D', 'C', 'E'});
  std::size_t pos = 0;
  for (int guard = 0; guard < 10000 && pos <= in.size(); ++guard) {
    auto stop = scanner.scan(in.subspan(pos), kWant, [](const Header&) {});
    pos += stop.offset;
    if (stop.kind != MessageScanner::Stop::kInspect) break;
    (void)decode_sasl_initial_response(stop.frame.body);
    (void)decode_password_message(stop.frame.body);
    (void)decode_query(stop.frame.body);
    (void)decode_parse(stop.frame.body);
    (void)decode_target(stop.frame.body);
    (void)decode_execute(stop.frame.body);
    if (auto bind = decode_bind(stop.frame.body)) {
      Buffer renamed;
      encode_bind_renamed(renamed, *bind, "sluice_s1");
    }
    pos += stop.frame.size;
  }
  static const auto verifier = scram::Verifier::from_password("pw", {1, 2, 3, 4}, 16);
  scram::ServerExchange server(verifier, "servernonce");
  auto text = bytes::as_chars(Span(data, size));
  auto comma = text.find('\n');
  if (server.on_client_first(text.substr(0, comma)) && comma != std::string_view::npos) {
    (void)server.on_client_final(text.substr(comma + 1));
  }
  return 0;
}
