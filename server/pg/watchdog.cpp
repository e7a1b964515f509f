// query_timeout, idle_transaction_timeout and client_idle_timeout for one client.
#include "server/pg/session.hpp"

namespace sluice::server::pgsession {

// Enforces pool.query_timeout, idle_transaction_timeout and client_idle_timeout. Completes only
// when one fires (the relay then ends); never completes when all three are off.
awaitable<Outcome> ClientSession::watchdog() {
  const auto& p = cfg_->pool;
  auto ex = co_await asio::this_coro::executor;
  std::vector<Clock::duration> on;
  for (auto d : {p.query_timeout, p.idle_transaction_timeout, p.client_idle_timeout}) {
    if (d.count() > 0) on.push_back(d);
  }
  if (on.empty()) {
    asio::steady_timer forever(ex, Clock::time_point::max());
    co_await forever.async_wait(use_nothrow);
    co_return "cancelled";
  }
  // Check often enough to act within a quarter of the shortest timeout (50 ms .. 1 s).
  auto tick = std::clamp<Clock::duration>(*std::min_element(on.begin(), on.end()) / 4,
                                          std::chrono::milliseconds(50), std::chrono::seconds(1));
  auto expired = [](Clock::duration limit, Clock::time_point since) {
    return limit.count() > 0 && Clock::now() - since >= limit;
  };
  for (;;) {
    asio::steady_timer t(ex, tick);
    auto [ec] = co_await t.async_wait(use_nothrow);
    if (ec) co_return "cancelled";
    if (pending() > 0 && expired(p.query_timeout, request_started_)) {
      server_failed_ = true;  // mid-request: the server connection is never reused
      cancel_server_ = true;  // after the relay stops, so no reply overtakes our error
      close_error_ =
          std::make_unique<PgError>(PgError{"57014",
                                            "canceling statement due to query_timeout",
                                            {},
                                            "the request ran longer than pool.query_timeout"});
      co_return "query timeout";
    }
    if (pending() == 0 && tx_status() != 'I' &&
        expired(p.idle_transaction_timeout, last_activity_)) {
      server_failed_ = true;  // closing it rolls the transaction back on the server
      close_error_ = std::make_unique<PgError>(
          PgError{"25P03",
                  "terminating connection due to idle-in-transaction timeout",
                  {},
                  "transactions idle longer than pool.idle_transaction_timeout are ended"});
      co_return "idle transaction timeout";
    }
    if (pending() == 0 && tx_status() == 'I' && expired(p.client_idle_timeout, last_activity_)) {
      close_error_ = std::make_unique<PgError>(
          PgError{"57P05",
                  "terminating connection due to idle-session timeout",
                  {},
                  "clients idle longer than pool.client_idle_timeout are closed"});
      co_return "client idle timeout";
    }
  }
}

}  // namespace sluice::server::pgsession
