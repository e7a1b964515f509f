// Query cache glue: lookups before a checkout, fills from replies, bumps after writes.
#include "server/pg/session.hpp"

namespace sluice::server::pgsession {

// The first buffered request, when the cache may answer it: a lone Query, or an unnamed Parse
// (or a Bind of a named statement) with Bind, Describe portal, Execute of every row and Sync,
// and nothing pipelined after it.
ClientSession::CacheRequest ClientSession::cache_request() {
  CacheRequest r;
  if (setting("sluice.cache") == "off") return r;
  auto data = reader_.pending();
  std::size_t pos = 0;
  std::string& material = r.request.material;
  bool parsed = false, bound = false, executed = false;
  while (pos < data.size()) {
    if (data.size() - pos < pg::kHeaderSize) {
      r.kind = CacheRequest::kNeedMore;
      r.need = pg::kHeaderSize - (data.size() - pos);
      return r;
    }
    const char type = static_cast<char>(data[pos]);
    bytes::Reader header(data.subspan(pos + 1, 4));
    const std::uint32_t len = header.u32();
    if (len < 4) return CacheRequest{};
    const std::size_t size = 1 + static_cast<std::size_t>(len);
    if (size > data.size() - pos) {
      if (pos + size > kRouteMaxMessage) return CacheRequest{};
      r.kind = CacheRequest::kNeedMore;
      r.need = size - (data.size() - pos);
      return r;
    }
    const auto body = data.subspan(pos + pg::kHeaderSize, len - 4);
    const bool last = pos + size == data.size();
    auto types = [&material](const std::vector<std::uint32_t>& oids) {
      for (auto oid : oids) material += std::to_string(oid) + ",";
      material.push_back('\0');
    };
    switch (type) {
      case 'Q': {
        if (pos != 0 || !last) return CacheRequest{};
        auto text = bytes::as_chars(body);
        r.request.sql = text.substr(0, text.find('\0'));
        material = "Q";
        material.append(r.request.sql);
        r.size = size;
        r.kind = CacheRequest::kCandidate;
        break;
      }
      case 'P': {
        auto p = pg::decode_parse(body);
        if (!p || pos != 0 || !p->name.empty()) return CacheRequest{};
        r.request.sql = p->query;
        material = "P";
        material.append(p->query);
        material.push_back('\0');
        types(p->param_types);
        parsed = true;
        break;
      }
      case 'B': {
        auto b = pg::decode_bind(body);
        if (!b || bound || !b->portal.empty()) return CacheRequest{};
        if (b->statement.empty()) {
          if (!parsed) return CacheRequest{};
        } else {
          auto stmt = parsed ? nullptr : ps_->statement(b->statement);
          if (!stmt) return CacheRequest{};
          r.request.sql = stmt->query;
          material = "N";
          material.append(stmt->query);
          material.push_back('\0');
          types(stmt->param_types);
        }
        material.push_back('B');
        material.append(bytes::as_chars(b->rest));
        bound = true;
        break;
      }
      case 'D': {
        auto t = pg::decode_target(body);
        if (!t || !t->name.empty() || executed) return CacheRequest{};
        if (t->kind == 'P' && bound) {
          material += "DP";
        } else if (t->kind == 'S' && parsed && !bound) {
          material += "DS";
        } else {
          return CacheRequest{};
        }
        break;
      }
      case 'E': {
        auto e = pg::decode_execute(body);
        if (!e || !e->portal.empty() || e->max_rows != 0 || !bound || executed)
          return CacheRequest{};
        material.push_back('E');
        executed = true;
        break;
      }
      case 'S':
        if (!executed || !last) return CacheRequest{};
        material.push_back('S');
        r.size = pos + size;
        r.kind = CacheRequest::kCandidate;
        break;
      default:
        return CacheRequest{};
    }
    pos += size;
  }
  if (r.kind != CacheRequest::kCandidate) return CacheRequest{};  // no Sync yet: not ours
  r.request.database = db_name_;
  r.request.role = user_->server_user;
  for (const auto& [name, value] : ps_->settings()) {
    // Settings that cannot change a result stay out of the key.
    if (name == "search_path" || name == "application_name" || name.starts_with("sluice."))
      continue;
    r.request.settings.emplace_back(name, value);
  }
  if (auto path = setting("search_path"); !path.empty()) r.request.search_path = path;
  r.request.strict = !setting("sluice.min_lsn").empty();
  r.request.generation = generation_;
  return r;
}

// Before a checkout: answers the request from the cache when it can. "" to go on to the server
// (a miss is filled from its reply), kAnswered, or why the session ends.
awaitable<std::string> ClientSession::try_cache() {
  CacheRequest req;
  for (;;) {
    req = cache_request();
    if (req.kind != CacheRequest::kNeedMore) break;
    if (auto end = co_await read_client(req.need)) co_return *end;
  }
  if (req.kind != CacheRequest::kCandidate) co_return std::string();
  const auto started = Clock::now();
  auto l = co_await rt_->cache->lookup(std::move(req.request), cfg_->cache);
  if (l.outcome == cache::Lookup::Outcome::kHit) {
    reader_.consume(req.size);
    route_.judged = 0;
    pg::Buffer out;
    out.reserve(l.value->size() + 6);
    out.assign(l.value->begin(), l.value->end());
    pg::encode_ready_for_query(out, 'I');
    const auto bytes = out.size();
    if (!co_await send(std::move(out))) co_return "client write failed";
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    cache::Cache::note_outcome(l, true);
    rt_->obs.observe_cache_hit(seconds);
    const auto& k = *counters_;
    k.queries[static_cast<std::size_t>(routing::Route::kCache)]->inc();
    k.transactions->inc();
    k.sent_bytes->inc(bytes);
    k.query_duration->observe(seconds);
    handle_->request_time = std::time(nullptr);
    co_return std::string(kAnswered);
  }
  if (l.outcome == cache::Lookup::Outcome::kMiss) {
    cache::Cache::note_outcome(l, false);
    auto& c = cached();
    c.fill = std::move(l);
    c.filling = true;
    c.reply.clear();
    c.scanned = 0;
  }
  co_return std::string();
}

// Keeps what the client receives of a miss's reply; at its ReadyForQuery, stores it.
void ClientSession::capture_fill(asio::const_buffer out) {
  auto& c = *cached_;
  const auto* p = static_cast<const std::uint8_t*>(out.data());
  c.reply.insert(c.reply.end(), p, p + out.size());
  if (c.reply.size() > cfg_->cache.max_entry_bytes + 64) {
    if (c.fill.plan && c.fill.plan->counters) c.fill.plan->counters->skipped_fills++;
    end_fill();
    return;
  }
  while (c.reply.size() - c.scanned >= pg::kHeaderSize) {
    bytes::Reader header(std::span(c.reply).subspan(c.scanned + 1, 4));
    const std::size_t size = 1 + static_cast<std::size_t>(header.u32());
    if (size < pg::kHeaderSize || size > c.reply.size() - c.scanned) return;
    if (c.reply[c.scanned] == 'Z') {
      const bool idle = c.reply[c.scanned + 5] == 'I';
      std::string_view reply(reinterpret_cast<const char*>(c.reply.data()), c.scanned);
      if (idle) rt_->cache->store(c.fill, reply, cfg_->cache);
      end_fill();
      return;
    }
    c.scanned += size;
  }
}

void ClientSession::end_fill() {
  if (!cached_ || !cached_->filling) return;
  cached_->filling = false;
  rt_->cache->finish(cached_->fill);
  cached_->fill = cache::Lookup{};
  pg::Buffer().swap(cached_->reply);
}

// Notes what a client message may write, for the bump at the end of its transaction.
void ClientSession::note_writes(const pg::Frame& f) {
  std::shared_ptr<const cache::CacheFacts> facts;
  // The server may read a backslash where libpg_query does not: the analysis cannot be trusted.
  auto misread = [this](std::string_view sql) {
    if (!lexer_suspect_ || sql.find('\\') == std::string_view::npos) return false;
    cached().writes.unknown = true;
    return true;
  };
  switch (f.type) {
    case 'Q': {
      auto body = bytes::as_chars(f.body);
      if (misread(body)) return;
      facts = rt_->cache->facts(body.substr(0, body.find('\0')));
      break;
    }
    case 'P': {
      auto p = pg::decode_parse(f.body);
      if (!p) return;
      if (misread(p->query)) {
        if (cached_) cached_->named.erase(std::string(p->name));  // its Binds: unknown too
        return;
      }
      facts = rt_->cache->facts(p->query);
      if (!ps_ && !p->name.empty()) {  // session pooling: remember the client's statements
        auto& named = cached().named;
        if (named.size() < 10'000 || named.contains(std::string(p->name)))
          named[std::string(p->name)] = facts;
      }
      break;
    }
    case 'B': {
      auto b = pg::decode_bind(f.body);
      if (!b || b->statement.empty()) return;  // the Parse before it was noted
      if (ps_) {
        auto stmt = ps_->statement(b->statement);
        if (!stmt || misread(stmt->query)) return;  // the server will refuse it, or unknown
        facts = rt_->cache->facts(stmt->query);
        break;
      }
      auto& named = cached().named;
      auto it = named.find(std::string(b->statement));
      if (it == named.end()) {
        cached().writes.unknown = true;
        return;
      }
      facts = it->second;
      break;
    }
    default:
      return;
  }
  if (facts->writes.empty() && !facts->writes_unknown && facts->functions.empty()) return;
  std::optional<std::string> path;
  if (ps_) {
    if (auto p = setting("search_path"); !p.empty()) path = p;
  } else {
    // Session pooling does not track the client's SETs: unqualified names cannot be resolved
    // for sure.
    for (const auto& w : facts->writes) {
      if (w.schema.empty()) {
        cached().writes.unknown = true;
        return;
      }
    }
  }
  rt_->cache->note_writes(db_name_, *facts, user_->server_user, path, cached().writes);
}

// Bumps the versions of what this transaction wrote, before its client sees ReadyForQuery.
awaitable<void> ClientSession::bump_writes() {
  auto writes = std::move(cached_->writes);
  cached_->writes.clear();
  // The primary's WAL position after the commit: replicas may fill entries under the new
  // versions only once they have replayed this far. Unknown (the server is busy with pipelined
  // requests, or session pooling): no replica fills those relations' entries.
  routing::Lsn lsn = ~routing::Lsn{0};
  // Quiet: nothing of the client's is on the server connection or on its way (a pipelined
  // request already forwarded, even in part, would take this query's reply as its own).
  const bool quiet = ps_ && ps_->idle() && !to_server_.mid_message() &&
                     server_->reader().pending().empty() && !server_writing_ &&
                     (sequential_ || reader_.pending().empty());
  if (node_ < 0 && quiet) {
    auto& c = cached();
    if (!sequential_) {
      if (!c.reserve_timer) c.reserve_timer.emplace(co_await asio::this_coro::executor);
      c.server_reserved = true;
    }
    auto r = co_await server_->query("SELECT pg_catalog.pg_current_wal_insert_lsn()");
    if (!sequential_) {
      c.server_reserved = false;
      c.reserve_timer->cancel();
    }
    auto* rows = std::get_if<routing::Rows>(&r);
    if (rows && rows->size() == 1 && !(*rows)[0].empty() && (*rows)[0][0]) {
      if (auto parsed = routing::parse_lsn(*(*rows)[0][0])) {
        lsn = *parsed;
        last_write_lsn_ = std::max(last_write_lsn_, lsn);
        write_lsn_known_ = true;
      }
    } else if (!rows) {
      server_failed_ = true;
    }
  }
  if (cfg_->cache.invalidation) co_await rt_->cache->bump(db_name_, writes, lsn);
}

}  // namespace sluice::server::pgsession
