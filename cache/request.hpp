// Which buffered client requests the cache may answer, and their key material: a lone Query, or
// an unnamed Parse (or a Bind of a named statement) with Bind, Describe portal, Execute of every
// row and Sync, nothing pipelined after it. Pure (no I/O): the session supplies its named
// statements and settings.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cache/cache.hpp"
#include "protocol/pg/framer.hpp"
#include "protocol/pg/messages.hpp"

namespace sluice::cache {

// A statement the client prepared earlier (what its Binds run).
struct NamedStatement {
  std::string_view query;
  const std::vector<std::uint32_t>* param_types = nullptr;
};
using StatementLookup = std::function<std::optional<NamedStatement>(std::string_view name)>;

struct RequestScan {
  enum Kind { kNo, kNeedMore, kCandidate } kind = kNo;
  std::size_t need = 0;  // kNeedMore: bytes still missing
  std::size_t size = 0;  // kCandidate: bytes of the request
  Request request;       // kCandidate: sql and material (key_session() adds the rest)
};

// Scans the first request in `data`. A message larger than `max_message` is not waited for.
RequestScan scan_request(bytes::Span data, std::size_t max_message, const StatementLookup& named);

// The rest of the key: who asks, and the session settings that can change a result
// (search_path apart; application_name and sluice.* never). A causal token makes it strict.
void key_session(Request& r, std::string database, std::string role,
                 const std::map<std::string, std::string>& settings, std::uint64_t generation);

// A miss's reply as its client receives it, kept until the ReadyForQuery that ends it.
class FillCapture {
 public:
  enum class Step {
    kMore,      // no ReadyForQuery yet
    kTooLarge,  // over the entry limit: not stored
    kStore,     // whole, outside a transaction: reply() is the entry
    kDrop,      // whole, but inside a transaction block: not stored
  };
  Step append(bytes::Span out, std::size_t max_entry_bytes);
  // The messages before the ReadyForQuery (after kStore).
  std::string_view reply() const {
    return {reinterpret_cast<const char*>(reply_.data()), scanned_};
  }
  void clear() {
    pg::Buffer().swap(reply_);
    scanned_ = 0;
  }

 private:
  pg::Buffer reply_;
  std::size_t scanned_ = 0;  // bytes of reply_ walked message by message
};

}  // namespace sluice::cache
