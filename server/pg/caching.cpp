// Query cache glue: lookups before a checkout, fills from replies, bumps after writes.
#include "server/pg/session.hpp"

namespace sluice::server::pgsession {

// The first buffered request, when the cache may answer it (cache/request.hpp says which).
ClientSession::CacheRequest ClientSession::cache_request() {
  if (setting("sluice.cache") == "off") return {};
  auto named = [this](std::string_view name) -> std::optional<cache::NamedStatement> {
    auto stmt = ps_->statement(name);  // ps_ keeps it while the request is scanned
    if (!stmt) return std::nullopt;
    return cache::NamedStatement{stmt->query, &stmt->param_types};
  };
  auto r = cache::scan_request(reader_.pending(), kRouteMaxMessage, named);
  if (r.kind == CacheRequest::kCandidate) {
    cache::key_session(r.request, db_name_, user_->server_user, ps_->settings(), generation_);
    // Read consistency global: versions from Redis, as any instance's last write left them.
    if (global_reads()) r.request.strict = true;
  }
  return r;
}

// Before a checkout: answers the request from the cache when it can. "" to go on to the server
// (a miss is filled from its reply), kAnswered, or why the session ends.
awaitable<Outcome> ClientSession::try_cache() {
  CacheRequest req;
  for (;;) {
    req = cache_request();
    if (req.kind != CacheRequest::kNeedMore) break;
    if (auto end = co_await read_client(req.need)) co_return end;
  }
  if (req.kind != CacheRequest::kCandidate) co_return Next::kGoOn;
  const auto started = Clock::now();
  auto l = co_await rt_->cache->lookup(std::move(req.request), cfg_->cache);
  if (l.outcome == cache::Lookup::Outcome::kHit) {
    reader_.consume(req.size);
    route_.judged = 0;
    pg::Buffer out;
    out.reserve(l.value->size() + 6);
    out.assign(l.value->begin(), l.value->end());
    pg::encode_ready_for_query(out, 'I');
    // Counted before the client can see the rows: a client that reads the metrics right after
    // its reply finds its hit there.
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    cache::Cache::note_outcome(l, true);
    rt_->obs.observe_cache_hit(seconds);
    const auto& k = *counters_;
    k.queries[static_cast<std::size_t>(routing::Route::kCache)]->inc();
    k.transactions->inc();
    k.sent_bytes->inc(out.size());
    k.query_duration->observe(seconds);
    handle_->request_time = std::time(nullptr);
    if (!co_await send(std::move(out))) co_return "client write failed";
    co_return Next::kAnswered;
  }
  if (l.outcome == cache::Lookup::Outcome::kMiss) {
    cache::Cache::note_outcome(l, false);
    auto& c = cached();
    c.fill = std::move(l);
    c.filling = true;
    c.capture.clear();
  }
  co_return Next::kGoOn;
}

// Keeps what the client receives of a miss's reply; at its ReadyForQuery, stores it.
void ClientSession::capture_fill(asio::const_buffer out) {
  auto& c = *cached_;
  const bytes::Span bytes(static_cast<const std::uint8_t*>(out.data()), out.size());
  switch (c.capture.append(bytes, cfg_->cache.max_entry_bytes)) {
    case cache::FillCapture::Step::kMore:
      return;
    case cache::FillCapture::Step::kTooLarge:
      if (c.fill.plan && c.fill.plan->counters) c.fill.plan->counters->skipped_fills++;
      break;
    case cache::FillCapture::Step::kStore:
      rt_->cache->store(c.fill, c.capture.reply(), cfg_->cache);
      break;
    case cache::FillCapture::Step::kDrop:
      break;
  }
  end_fill();
}

void ClientSession::end_fill() {
  if (!cached_ || !cached_->filling) return;
  cached_->filling = false;
  rt_->cache->finish(cached_->fill);
  cached_->fill = cache::Lookup{};
  cached_->capture.clear();
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
      auto sql = pg::query_text(f);
      if (!sql || misread(*sql)) return;  // malformed: the server refuses it
      facts = rt_->cache->facts(*sql);
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

// The end of a transaction that wrote, before its client sees ReadyForQuery: its commit LSN is
// noted (read consistency) and the versions of what it wrote are bumped (the query cache).
awaitable<void> ClientSession::bump_writes() {
  cache::Writes writes;
  if (cached_) {
    writes = std::move(cached_->writes);
    cached_->writes.clear();
  }
  // Replicas may serve reads of what it wrote (and fill the cache's entries under the new
  // versions) only once they have replayed this far.
  auto lsn = co_await commit_lsn();
  if (lsn) {
    last_write_lsn_ = std::max(last_write_lsn_, *lsn);
    write_lsn_known_ = true;
    rt_->positions.committed(db_name_, *lsn, writes.oids, writes.unknown || writes.roles);
  }
  if (rt_->redis_cache() && cfg_->cache.invalidation && !writes.empty()) {
    const auto mark = lsn.value_or(rt_->positions.primary_last(db_name_));
    co_await rt_->cache->bump(db_name_, writes, mark);  // marks the catalog stale after DDL
  } else if (rt_->cache && writes.catalog_change) {
    rt_->cache->catalog_changed(db_name_);  // the relations the marks resolve names with
  }
}

// The primary's WAL position after this client's commit: asked on its own server connection
// when nothing of the client's is on it, else read by the health monitor in a query begun after
// the commit (any later reading of the primary's insert position is at least the commit's LSN).
// Never a guess: nullopt when neither could tell.
awaitable<std::optional<routing::Lsn>> ClientSession::commit_lsn() {
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
    auto fetched = co_await fetch_write_lsn();
    if (!sequential_) {
      c.server_reserved = false;
      c.reserve_timer->cancel();
    }
    if (fetched) co_return fetched;
  }
  co_return co_await monitor_lsn();
}

// A reading of the primary's WAL position by the health monitor that began after now: wakes
// it and waits (up to 2 s) for its next check of the primary.
awaitable<std::optional<routing::Lsn>> ClientSession::monitor_lsn() {
  const auto since = std::chrono::steady_clock::now();
  if (!rt_->positions.readable(db_name_)) co_return std::nullopt;  // the monitor cannot log in
  rt_->obs.monitor.wake();
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (int i = 0; i < 2000 && !killed_; ++i) {
    if (auto lsn = rt_->positions.primary_since(db_name_, since)) co_return lsn;
    timer.expires_after(std::chrono::milliseconds(1));
    co_await timer.async_wait(use_nothrow);
  }
  spdlog::warn(
      "client {} user={} db={}: the primary's WAL position could not be read after a commit "
      "(health monitor): the write's mark carries the last position read",
      peer_, user_name_, db_name_);
  co_return std::nullopt;
}

}  // namespace sluice::server::pgsession
