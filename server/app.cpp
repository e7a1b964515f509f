// The process: worker event loops, the Postgres listener, signals, reload, drain and exit.
#include "server/app.hpp"

#include <spdlog/spdlog.h>

#include <csignal>
#include <thread>

#include "server/client_session.hpp"
#include "server/logging.hpp"

namespace sluice::server {

void Runtime::install(std::shared_ptr<const config::Config> cfg) {
  std::shared_ptr<ssl::context> client;
  if (!cfg->tls.cert_file.empty()) {
    client = std::make_shared<ssl::context>(ssl::context::tls_server);
    client->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                        ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    client->use_certificate_chain_file(cfg->tls.cert_file);
    client->use_private_key_file(cfg->tls.key_file, ssl::context::pem);
  }
  std::shared_ptr<ssl::context> server;
  if (cfg->tls.server_tls != config::ServerTls::kDisable) {
    server = std::make_shared<ssl::context>(ssl::context::tls_client);
    server->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                        ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    if (cfg->tls.server_tls == config::ServerTls::kVerifyFull) {
      server->load_verify_file(cfg->tls.server_ca_file);
      server->set_verify_mode(ssl::verify_peer);
    } else {
      server->set_verify_mode(ssl::verify_none);
    }
  }
  std::lock_guard lock(mu_);
  config_ = std::move(cfg);
  client_tls_ = std::move(client);
  server_tls_ = std::move(server);
}

App::App(std::string config_path, std::shared_ptr<const config::Config> cfg)
    : config_path_(std::move(config_path)), rt_(std::make_shared<Runtime>()) {
  rt_->install(cfg);
  for (std::uint32_t i = 0; i < cfg->workers; ++i)
    loops_.push_back(std::make_unique<asio::io_context>(1));

  auto& ctx = *loops_.front();
  tcp::resolver resolver(ctx);
  auto endpoints =
      resolver.resolve(cfg->listen_postgres.host, std::to_string(cfg->listen_postgres.port));
  auto ep = endpoints.begin()->endpoint();
  acceptor_.emplace(ctx);  // lives on loop 0; closed before the loops are destroyed
  acceptor_->open(ep.protocol());
  acceptor_->set_option(tcp::acceptor::reuse_address(true));
  acceptor_->bind(ep);
  acceptor_->listen(asio::socket_base::max_listen_connections);
}

int App::run() {
  auto cfg = rt_->config();
  std::signal(SIGPIPE, SIG_IGN);
  auto& main_loop = *loops_.front();
  asio::co_spawn(main_loop, accept_loop(), log_exceptions("listener"));
  asio::co_spawn(main_loop, signal_loop(), log_exceptions("signal handler"));
  asio::co_spawn(main_loop, maintenance_loop(), log_exceptions("maintenance"));

  auto ep = acceptor_->local_endpoint();
  spdlog::info(
      "sluice {} listening on {}:{} (postgres): {} worker(s), {} database(s), auth={}, "
      "pool.mode={}, tls={}",
      SLUICE_VERSION, ep.address().to_string(), ep.port(), cfg->workers, cfg->databases.size(),
      config::to_string(cfg->auth_type), config::to_string(cfg->pool.mode),
      cfg->tls.cert_file.empty() ? "off" : "on");

  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  for (auto& l : loops_) guards.push_back(asio::make_work_guard(*l));
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < loops_.size(); ++i)
    threads.emplace_back([&l = *loops_[i]] { l.run(); });
  main_loop.run();  // returns when drain() stops it
  for (auto& l : loops_) l->stop();
  for (auto& t : threads) t.join();
  // Tear down while every loop object still exists: idle server connections first, then the
  // loops, whose destruction frees the remaining session frames (their leases close inline).
  rt_->pools.close_for_exit();
  guards.clear();
  acceptor_.reset();
  loops_.clear();
  spdlog::info("sluice stopped");
  return 0;
}

awaitable<void> App::accept_loop() {
  for (;;) {
    auto& loop = *loops_[next_loop_++ % loops_.size()];
    auto [ec, socket] = co_await acceptor_->async_accept(loop.get_executor(), use_nothrow);
    if (ec == asio::error::operation_aborted || rt_->stopping) co_return;
    if (ec) {
      spdlog::error("accept failed: {}", ec.message());  // e.g. out of file descriptors
      co_await sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    asio::co_spawn(loop, run_client_session(std::move(socket), rt_),
                   log_exceptions("client session"));
  }
}

awaitable<void> App::signal_loop() {
  asio::signal_set signals(co_await asio::this_coro::executor, SIGINT, SIGTERM, SIGHUP);
  for (;;) {
    auto [ec, sig] = co_await signals.async_wait(use_nothrow);
    if (ec) co_return;
    if (sig == SIGHUP) {
      reload();
      continue;
    }
    if (rt_->stopping) {
      spdlog::warn("second stop signal: closing every client now");
      force_stop_ = true;
      continue;
    }
    spdlog::info("received {}: no new clients; waiting up to {} ms for transactions to finish",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT", rt_->config()->shutdown_timeout.count());
    rt_->stopping = true;
    error_code ignored;
    acceptor_->close(ignored);
    asio::co_spawn(co_await asio::this_coro::executor, drain(), log_exceptions("drain"));
  }
}

awaitable<void> App::drain() {
  auto deadline = Clock::now() + rt_->config()->shutdown_timeout;
  auto hard_deadline = deadline + std::chrono::seconds(5);
  for (;;) {
    auto sessions = rt_->sessions();
    if (sessions.empty() || Clock::now() > hard_deadline) break;
    bool all = force_stop_ || Clock::now() >= deadline;
    for (auto& h : sessions) {
      if (all || h->idle)
        asio::post(h->ex, [h] {
          if (h->kill) h->kill();
        });
    }
    co_await sleep_for(std::chrono::milliseconds(50));
  }
  for (auto& l : loops_) l->stop();  // run() then closes the pools' idle connections inline
}

// Once a second: close expired idle server connections and keep pool.min_pool_size open for
// every configured (database, user).
awaitable<void> App::maintenance_loop() {
  auto ex = co_await asio::this_coro::executor;
  while (!rt_->stopping) {
    auto cfg = rt_->config();
    for (auto& pool : rt_->pools.all())
      pool->close_expired(cfg->pool.server_idle_timeout, cfg->pool.server_lifetime);
    if (cfg->pool.min_pool_size > 0) {
      for (const auto& [db_name, db] : cfg->databases) {
        for (const auto& [user_name, user] : cfg->users) {
          auto pool = rt_->pools.get(*cfg, db, user, rt_->server_tls());
          asio::co_spawn(ex, pool->warm(PoolLimits::from(*cfg, db, user), cfg->pool.min_pool_size),
                         log_exceptions("pool warm-up"));
        }
      }
    }
    co_await sleep_for(std::chrono::seconds(1));
  }
}

void App::reload() {
  try {
    auto old_cfg = rt_->config();
    auto cfg = config::load_file(config_path_);
    rt_->install(cfg);
    setup_logging(cfg->log);
    if (cfg->listen_postgres.to_string() != old_cfg->listen_postgres.to_string() ||
        cfg->workers != old_cfg->workers)
      spdlog::warn("reload: listen addresses and workers change only on restart");
    spdlog::info("reloaded {}: {} database(s), {} user(s); new clients use it", config_path_,
                 cfg->databases.size(), cfg->users.size());
  } catch (const std::exception& e) {
    spdlog::error("reload failed, keeping the running configuration: {}", e.what());
  }
}

}  // namespace sluice::server
