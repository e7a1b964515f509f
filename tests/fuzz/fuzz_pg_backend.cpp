// libFuzzer: the server-facing side — typed frames, authentication requests, ParameterStatus,
// BackendKeyData, ReadyForQuery, ErrorResponse and the SCRAM client — must never crash.
#include <cstddef>
#include <cstdint>

#include "protocol/pg/messages.hpp"
#include "protocol/pg/scram.hpp"

using namespace sluice;
using namespace sluice::pg;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Span in(data, size);
  for (int guard = 0; guard < 10000; ++guard) {
    auto r = next_frame(in, 1 << 20);
    auto* f = std::get_if<Frame>(&r);
    if (f == nullptr) break;
    if (auto a = decode_authentication(f->body); a && a->code == auth::kSasl) {
      (void)decode_sasl_mechanisms(a->data);
    }
    (void)decode_parameter_status(f->body);
    (void)decode_backend_key_data(f->body);
    (void)decode_ready_for_query(f->body);
    (void)decode_error_fields(f->body);
    in = in.subspan(f->size);
  }
  scram::ClientExchange client("pw", "clientnonce");
  (void)client.client_first();
  auto text = bytes::as_chars(Span(data, size));
  auto nl = text.find('\n');
  // Bound the PBKDF2 work a fuzzer can ask for: only iteration counts of at most four digits.
  if (text.find("i=") != std::string_view::npos && text.size() < 512) {
    auto i_at = text.find("i=");
    auto digits = text.substr(i_at + 2, 5);
    if (digits.size() < 5 && client.on_server_first(text.substr(0, nl)) &&
        nl != std::string_view::npos) {
      (void)client.on_server_final(text.substr(nl + 1));
    }
  }
  return 0;
}
