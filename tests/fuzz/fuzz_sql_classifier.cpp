// libFuzzer: session-state analysis of arbitrary SQL (libpg_query + the JSON walk) never crashes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "routing/session_statements.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto analysis =
      sluice::routing::analyze(std::string_view(reinterpret_cast<const char*>(data), size));
  (void)analysis;
  return 0;
}
