// The cache's view of a client's first buffered request (see request.hpp).
#include "cache/request.hpp"

#include "protocol/pg/extended.hpp"

namespace sluice::cache {

namespace {

// The state of one scan: what the messages so far allow and the key they build.
struct Scan {
  RequestScan& r;
  const StatementLookup& named;
  bool parsed = false, bound = false, executed = false;

  void types(const std::vector<std::uint32_t>& oids) {
    for (auto oid : oids) r.request.material += std::to_string(oid) + ",";
    r.request.material.push_back('\0');
  }
  // False when the request is not one the cache answers.
  bool parse(const pg::Frame& f, bool first) {
    auto p = pg::decode_parse(f.body);
    if (!p || !first || !p->name.empty()) return false;
    r.request.sql = p->query;
    r.request.material = "P";
    r.request.material.append(p->query);
    r.request.material.push_back('\0');
    types(p->param_types);
    parsed = true;
    return true;
  }
  bool bind(const pg::Frame& f) {
    auto b = pg::decode_bind(f.body);
    if (!b || bound || !b->portal.empty()) return false;
    if (b->statement.empty()) {
      if (!parsed) return false;
    } else {
      auto stmt = parsed ? std::nullopt : named(b->statement);
      if (!stmt) return false;
      r.request.sql = stmt->query;
      r.request.material = "N";
      r.request.material.append(stmt->query);
      r.request.material.push_back('\0');
      if (stmt->param_types) types(*stmt->param_types);
    }
    r.request.material.push_back('B');
    r.request.material.append(bytes::as_chars(b->rest));
    bound = true;
    return true;
  }
  bool describe(const pg::Frame& f) {
    auto t = pg::decode_target(f.body);
    if (!t || !t->name.empty() || executed) return false;
    if (t->kind == 'P' && bound) {
      r.request.material += "DP";
    } else if (t->kind == 'S' && parsed && !bound) {
      r.request.material += "DS";
    } else {
      return false;
    }
    return true;
  }
  bool execute(const pg::Frame& f) {
    auto e = pg::decode_execute(f.body);
    if (!e || !e->portal.empty() || e->max_rows != 0 || !bound || executed) return false;
    r.request.material.push_back('E');
    executed = true;
    return true;
  }
  // One message; `first`/`last`: it starts / ends the buffer; `end`: the offset after it.
  bool message(const pg::Frame& f, bool first, bool last, std::size_t end) {
    switch (f.type) {
      case 'Q': {
        auto sql = pg::query_text(f);
        if (!sql || !first || !last) return false;
        r.request.sql = *sql;
        r.request.material = "Q";
        r.request.material.append(*sql);
        r.size = end;
        r.kind = RequestScan::kCandidate;
        return true;
      }
      case 'P':
        return parse(f, first);
      case 'B':
        return bind(f);
      case 'D':
        return describe(f);
      case 'E':
        return execute(f);
      case 'S':
        if (!executed || !last) return false;
        r.request.material.push_back('S');
        r.size = end;
        r.kind = RequestScan::kCandidate;
        return true;
      default:
        return false;
    }
  }
};

}  // namespace

RequestScan scan_request(bytes::Span data, std::size_t max_message, const StatementLookup& named) {
  RequestScan r;
  Scan scan{r, named};
  pg::FrameCursor cursor(data);
  while (auto f = cursor.next()) {
    const std::size_t end = cursor.offset();
    if (!scan.message(*f, end == f->size, end == data.size(), end)) return RequestScan{};
  }
  if (cursor.failure()) return RequestScan{};
  if (cursor.offset() < data.size()) {  // an incomplete message
    if (cursor.partial_size() != 0 && cursor.offset() + cursor.partial_size() > max_message)
      return RequestScan{};
    r.kind = RequestScan::kNeedMore;
    r.need = cursor.need();
    return r;
  }
  if (r.kind != RequestScan::kCandidate) return RequestScan{};  // no Sync yet: not ours
  return r;
}

void key_session(Request& r, std::string database, std::string role,
                 const std::map<std::string, std::string>& settings, std::uint64_t generation) {
  r.database = std::move(database);
  r.role = std::move(role);
  for (const auto& [name, value] : settings) {
    if (name == "search_path" || name == "application_name" || name.starts_with("sluice."))
      continue;
    r.settings.emplace_back(name, value);
  }
  if (auto it = settings.find("search_path"); it != settings.end() && !it->second.empty())
    r.search_path = it->second;
  auto token = settings.find("sluice.min_lsn");
  r.strict = token != settings.end() && !token->second.empty();
  r.generation = generation;
}

FillCapture::Step FillCapture::append(bytes::Span out, std::size_t max_entry_bytes) {
  reply_.insert(reply_.end(), out.begin(), out.end());
  if (reply_.size() > max_entry_bytes + 64) return Step::kTooLarge;  // its ReadyForQuery fits
  pg::FrameCursor cursor(bytes::Span(reply_).subspan(scanned_));
  while (auto f = cursor.next()) {
    if (f->type == 'Z') {
      scanned_ += cursor.offset() - f->size;
      return !f->body.empty() && f->body[0] == 'I' ? Step::kStore : Step::kDrop;
    }
  }
  scanned_ += cursor.offset();
  return Step::kMore;
}

}  // namespace sluice::cache
