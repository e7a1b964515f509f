// libFuzzer: transaction pooling's bookkeeping (routing/pooling) fed arbitrary client messages and
// server replies in any order — every message sluice writes for the server must frame correctly,
// and nothing may crash, whatever a client or a server sends.
#include <cstddef>
#include <cstdint>

#include "routing/pooling.hpp"

using namespace sluice;
using namespace sluice::pg;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static routing::AnalysisCache analyses(64);
  static routing::KnownStatements known(64);
  routing::PooledSession session(analyses, {{"application_name", "fuzz"}},
                                 {(size & 1) != 0, &known, "fuzz"});
  routing::ServerState servers[2] = {routing::ServerState(3), routing::ServerState(3)};
  Span in(data, size);
  for (int guard = 0; guard < 2000 && !in.empty(); ++guard) {
    // One selector byte: which side speaks, and on which server connection.
    std::uint8_t selector = in[0];
    in = in.subspan(1);
    auto r = next_frame(in, 1 << 16);
    auto* f = std::get_if<Frame>(&r);
    if (f == nullptr) break;
    auto& server = servers[(selector >> 1) & 1];
    if ((selector & 1) == 0) {
      Buffer out;
      (void)session.on_client(*f, server, out);
      Span written(out);  // what goes to the server must be whole, valid frames
      while (!written.empty()) {
        auto w = next_frame(written, kMaxMessageLength);
        auto* wf = std::get_if<Frame>(&w);
        if (wf == nullptr) __builtin_trap();
        written = written.subspan(wf->size);
      }
    } else {
      (void)session.on_server(*f, server);
    }
    if ((selector & 0xf0) == 0xe0) {
      // A detached client's request answered by sluice: whole frames, never past the input.
      Buffer out;
      auto a = session.answer_detached(in, out);
      if (a.consumed > in.size()) __builtin_trap();
      for (Span written(out); !written.empty();) {
        auto* wf = std::get_if<Frame>(&(r = next_frame(written, kMaxMessageLength)));
        if (wf == nullptr) __builtin_trap();
        written = written.subspan(wf->size);
      }
      if (a.kind == routing::PooledSession::LocalAnswer::kAnswered) {
        in = in.subspan(a.consumed);
        continue;
      }
    }
    if ((selector & 0xf0) == 0xf0) {
      routing::Rows rows{{std::string("search_path"), std::string("x")}};
      session.apply_capture(rows, server);
      session.apply_present({}, server);
      (void)routing::settings_sync(session.settings(), server.settings);
      (void)routing::settings_capture(session.capture_names());
      session.attached(server);
      session.trim();
    }
    in = in.subspan(f->size);
  }
  return 0;
}
