// Per-client prepared statements and settings over pooled server connections (see pooling.hpp).
#include "routing/pooling.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <iterator>

#include "protocol/pg/sql.hpp"
#include "routing/fnv1a.hpp"

namespace sluice::routing {
namespace {

// FNV-1a, 64 bits: the same name for the same statement in every sluice process.
pg::Span whole(const pg::Frame& f) {
  return {f.body.data() - pg::kHeaderSize, f.size};
}

void append(pg::Buffer& out, pg::Span bytes) {
  out.insert(out.end(), bytes.begin(), bytes.end());
}

// ASCII only (SQL keywords): no locale lookup per byte on every statement's text.
constexpr char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

// Case-insensitive: does `hay` contain `needle` (lower case) at `at`?
bool word_at(std::string_view hay, std::size_t at, std::string_view needle) {
  if (hay.size() - at < needle.size()) return false;
  for (std::size_t i = 0; i < needle.size(); ++i) {
    if (lower(hay[at + i]) != needle[i]) return false;
  }
  return true;
}

// Does `hay` contain any of `needles` (lower case, not empty)? One pass over the text.
template <std::size_t N>
bool contains_any(std::string_view hay, const std::array<std::string_view, N>& needles) {
  for (std::size_t i = 0; i < hay.size(); ++i) {
    const char c = lower(hay[i]);
    for (auto n : needles) {
      if (n[0] == c && word_at(hay, i, n)) return true;
    }
  }
  return false;
}

}  // namespace

StatementPtr make_statement(std::string_view query, std::vector<std::uint32_t> param_types) {
  Fnv1a h;
  h.add(query);
  for (auto oid : param_types) h.add(&oid, sizeof oid);
  std::array<char, 24> name{};
  std::snprintf(name.data(), name.size(), "sluice_%016llx",
                static_cast<unsigned long long>(h.value()));
  return std::make_shared<const PreparedStatement>(
      PreparedStatement{std::string(query), std::move(param_types), std::string(name.data())});
}

bool ServerState::has(const PreparedStatement& s) {
  auto it = index_.find(s.server_name);
  if (it == index_.end() || !(*it->second)->same_as(s)) return false;
  lru_.splice(lru_.begin(), lru_, it->second);
  return true;
}

std::vector<StatementPtr> ServerState::add(StatementPtr s) {
  std::vector<StatementPtr> close;
  if (auto it = index_.find(s->server_name); it != index_.end()) {  // a hash collision
    close.push_back(*it->second);
    lru_.erase(it->second);
    index_.erase(it);
  }
  while (lru_.size() >= max_statements_) {
    close.push_back(lru_.back());
    index_.erase(lru_.back()->server_name);
    lru_.pop_back();
  }
  lru_.push_front(std::move(s));
  index_.emplace(lru_.front()->server_name, lru_.begin());
  return close;
}

void ServerState::forget(std::string_view server_name) {
  if (auto it = index_.find(server_name); it != index_.end()) {
    auto pos = it->second;
    index_.erase(it);
    lru_.erase(pos);
  }
}

void ServerState::restore(StatementPtr s) {
  if (index_.contains(s->server_name)) return;
  lru_.push_back(std::move(s));  // least recently used: the next to go
  index_.emplace(lru_.back()->server_name, std::prev(lru_.end()));
}

void ServerState::clear_statements() {
  index_.clear();
  lru_.clear();
  sql_prepared.clear();
}

namespace {
// Bind carries at most 65535 parameters; a client may have set more settings than that.
constexpr std::size_t kSettingsPerStatement = 1000;

void add_set_config(std::vector<ParamQuery>& out, const std::string& name,
                    std::optional<std::string> value) {
  if (out.empty() || out.back().params.size() >= 2 * kSettingsPerStatement)
    out.push_back({"SELECT ", {}});
  auto& q = out.back();
  auto n = q.params.size();
  if (n > 0) q.sql += ", ";
  q.sql += "pg_catalog.set_config($" + std::to_string(n + 1) + ", $" + std::to_string(n + 2) +
           ", false)";
  q.params.emplace_back(name);
  q.params.push_back(std::move(value));
}
}  // namespace

std::vector<ParamQuery> settings_sync(const Settings& want, const Settings& have) {
  std::vector<ParamQuery> out;   // the client_encoding change, if any
  std::vector<ParamQuery> rest;  // then everything else
  auto to = [&](const std::string& name) -> std::vector<ParamQuery>& {
    return name == "client_encoding" ? out : rest;
  };
  for (const auto& [name, value] : have) {
    if (!want.contains(name)) add_set_config(to(name), name, std::nullopt);
  }
  for (const auto& [name, value] : want) {
    auto it = have.find(name);
    if (it == have.end() || it->second != value) add_set_config(to(name), name, value);
  }
  out.insert(out.end(), std::make_move_iterator(rest.begin()), std::make_move_iterator(rest.end()));
  return out;
}

std::vector<ParamQuery> settings_capture(const std::set<std::string>& names) {
  std::vector<ParamQuery> out;
  for (const auto& n : names) {
    if (out.empty() || out.back().params.size() >= kSettingsPerStatement) out.push_back({});
    auto& q = out.back();
    q.sql += (q.params.empty() ? "" : ", ") + ("$" + std::to_string(q.params.size() + 1));
    q.params.emplace_back(n);
  }
  for (auto& q : out) {
    q.sql = "SELECT n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest(ARRAY[" + q.sql +
            "]::text[]) AS n";
  }
  return out;
}

namespace {
// True when some statement of `sql` may start with one of `words` (every ';' is taken as a
// possible start, strings too; a comment at a start counts as a match: not worth skipping).
template <std::size_t N>
bool may_start_with(std::string_view sql, const std::array<std::string_view, N>& words) {
  std::size_t at = 0;
  for (;;) {
    while (at < sql.size() && std::isspace(static_cast<unsigned char>(sql[at]))) ++at;
    if (word_at(sql, at, "/*") || word_at(sql, at, "--")) return true;
    for (auto w : words) {
      if (word_at(sql, at, w)) return true;
    }
    at = sql.find(';', at);
    if (at == std::string_view::npos) return false;
    ++at;
  }
}
}  // namespace

bool may_affect_session(std::string_view sql) {
  // Anywhere in the text: functions and clauses that change or pin the session.
  constexpr std::array<std::string_view, 4> anywhere = {"set_config", "advisory", "temp",
                                                        "execute"};
  if (contains_any(sql, anywhere)) return true;
  constexpr std::array<std::string_view, 8> leading = {"set",     "reset",  "prepare", "deallocate",
                                                       "discard", "listen", "declare", "load"};
  return may_start_with(sql, leading);
}

bool may_break_statements(std::string_view sql) {
  constexpr std::array<std::string_view, 2> leading = {"drop", "alter"};
  return may_start_with(sql, leading);
}

// ---- PooledSession: client → server --------------------------------------------------------

void PooledSession::push(Expect e) {
  if (e.kind == Expect::kSync && !e.injected) ++pending_;
  expect_.push_back(std::move(e));
}

void PooledSession::inject_query(std::string sql, pg::Buffer& out) {
  pg::encode_query(out, sql);
  push({Expect::kSync, true});
}

// Prepares `s` on this server under its server name unless it is there already.
void PooledSession::ensure_prepared(const StatementPtr& s, ServerState& server, pg::Buffer& out) {
  if (server.has(*s)) {
    if (!parse_unsettled(*s)) return;
    // Its Parse is still unanswered in an earlier pipeline segment: an error before it may
    // make the server skip it, and that segment's Sync ends the skipping before this message.
    // Parse it again here (a Close first, in case the first one did happen).
    close_on_server(s, out);
  } else {
    for (auto& evicted : server.add(s)) close_on_server(std::move(evicted), out);
  }
  pg::encode_parse(out, s->server_name, s->query, s->param_types);
  push({Expect::kReply, true, s});
}

bool PooledSession::parse_unsettled(const PreparedStatement& s) const {
  bool synced_after = false;  // walking back from the newest request
  for (std::size_t i = expect_.size(); i > head_; --i) {
    const auto& e = expect_[i - 1];
    if (e.kind == Expect::kSync) synced_after = true;
    if (e.prepared && !e.probe && e.prepared->server_name == s.server_name) return synced_after;
  }
  return false;
}

// Closes the server's copy of `s` (sluice's own request: its reply goes nowhere).
void PooledSession::close_on_server(StatementPtr s, pg::Buffer& out) {
  pg::encode_close(out, {'S', s->server_name});
  Expect e{Expect::kReply, true};
  e.evicted = std::move(s);
  push(std::move(e));
}

// Gives the server this client's SQL-level prepared statement `name` (same text).
void PooledSession::ensure_sql_prepared(const std::string& name, ServerState& server,
                                        pg::Buffer& out) {
  const auto& text = sql_prepared_.at(name);
  auto it = server.sql_prepared.find(name);
  if (it != server.sql_prepared.end() && it->second == text) return;
  std::string sql;
  if (it != server.sql_prepared.end()) sql = "DEALLOCATE " + pg::sql::quote_ident(name) + "; ";
  sql += text;
  inject_query(std::move(sql), out);
  expect_.back().sql_name = name;
  server.sql_prepared[name] = text;
}

std::optional<Pin> PooledSession::note_text(const Analysis& a, ServerState& server, pg::Buffer& out,
                                            bool simple_query) {
  if (!a.pins.empty()) return a.pins.front();
  auto touch_all = [&] {
    for (const auto& [name, value] : settings_) touched_.insert(name);
    for (const auto& [name, value] : server.settings) touched_.insert(name);
  };
  auto forget_sql_on_server = [&](const std::string& name) {
    if (server.sql_prepared.erase(name) > 0)
      inject_query("DEALLOCATE " + pg::sql::quote_ident(name), out);
  };
  for (const auto& s : a.statements) {
    switch (s.kind) {
      case StatementKind::kSet:
      case StatementKind::kReset:
        touched_.insert(s.name);
        break;
      case StatementKind::kResetAll:
        touch_all();
        break;
      case StatementKind::kDiscardAll:
        touch_all();
        statements_.clear();
        sql_prepared_.clear();
        server.clear_statements();
        break;
      case StatementKind::kDeallocateAll:
        statements_.clear();  // DEALLOCATE ALL drops protocol-level statements too
        sql_prepared_.clear();
        server.clear_statements();
        break;
      case StatementKind::kPrepare:
        if (!simple_query) break;
        if (sql_prepared_.contains(s.name)) {
          ensure_sql_prepared(s.name, server, out);  // the server refuses the duplicate itself
        } else {
          forget_sql_on_server(s.name);  // another client's statement of that name
          sql_prepared_[s.name] = s.text;
          server.sql_prepared[s.name] = s.text;
          uncertain_.insert(s.name);
        }
        break;
      case StatementKind::kExecute:
      case StatementKind::kDeallocate:
        if (!simple_query) break;
        if (sql_prepared_.contains(s.name)) {
          ensure_sql_prepared(s.name, server, out);
          if (s.kind == StatementKind::kDeallocate) {
            sql_prepared_.erase(s.name);
            server.sql_prepared.erase(s.name);
          }
        } else if (s.kind == StatementKind::kDeallocate && statements_.erase(s.name) > 0) {
          // DEALLOCATE of a protocol-level statement (one namespace in Postgres): give the
          // server something of that name to drop, so the client's statement succeeds.
          forget_sql_on_server(s.name);
          inject_query("PREPARE " + pg::sql::quote_ident(s.name) + " AS SELECT NULL", out);
        } else {
          forget_sql_on_server(s.name);  // the server must say it does not exist
        }
        break;
      default:
        break;
    }
  }
  for (const auto& c : a.set_config_calls) {
    if (c.kind == StatementKind::kSet) touched_.insert(c.name);
  }
  return std::nullopt;
}

PooledSession::ClientOutcome PooledSession::on_query(std::string_view sql, ServerState& server,
                                                     pg::Buffer& out) {
  ClientOutcome r;
  if (options_.known && may_break_statements(sql)) options_.known->clear();
  if (may_affect_session(sql)) {
    auto analysis = analyses_.get(sql);
    r.pin = note_text(*analysis, server, out, true);
    if (r.pin && options_.pin_is_error) {
      pg::encode_query(out, pg::sql::raise_error("0A000",
                                                 std::string(to_string(*r.pin)) +
                                                     " is not supported in transaction pooling",
                                                 "use a database or user with pool mode session "
                                                 "for this client, or set pool.pinning: pin"));
      push({Expect::kSync});
      return r;
    }
  }
  pg::encode_query(out, sql);
  push({Expect::kSync});
  return r;
}

PooledSession::ClientOutcome PooledSession::on_client(const pg::Frame& f, ServerState& server,
                                                      pg::Buffer& out) {
  ClientOutcome r;
  if (skipping_ && f.type != 'S') {
    // The server discards everything up to the client's Sync after an error in an
    // extended-query pipeline: no reply will come, and nothing of it takes effect.
    append(out, whole(f));
    return r;
  }
  switch (f.type) {
    case 'Q': {
      auto sql = pg::decode_query(f.body);
      if (!sql) return {true, {}};
      return on_query(*sql, server, out);
    }
    case 'P': {
      auto p = pg::decode_parse(f.body);
      if (!p) return {true, {}};
      // First in its request, outside a transaction: its success says it parses for any client
      // of this pool with the same settings (not only in the light of what this request did).
      const bool first = options_.known && at_rest();
      unsynced_ = true;
      if (options_.known && may_break_statements(p->query)) options_.known->clear();
      std::string query(p->query);
      if (may_affect_session(query)) {
        r.pin = note_text(*analyses_.get(query), server, out, false);
        if (r.pin && options_.pin_is_error) {
          // Every execution of this statement reports the refusal.
          query = pg::sql::raise_error(
              "0A000", std::string(to_string(*r.pin)) + " is not supported in transaction pooling",
              "use a database or user with pool mode session for this client, or set "
              "pool.pinning: pin");
        }
      }
      if (p->name.empty()) {
        if (query == p->query) {
          append(out, whole(f));
        } else {
          pg::encode_parse(out, "", query, p->param_types);
        }
        push({Expect::kReply});
        return r;
      }
      std::string name(p->name);
      if (auto it = statements_.find(name); it != statements_.end()) {
        // Postgres refuses to redefine a name (42P05): let the server refuse it, under the
        // existing statement's server name.
        ensure_prepared(it->second, server, out);
        pg::encode_parse(out, it->second->server_name, query, p->param_types);
        push({Expect::kReply});
        return r;
      }
      auto s = make_statement(query, std::move(p->param_types));
      statements_[name] = s;
      Expect e{Expect::kReply, false, s, name};
      if (first && !r.pin) e.known_key = known_key(*s);
      if (server.has(*s)) {
        // Prepared already (by another client, or under another name): parse it again so the
        // client gets its own ParseComplete, in order, and any error the server now finds in
        // it; under a scratch name, closed right after, so that a failing Parse (any Parse in
        // a failed transaction: 25P02) leaves the server's copy in place.
        pg::encode_parse(out, kProbeStatement, s->query, s->param_types);
        e.probe = true;
        push(std::move(e));
        pg::encode_close(out, {'S', kProbeStatement});
        push({Expect::kReply, true});
        return r;
      }
      for (auto& evicted : server.add(s)) close_on_server(std::move(evicted), out);
      pg::encode_parse(out, s->server_name, s->query, s->param_types);
      push(std::move(e));
      return r;
    }
    case 'B': {
      auto b = pg::decode_bind(f.body);
      if (!b) return {true, {}};
      unsynced_ = true;
      auto it =
          b->statement.empty() ? statements_.end() : statements_.find(std::string(b->statement));
      if (it == statements_.end()) {
        append(out, whole(f));  // unnamed, or unknown: the server reports 26000 itself
      } else {
        auto s = it->second;  // ensure_prepared may not invalidate it
        if (may_affect_session(s->query)) {
          // A prepared SET runs at each Bind, maybe long after its Parse (whose settings were
          // read back at a release since): what it changes is read back after this run too.
          auto pin = note_text(*analyses_.get(s->query), server, out, false);
          if (pin && !options_.pin_is_error) r.pin = pin;
        }
        ensure_prepared(s, server, out);
        pg::encode_bind_renamed(out, *b, s->server_name);
      }
      push({Expect::kReply});
      return r;
    }
    case 'D': {
      auto t = pg::decode_target(f.body);
      if (!t || (t->kind != 'S' && t->kind != 'P')) return {true, {}};
      unsynced_ = true;
      auto it = t->kind == 'S' && !t->name.empty() ? statements_.find(std::string(t->name))
                                                   : statements_.end();
      if (it == statements_.end()) {
        append(out, whole(f));
      } else {
        auto s = it->second;
        ensure_prepared(s, server, out);
        pg::encode_describe(out, {'S', s->server_name});
      }
      return r;  // its replies ('t', 'T', 'n') never look like '1', '2', '3'
    }
    case 'C': {
      auto t = pg::decode_target(f.body);
      if (!t || (t->kind != 'S' && t->kind != 'P')) return {true, {}};
      unsynced_ = true;
      if (t->kind == 'S' && !t->name.empty()) {
        // Other clients may share the server's copy; it stays until evicted.
        std::string name(t->name);
        StatementPtr closed;
        if (auto it = statements_.find(name); it != statements_.end()) {
          closed = std::move(it->second);
          statements_.erase(it);
        }
        pg::encode_close(out, {'S', kNoSuchStatement});
        Expect e{Expect::kReply, false, nullptr, std::move(name)};
        e.closed = std::move(closed);  // back if the server skips this Close
        push(std::move(e));
      } else {
        append(out, whole(f));
        push({Expect::kReply});
      }
      return r;
    }
    case 'S':
      skipping_ = false;
      unsynced_ = false;
      append(out, whole(f));
      push({Expect::kSync});
      return r;
    case 'F':
      append(out, whole(f));
      push({Expect::kSync});
      return r;
    default:
      append(out, whole(f));
      return r;
  }
}

void PooledSession::on_client_passed(char type) {
  // A Flush alone asks nothing of the server: a pipeline that starts with one may still move
  // (e.g. off a replica, for the write that follows).
  if (type == 'E') unsynced_ = true;
}

// ---- PooledSession: server → client --------------------------------------------------------

// Undoes what sluice recorded for a request the server skipped (an error came before it).
void PooledSession::drop_reply(const Expect& e, ServerState& server, bool on_server) {
  if (e.closed) statements_.try_emplace(e.client_name, e.closed);  // the Close did not happen
  if (e.evicted) server.restore(e.evicted);
  if (!e.prepared) return;
  if (on_server && !e.probe) server.forget(e.prepared->server_name);
  if (e.client_name.empty()) return;
  if (auto it = statements_.find(e.client_name);
      it != statements_.end() && it->second == e.prepared)
    statements_.erase(it);
}

PooledSession::Verdict PooledSession::on_server(const pg::Frame& f, ServerState& server) {
  switch (f.type) {
    case '1':
    case '2':
    case '3': {
      if (expect_empty() || front().kind != Expect::kReply) return Verdict::kDesync;
      bool injected = front().injected;
      if (f.type == '1' && front().prepared && !front().probe)
        server.restore(front().prepared);  // it is there
      if (f.type == '1' && !front().known_key.empty())
        options_.known->add(std::move(front().known_key));
      pop_front();
      return injected ? Verdict::kDrop : Verdict::kForward;
    }
    case 'E': {
      if (swallowing()) {
        front().failed = true;
        return Verdict::kDrop;
      }
      // The server skips to the next Sync: the replies before it will not come.
      const bool extended = !expect_empty() && front().kind == Expect::kReply;
      std::size_t skipped = head_;
      while (skipped < expect_.size() && expect_[skipped].kind == Expect::kReply) ++skipped;
      // Newest first: a Parse skipped after its Close leaves the Close's statement in place.
      for (std::size_t i = skipped; i > head_; --i) {
        auto& e = expect_[i - 1];
        if (e.prepared && !e.probe && i - 1 > head_) {
          // A re-parse (Close + Parse of one statement) skipped whole changed nothing on the
          // server: whether its copy exists is what sluice knows now (a reply before this error
          // settled an earlier Parse of it either way).
          auto& close = expect_[i - 2];
          if (close.evicted && close.evicted->server_name == e.prepared->server_name) {
            close.evicted.reset();
            drop_reply(e, server, false);
            continue;
          }
        }
        drop_reply(e, server);
      }
      for (std::size_t n = skipped - head_; n > 0; --n) pop_front();
      if (!expect_empty()) {
        front().failed = true;
      } else if (extended || unsynced_) {
        // The client's Sync has not come yet: what it sends until then is discarded too.
        skipping_ = true;
      }
      return Verdict::kForward;
    }
    case 'Z': {
      auto status = pg::decode_ready_for_query(f.body);
      if (!status || expect_empty() || front().kind != Expect::kSync) return Verdict::kDesync;
      auto e = std::move(front());
      pop_front();
      if (e.injected) {
        if (e.failed && !e.sql_name.empty()) server.sql_prepared.erase(e.sql_name);
        return Verdict::kDrop;
      }
      --pending_;
      tx_status_ = *status;
      return Verdict::kForward;
    }
    default:
      return swallowing() ? Verdict::kDrop : Verdict::kForward;
  }
}

// ---- a client that holds no server connection -------------------------------------------

std::string PooledSession::known_key(const PreparedStatement& s) const {
  std::string key = options_.scope;
  key += '\0';
  for (const auto& [name, value] : settings_) {
    key += name;
    key += '=';
    key += value;
    key += '\0';
  }
  key += '\0';
  for (auto t : s.param_types) {
    key += std::to_string(t);
    key += ',';
  }
  key += '\0';
  key += s.query;
  return key;
}

PooledSession::LocalAnswer PooledSession::answer_detached(pg::Span data, pg::Buffer& out) {
  constexpr std::size_t kMaxRequest = 64 * 1024;
  LocalAnswer r;
  if (!options_.known || !at_rest()) return r;
  // First pass: the request must be whole and every message answerable.
  std::vector<pg::Frame> frames;
  std::size_t pos = 0;
  for (;;) {
    auto next = pg::next_frame(data.subspan(pos), kMaxRequest);
    if (auto* more = std::get_if<pg::NeedMore>(&next)) {
      if (frames.empty() || pos + more->bytes > kMaxRequest) return r;
      r.kind = LocalAnswer::kNeedMore;
      r.need = more->bytes;
      return r;
    }
    auto* f = std::get_if<pg::Frame>(&next);
    if (!f) return r;  // malformed: the relay reports it
    pos += f->size;
    if (f->type == 'S') break;
    if (f->type == 'P') {
      auto p = pg::decode_parse(f->body);
      if (!p || p->name.empty() || statements_.contains(std::string(p->name)) ||
          may_affect_session(p->query))
        return r;
      for (const auto& earlier : frames) {  // a name parsed twice: the server says 42P05
        if (earlier.type == 'P' && pg::decode_parse(earlier.body)->name == p->name) return r;
      }
      const PreparedStatement probe{std::string(p->query), p->param_types, {}};
      if (!options_.known->contains(known_key(probe))) return r;
    } else if (f->type == 'C') {
      auto t = pg::decode_target(f->body);
      if (!t || (t->kind != 'S' && t->kind != 'P')) return r;
    } else {
      return r;
    }
    frames.push_back(*f);
  }
  // Second pass: what the server would have done for this client.
  for (const auto& f : frames) {
    if (f.type == 'P') {
      auto p = pg::decode_parse(f.body);
      statements_[std::string(p->name)] = make_statement(p->query, std::move(p->param_types));
      pg::encode_parse_complete(out);
    } else {
      auto t = pg::decode_target(f.body);
      if (t->kind == 'S') statements_.erase(std::string(t->name));  // a portal: none is open
      pg::encode_close_complete(out);
    }
  }
  pg::encode_ready_for_query(out, 'I');
  r.kind = LocalAnswer::kAnswered;
  r.consumed = pos;
  return r;
}

// ---- attach / release ----------------------------------------------------------------------

std::set<std::string> PooledSession::capture_names() const {
  if (!touched_.contains("client_encoding")) return touched_;
  std::set<std::string> names = touched_;
  for (const auto& [name, value] : settings_) names.insert(name);
  return names;
}

void PooledSession::apply_capture(const Rows& rows, ServerState& server) {
  for (const auto& row : rows) {
    if (row.size() != 2 || !row[0]) continue;
    const auto& name = *row[0];
    if (row[1]) {
      settings_[name] = *row[1];
      server.settings[name] = *row[1];
    } else {
      settings_.erase(name);
      server.settings.erase(name);
    }
  }
  touched_.clear();
}

void PooledSession::apply_present(const std::set<std::string>& present, ServerState& server) {
  for (const auto& name : uncertain_) {
    if (present.contains(name)) continue;
    sql_prepared_.erase(name);
    server.sql_prepared.erase(name);
  }
  uncertain_.clear();
}

}  // namespace sluice::routing
