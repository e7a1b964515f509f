// Where a pooled client's buffered requests may run, judged message by message before a
// checkout: whether they are whole enough to decide, whether all of them only read, and whether
// sluice answers a lone Query itself. Pure; the session judges each message (its statements,
// settings and the read analysis live there).
#pragma once

#include <cstddef>
#include <cstdint>

#include "protocol/pg/framer.hpp"

namespace sluice::routing {

// One message's verdict.
struct MessageVerdict {
  bool replica = false;         // may run on a replica (hints included)
  bool write = false;           // may write (or cannot be known)
  bool catalog_change = false;  // changes function volatility (the catalog is fetched again)
  std::uint8_t local = 0;       // a lone Query sluice answers or rewrites (the judge's code)
};

class MessageJudge {
 public:
  // `parse_seen`: a Parse came earlier in the buffer (an unnamed Bind is judged at it);
  // `lone`: the message is a Query and the whole buffer (only then may `local` be set).
  virtual MessageVerdict judge(const pg::Frame& f, bool parse_seen, bool lone) = 0;

 protected:
  ~MessageJudge() = default;
};

struct RequestRoute {
  enum Kind { kDecided, kNeedMore, kLocal } kind = kDecided;
  std::size_t need = 0;         // kNeedMore: bytes still missing
  std::size_t size = 0;         // kLocal: the Query's size
  std::uint8_t local = 0;       // kLocal: the judge's code
  bool replica = false;         // every buffered request may run on a replica
  bool write = false;           // some buffered request may write
  bool catalog_change = false;  // some judged message changes function volatility
  std::size_t judged = 0;       // bytes of whole messages judged
};

// Judges the whole messages at the front of `data`. A message larger than `max_message` is not
// waited for: the primary, as a write. Extended-query messages since the last Sync run in one
// implicit transaction that cannot move later, so the route waits for their Sync or Flush.
RequestRoute route_requests(bytes::Span data, std::size_t max_message, MessageJudge& judge);

}  // namespace sluice::routing
