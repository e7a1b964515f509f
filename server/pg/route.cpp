// Read routing glue: the verdict per request, the node chosen, retries on another replica.
#include "server/pg/session.hpp"

namespace sluice::server::pgsession {

// Where one statement string may run, from its classification, the session's settings and hints.
ClientSession::Verdict ClientSession::verdict(const routing::ReadFacts& f) {
  Verdict v;
  const bool read_only_tx = f.read_only_tx || setting("default_transaction_read_only") == "on";
  v.replica = f.parsed && f.read && !(f.begins && (!read_only_tx || f.read_write_tx)) &&
              !replicas_->may_write(f.functions);
  v.write = !v.replica;
  v.replica = v.replica && !f.server_identity;  // the primary, as a read
  v.catalog_change = f.catalog_change;
  if (f.hint == routing::Hint::kPrimary) v.replica = false;
  if (f.hint == routing::Hint::kReplica) v.replica = true;
  if (f.hint == routing::Hint::kNone) {
    auto route = setting("sluice.route");
    if (route == "primary") v.replica = false;
    if (route == "replica") v.replica = true;
  }
  return v;
}

// One client message: Query and Parse by their text, Bind of a named statement by the text it
// was prepared with; a Bind of the unnamed statement without its Parse, FunctionCall and COPY
// data cannot be judged and go to the primary.
ClientSession::Verdict ClientSession::verdict(const pg::Frame& f, bool parse_seen) {
  if (lexer_suspect_) return {false, true, false};  // its text may be misread
  std::string_view text;
  routing::StatementPtr stmt;
  switch (f.type) {
    case 'Q':
    case 'P': {
      auto sql = pg::query_text(f);
      if (!sql) return {false, true, false};
      text = *sql;
      break;
    }
    case 'B': {
      auto b = pg::decode_bind(f.body);
      if (!b) return {false, true, false};
      if (b->statement.empty()) {
        if (parse_seen) return {true, false, false};  // judged at its Parse
        return {false, true, false};
      }
      stmt = ps_->statement(b->statement);
      if (!stmt) return {false, true, false};  // the server will say it does not exist
      text = stmt->query;
      break;
    }
    case 'D':
    case 'E':
    case 'S':
    case 'H':
    case 'C':
      return {true, false, false};
    default:
      return {false, true, false};
  }
  auto facts = rt_->reads.get(text);
  return verdict(*facts);
}

// The buffered requests a checkout must place: all reads → a replica may take them.
ClientSession::RouteNeed ClientSession::route_need() {
  struct Judge final : routing::MessageJudge {
    explicit Judge(ClientSession& session) : s(session) {}
    ClientSession& s;
    routing::MessageVerdict judge(const pg::Frame& f, bool parse_seen, bool lone) override {
      auto text = pg::query_text(f);
      s.note_route_text(f, text);
      Verdict v;
      if (f.type == 'Q') {
        auto facts = s.rt_->reads.get(text.value_or(std::string_view()));
        if (lone && facts->show_last_write_lsn) return {false, false, false, kShowLsn};
        if (lone && text && routing::is_set_route_primary(*text))
          return {false, false, false, kSetRoutePrimary};
        v = s.verdict(*facts);
      } else {
        v = s.verdict(f, parse_seen);
      }
      if (text && s.changes_lexer(*text))
        v = Verdict{false, true, v.catalog_change};  // what follows
      return {v.replica, v.write, v.catalog_change, kNotLocal};
    }
  } judge(*this);
  route_texts_.clear();
  auto n = routing::route_requests(reader_.pending(), kRouteMaxMessage, judge);
  if (n.catalog_change) {
    replicas_->catalog_changed();  // until it is fetched again, function calls go to the primary
    catalog_changed_ = true;
  }
  return n;
}

// Before a checkout: makes sure the first request is whole, answers what sluice answers itself.
// "" to check out, kAnswered, or why the session ends.
awaitable<Outcome> ClientSession::prepare_route() {
  for (;;) {
    route_ = route_need();
    if (route_.kind == RouteNeed::kNeedMore) {
      if (auto end = co_await read_client(route_.need)) co_return end;
      continue;
    }
    if (route_.kind == RouteNeed::kLocal && route_.local == kSetRoutePrimary) {
      // PRIMARY is a reserved word: the server would refuse it unquoted.
      reader_.consume(route_.size);
      pg::Buffer q;
      pg::encode_query(q, "SET sluice.route = 'primary'");
      reader_.unread(q);
      continue;
    }
    if (route_.kind == RouteNeed::kLocal && route_.local == kShowLsn) {
      reader_.consume(route_.size);
      route_ = RouteNeed{};
      pg::Buffer out;
      pg::Column col;
      col.name = "last_write_lsn";
      col.type_oid = 25;  // text
      col.type_len = -1;
      std::vector<pg::Column> cols{col};
      pg::encode_row_description(out, cols);
      const auto lsn = routing::format_lsn(last_write_lsn_);
      std::vector<std::optional<std::string_view>> row{lsn};
      pg::encode_data_row(out, row);
      pg::encode_command_complete(out, "SHOW");
      pg::encode_ready_for_query(out, 'I');
      if (!co_await send(std::move(out))) co_return "client write failed";
      co_return Next::kAnswered;
    }
    co_return Next::kGoOn;
  }
}

// The node for the next checkout: a replica when the request only reads and one is fresh enough
// (or, read consistency permitting, one that may be after a short wait: await_replay()).
int ClientSession::choose_node() {
  if (!replicas_ || pinned_ || !route_.replica) {
    if (route_.write) wrote_ = true;
    return routing::ReplicaSet::kPrimary;
  }
  const auto& r = cfg_->routing;
  const bool eventual = r.read_consistency == config::Routing::Consistency::kEventual;
  if (std::exchange(behind_, false) || (marks_unknown_ && global_reads()))
    return routing::ReplicaSet::kPrimary;  // counted where it was decided
  if (!eventual && r.read_your_writes == config::Routing::ReadYourWrites::kWindow &&
      last_write_at_ != Clock::time_point{} &&
      Clock::now() - last_write_at_ < r.read_your_writes_window)
    return routing::ReplicaSet::kPrimary;
  const auto need = min_lsn();
  auto pick =
      replicas_->pick(need, std::chrono::steady_clock::now(),
                      static_cast<std::uint64_t>(key_.pid) +
                          static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()),
                      need != 0 && r.max_consistency_wait.count() > 0);
  if (pick.refused) return kRefused;
  if (pick.wait) {
    wait_lsn_ = need;
  } else if (need != 0) {
    const auto outcome = pick.behind ? PoolCounters::kPrimaryBehind : PoolCounters::kReplica;
    if (pick.node >= 0 || pick.behind) counters_->consistent[outcome]->inc();
  }
  picked_ = true;
  return pick.node;
}

// What the next read must not be older than: its client's last write (read_your_writes: lsn,
// unless eventual), the causal token it set (SET sluice.min_lsn), the versions a cache miss is
// filled under, and (global) the commit marks of what it reads.
routing::Lsn ClientSession::min_lsn() const {
  const auto mode = cfg_->routing.read_consistency;
  routing::Lsn lsn = 0;
  if (mode != config::Routing::Consistency::kEventual &&
      cfg_->routing.read_your_writes == config::Routing::ReadYourWrites::kLsn)
    lsn = last_write_lsn_;
  if (auto token = routing::parse_lsn(setting("sluice.min_lsn"))) lsn = std::max(lsn, *token);
  if (cached_ && cached_->filling) lsn = std::max(lsn, cached_->fill.min_lsn);
  if (mode == config::Routing::Consistency::kGlobal) lsn = std::max(lsn, mark_lsn_);
  return lsn;
}

// A statement text route_need() judged, for read_marks(): of a Query, a Parse, or the named
// statement a Bind runs.
void ClientSession::note_route_text(const pg::Frame& f, std::optional<std::string_view> text) {
  if (route_texts_.size() > kMaxMarkedTexts) return;  // read_marks() takes the database's mark
  if (f.type == 'Q' || f.type == 'P') {
    route_texts_.push_back(text.value_or(std::string_view()));
  } else if (f.type == 'B') {
    auto b = pg::decode_bind(f.body);
    if (!b || b->statement.empty()) return;  // the unnamed statement: its Parse was noted
    auto stmt = ps_->statement(b->statement);
    route_texts_.push_back(stmt ? std::string_view(stmt->query) : std::string_view());
  }
}

// Read consistency global, before a read's checkout: the largest commit mark among the
// relations it reads (the database's mark when they cannot be told), from Redis where every
// sluice sharing it leaves its writes' marks, or without Redis from this instance's own
// commits. A cache miss read the marks of its relations in its lookup already.
awaitable<void> ClientSession::read_marks() {
  mark_lsn_ = 0;
  marks_unknown_ = false;
  if (cached_ && cached_->filling) co_return;  // the lookup read the marks of its relations
  std::optional<std::string> path;
  if (auto p = setting("search_path"); !p.empty()) path = p;
  std::vector<std::string_view> texts;  // named: no temporary inside a co_await (g++ 12)
  if (route_texts_.size() <= kMaxMarkedTexts) texts = route_texts_;
  auto* shared = rt_->redis_cache();
  if (!shared || !cfg_->cache.invalidation) {  // no marks in Redis: this instance's own
    std::optional<std::vector<std::uint32_t>> oids;
    if (rt_->cache) oids = rt_->cache->relations_of(db_name_, texts, user_->server_user, path);
    mark_lsn_ = rt_->positions.mark(db_name_, oids);
    co_return;
  }
  auto marks = co_await shared->read_marks(db_name_, texts, user_->server_user, path);
  if (!marks) {
    marks_unknown_ = true;  // Redis or the catalog missing: this read on the primary
    counters_->consistent[PoolCounters::kPrimaryBehind]->inc();
    co_return;
  }
  mark_lsn_ = *marks;
  // Writes made straight on the primary reach the marks through the WAL follower. While it is
  // behind, the primary's last position the health monitor read stands in for them.
  if (cfg_->cache.follows_wal() && !shared->follower_fresh(db_name_, cfg_->cache))
    mark_lsn_ = std::max(mark_lsn_, rt_->positions.primary_last(db_name_));
}

std::shared_ptr<Pool> ClientSession::replica_pool(int node) {
  auto i = static_cast<std::size_t>(node);
  if (routed_->pools.size() <= i) routed_->pools.resize(db_->replicas.size());
  auto& pool = routed_->pools.at(i);
  if (!pool) pool = rt_->pools.get(*cfg_, *db_, *user_, rt_->server_tls(), &db_->replicas.at(i));
  return pool;
}

// The read's server connection broke before the client saw a byte: ban the replica (a learned
// primary: wake the monitor), put the client's messages back, and let routing choose again.
void ClientSession::retry_elsewhere() {
  if (node_ >= 0) {
    spdlog::warn(
        "client {} user={} db={}: replica {} failed during a read ({}): banned, retrying "
        "the read on another node",
        peer_, user_name_, db_name_, replicas_->address(node_), routed_->retry_why);
  } else {
    spdlog::warn(
        "client {} user={} db={}: primary {}:{} failed during a read ({}): retrying the read "
        "once the health check has seen it",
        peer_, user_name_, db_name_, server_->host(), server_->port(), routed_->retry_why);
    rt_->obs.monitor.wake();
  }
  ban_replica(routed_->retry_why);
  primary_read_ = false;
  end_pick();
  server_.mark_broken();
  server_.give_back();
  server_failed_ = false;
  if (key_.pid != 0) rt_->cancels.set_target(key_, std::nullopt);
  ps_.emplace(*routed_->ps_saved);
  tracker_ = *routed_->tracker_saved;
  to_server_ = pg::MessageScanner(cfg_->max_message_size);
  to_client_ = pg::MessageScanner(pg::kMaxMessageLength);
  reader_.unread(routed_->replay);
  routed_->replay.clear();
  retried_ = true;
  release_wanted_ = false;
}

void ClientSession::end_pick() {
  if (picked_ && replicas_) replicas_->finished(node_);
  picked_ = false;
}

}  // namespace sluice::server::pgsession
