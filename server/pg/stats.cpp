// Per-request statistics, pins and the lexer check of one client.
#include "server/pg/session.hpp"

namespace sluice::server::pgsession {

// One request answered (ReadyForQuery): statement and transaction counters, timings, insights.
void ClientSession::finish_request(const routing::Completed& c, Clock::time_point now) {
  const auto route = node_ >= 0 ? routing::Route::kReplica : routing::Route::kPrimary;
  const auto& k = *counters_;
  if (c.statements > 0) k.queries[static_cast<std::size_t>(route)]->inc(c.statements);
  k.query_us->inc(static_cast<std::uint64_t>(c.seconds * 1e6));
  k.query_duration->observe(c.seconds);
  if (!xact_open_) {
    xact_open_ = true;
    xact_start_ =
        now - std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(c.seconds));
  }
  if (c.tx_status == 'I') {
    xact_open_ = false;
    k.transactions->inc();
    k.xact_us->inc(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(now - xact_start_).count()));
  }
  handle_->request_time = std::time(nullptr);
  if (!c.entry) return;
  const auto& in = cfg_->insights;
  const double threshold = std::chrono::duration<double>(in.slow_query_threshold).count();
  auto slow = rt_->obs.insights.record(*c.entry, c.seconds, c.rows, c.failed, route, now, threshold,
                                       in.slow_log_interval);
  if (threshold > 0 && c.seconds >= threshold) rt_->obs.count_slow(db_name_);
  if (slow) {
    spdlog::warn(
        "slow query: {:.1f} ms (insights.slow_query_threshold {} ms) db={} user={} "
        "fingerprint={} rows={}{}: {}",
        c.seconds * 1e3, in.slow_query_threshold.count(), db_name_, user_name_, c.entry->id, c.rows,
        slow->calls_since_last > 1
            ? fmt::format(" ({} slow calls since the last report)", slow->calls_since_last)
            : std::string(),
        c.entry->normalized);
    if (in.explain && c.entry->explain_candidate && !user_->server_password.empty()) {
      // Only a text this client's identity sent runs with its credentials.
      auto sample = rt_->obs.insights.sample(
          *c.entry, routing::sample_identity(db_name_, user_->server_user));
      if (sample && rt_->obs.insights.take_explain(*c.entry, now, in.slow_log_interval)) {
        ExplainJob job;
        job.entry = c.entry;
        job.sample = std::move(*sample);
        job.server.host = db_->primary.host;
        job.server.port = db_->primary.port;
        job.server.dbname = db_->primary.dbname;
        job.server.user = user_->server_user;
        job.server.password = user_->server_password;
        routing::apply_server_tls(job.server, cfg_->tls);
        job.seq_scan_rows = in.seq_scan_rows;
        rt_->obs.explainer.submit(std::move(job));
      }
    }
  }
}

// A server message forwarded to the client: statements, errors and request ends.
void ClientSession::note_server_message(const pg::Frame& f, Clock::time_point now) {
  if (f.type == 'E') {
    if (auto e = pg::decode_error_fields(f.body)) rt_->obs.count_error(e->get('C'));
  }
  if (auto done = tracker_.on_server(f, now)) finish_request(*done, now);
}

void ClientSession::note_pin(routing::Pin pin) {
  rt_->obs.count_pin(routing::to_string(pin));
  if (cfg_->pool.pin_is_error) {
    spdlog::info("client {} user={} db={}: refused {} (pool.pinning: error)", peer_, user_name_,
                 db_name_, routing::to_string(pin));
    return;
  }
  if (pin == routing::Pin::kLexer) {
    lexer_mismatch("it set standard_conforming_strings or client_encoding");
    return;
  }
  if (!pinned_)
    spdlog::info("client {} user={} db={}: pinned to its server connection ({})", peer_, user_name_,
                 db_name_, routing::to_string(pin));
  pinned_ = true;
}

// The server may lex this client's SQL unlike libpg_query (standard_conforming_strings off, a
// client-only encoding), so sluice's analyses of it may be wrong: from now on it keeps its
// server connection (no routing, no replays; a pinned client is never cached) and its
// statements with a backslash count as writing anything. Pinned even with pool.pinning: error
// when the server reported it: that has happened already. Never lifted for this client.
void ClientSession::lexer_mismatch(const std::string& why) {
  if (lexer_suspect_) return;
  lexer_suspect_ = true;
  spdlog::info(
      "client {} user={} db={}: {}: sluice's parser cannot read its SQL as the server "
      "does; {}",
      peer_, user_name_, db_name_, why,
      ps_ ? "pinned to its server connection, never cached"
          : "its statements with a backslash count as writing anything");
  if (ps_) pinned_ = true;
}

// A client message that may make the server lex what follows unlike libpg_query (the message
// itself is lexed before it runs: its analysis is right).
bool ClientSession::changes_lexer(std::string_view sql) {
  if (!routing::may_affect_session(sql)) return false;
  auto a = rt_->analyses.get(sql);
  return std::find(a->pins.begin(), a->pins.end(), routing::Pin::kLexer) != a->pins.end();
}

}  // namespace sluice::server::pgsession
