// Judging a pooled client's buffered requests before a checkout (see request_route.hpp).
#include "routing/request_route.hpp"

namespace sluice::routing {

RequestRoute route_requests(bytes::Span data, std::size_t max_message, MessageJudge& judge) {
  RequestRoute r;
  pg::FrameCursor cursor(data);
  bool any = false, replica = true, parse_seen = false;
  bool open = false, flushed = false;  // an implicit transaction since the last Sync; at a Flush
  while (auto f = cursor.next()) {
    if (f->type == 'S') open = flushed = false;
    if (f->type == 'P' || f->type == 'B' || f->type == 'D' || f->type == 'C' || f->type == 'E')
      open = true;
    if (f->type == 'H') flushed = open;
    const bool lone = !any && f->type == 'Q' && f->size == data.size();
    const auto v = judge.judge(*f, parse_seen, lone);
    r.catalog_change = r.catalog_change || v.catalog_change;
    if (lone && v.local != 0) {
      r.kind = RequestRoute::kLocal;
      r.local = v.local;
      r.size = f->size;
      return r;
    }
    if (f->type == 'P') parse_seen = true;
    replica = replica && v.replica;
    r.write = r.write || v.write;
    any = true;
  }
  const std::size_t pos = cursor.offset();
  if (cursor.failure()) return r;  // malformed: the primary; the relay reports it
  const std::size_t partial = cursor.partial_size();
  if (!any && cursor.need() > 0 && pos < data.size()) {  // not even the first message is whole
    if (partial > max_message) {
      r.write = true;  // too large to classify: the primary, as a write
      return r;
    }
    r.kind = RequestRoute::kNeedMore;
    r.need = cursor.need();
    return r;
  }
  // A later message too large to wait for decides nothing more: route what is whole.
  const bool waitable = partial == 0 || pos + partial <= max_message;
  if (open && !flushed && waitable && data.size() < max_message) {
    // No Sync or Flush yet: the client still sends (it waits for nothing before either).
    r.kind = RequestRoute::kNeedMore;
    r.need = cursor.need();
    r.write = r.replica = false;
    return r;
  }
  // A segment left open (the client waits at a Flush): what it sends next joins that implicit
  // transaction, writes included, so it starts on the primary.
  r.replica = any && replica && !open;
  r.judged = pos;
  return r;
}

}  // namespace sluice::routing
