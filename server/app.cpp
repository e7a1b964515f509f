// The process: worker event loops, the Postgres listener, signals, reload, drain and exit.
#include "server/app.hpp"

#include <spdlog/spdlog.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <thread>

#include "server/client_session.hpp"
#include "server/logging.hpp"
#include "server/mongo.hpp"
#include "server/notify.hpp"
#include "server/observability.hpp"
#include "server/version.hpp"
#include "server/wal_follower.hpp"

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
  routes.rebuild(*cfg);
  std::lock_guard lock(mu_);
  config_ = std::move(cfg);
  client_tls_ = std::move(client);
  server_tls_ = std::move(server);
}

void Runtime::install_roles(std::shared_ptr<const config::Config> cfg) {
  routes.rebuild(*cfg);
  {
    std::lock_guard lock(mu_);
    config_ = std::move(cfg);
  }
  ++generation;
}

namespace {

// auth_type: trust lets anyone who reaches the listener in as any user without a password (the
// admin console too): fine on loopback, worth a warning at start and reload anywhere else.
void warn_if_trust_exposed(const config::Config& cfg, const asio::ip::address& at) {
  if (cfg.auth_type != config::AuthType::kTrust) return;
  bool loopback = at.is_loopback() ||
                  (at.is_v6() && at.to_v6().is_v4_mapped() &&
                   asio::ip::make_address_v4(asio::ip::v4_mapped, at.to_v6()).is_loopback());
  if (loopback) return;
  spdlog::warn(
      "auth_type: trust on {} (listen.postgres), which is not a loopback address: anyone who "
      "can reach it logs in as any user without a password; use scram-sha-256 or md5, or "
      "listen on 127.0.0.1",
      at.to_string());
}

routing::RoutingPolicy policy_of(const config::Routing& r) {
  routing::RoutingPolicy p;
  p.balance = r.load_balancing;
  p.primary_reads = r.primary_reads;
  p.error_when_all_banned = r.error_when_all_banned;
  p.max_lag_bytes = r.max_replica_lag_bytes;
  p.max_lag_seconds = std::chrono::duration<double>(r.max_replica_lag).count();
  p.ban_time = r.ban_time;
  p.primary_weight = r.primary_weight;
  return p;
}

}  // namespace

void Routes::rebuild(const config::Config& cfg) {
  std::map<std::string, std::shared_ptr<routing::ReplicaSet>> next;
  for (const auto& [name, db] : cfg.databases) {
    if (!cfg.routing.enabled || db.replicas.empty()) continue;
    std::vector<routing::ReplicaSet::Node> nodes;
    for (const auto& r : db.replicas)
      nodes.push_back({config::Endpoint{r.host, r.port}.to_string(), r.weight});
    auto set = std::make_shared<routing::ReplicaSet>(std::move(nodes), policy_of(cfg.routing));
    if (auto old = get(name)) set->adopt(*old);
    next.emplace(name, std::move(set));
  }
  std::lock_guard lock(mu_);
  sets_ = std::move(next);
}

App::App(std::string config_path, std::shared_ptr<const config::Config> cfg)
    : config_path_(std::move(config_path)), rt_(std::make_shared<Runtime>()) {
  rt_->install(cfg);
  Runtime* rt = rt_.get();
  rt_->failover.set_file(cfg, [rt](auto derived) { rt->install_roles(std::move(derived)); });
  for (std::uint32_t i = 0; i < cfg->workers; ++i)
    loops_.push_back(std::make_unique<asio::io_context>(1));
  // Without Redis, read consistency global still needs the relation catalogs the cache keeps.
  const bool marks = cfg->routing.enabled &&
                     cfg->routing.read_consistency == config::Routing::Consistency::kGlobal &&
                     std::any_of(cfg->databases.begin(), cfg->databases.end(), [](const auto& d) {
                       return !d.second.replicas.empty() || d.second.hosts.size() > 1;
                     });
  if (!cfg->cache.redis.empty() || marks) rt_->cache = std::make_unique<cache::Cache>(cfg->cache);

  auto& ctx = *loops_.front();
  tcp::resolver resolver(ctx);
  auto endpoints =
      resolver.resolve(cfg->listen_postgres.host, std::to_string(cfg->listen_postgres.port));
  auto ep = endpoints.begin()->endpoint();
  acceptor_.emplace(ctx);  // lives on loop 0; closed before the loops are destroyed
  acceptor_->open(ep.protocol());
  acceptor_->set_option(tcp::acceptor::reuse_address(true));
  if (cfg->so_reuseport) {
    // A second sluice can bind the same port: the new one takes connections while the old one
    // drains (SHUTDOWN WAIT_FOR_CLIENTS), for restarts without refused connections.
    using reuse_port = asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;
    acceptor_->set_option(reuse_port(true));
  }
  error_code ec;
  acceptor_->bind(ep, ec);
  if (!ec) acceptor_->listen(asio::socket_base::max_listen_connections, ec);
  if (!ec) pg_address_ = ep.address();
  if (ec)
    throw std::runtime_error("listen.postgres " + cfg->listen_postgres.to_string() + ": " +
                             ec.message() +
                             " (another process has the port? change listen.postgres)");
  if (cfg->mongo) {
    const auto& at = cfg->mongo->listen;
    auto mep = resolver.resolve(at.host, std::to_string(at.port)).begin()->endpoint();
    mongo_acceptor_.emplace(ctx);
    mongo_acceptor_->open(mep.protocol());
    mongo_acceptor_->set_option(tcp::acceptor::reuse_address(true));
    mongo_acceptor_->bind(mep, ec);
    if (!ec) mongo_acceptor_->listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
      throw std::runtime_error("listen.mongo " + at.to_string() + ": " + ec.message() +
                               " (another process has the port? change listen.mongo)");
    rt_->mongo = std::make_shared<MongoProxy>(*rt_, *cfg->mongo, loops_.size());
  }
  if (cfg->listen_http) {
    try {
      http_ = std::make_unique<HttpServer>(rt_, *cfg->listen_http);
    } catch (const std::exception& e) {
      throw std::runtime_error("listen.http " + cfg->listen_http->to_string() + ": " + e.what() +
                               " (change listen.http, or set it to off)");
    }
  }
  rt_->obs.add_runtime_collectors(*rt_);
  rt_->reload = [this] { return reload(); };  // from the admin console, on any loop
  rt_->stop = [this](StopMode mode) {
    asio::post(*loops_.front(), [this, mode] { begin_stop(mode); });
  };
}

// The coroutines of loop 0 (listeners, signals, maintenance), every loop's heartbeat, the health
// monitor and the HTTP endpoint.
void App::start_services(const config::Config& cfg) {
  auto& main_loop = *loops_.front();
  asio::co_spawn(main_loop, accept_loop(), log_exceptions("listener"));
  if (rt_->mongo) {
    rt_->mongo->start(main_loop.get_executor());
    asio::co_spawn(main_loop, accept_mongo(), log_exceptions("mongo listener"));
    auto mep = mongo_acceptor_->local_endpoint();
    spdlog::info("mongo listener on {}:{}: {} server(s){}", mep.address().to_string(), mep.port(),
                 cfg.mongo->uri.empty() ? cfg.mongo->servers.size() : 0,
                 cfg.mongo->uri.empty() ? " (static roles)" : " (discovered from mongo.uri)");
  }
  // Registered before the listeners say they listen: a SIGHUP sent the moment a supervisor sees
  // that line is queued for signal_loop(), not the default action (which ends the process).
  signals_.emplace(main_loop, SIGINT, SIGTERM, SIGHUP);
  asio::co_spawn(main_loop, signal_loop(), log_exceptions("signal handler"));
  asio::co_spawn(main_loop, maintenance_loop(), log_exceptions("maintenance"));
  rt_->loops = static_cast<std::uint32_t>(loops_.size());
  for (std::uint32_t i = 0; i < loops_.size(); ++i)
    asio::co_spawn(*loops_[i], heartbeat(i), log_exceptions("heartbeat"));
  watch_backends();
  feed_routes();
  rt_->obs.monitor.start();
  rt_->accepting = true;
  if (http_) {
    http_->start();
    auto hep = http_->local_endpoint();
    spdlog::info("http endpoint on {}:{}: /metrics /healthz /readyz /status",
                 hep.address().to_string(), hep.port());
  }
}

// The query cache's connections, one set per loop.
void App::start_cache(const config::Config& cfg) {
  if (!rt_->redis_cache()) return;
  std::vector<asio::any_io_executor> executors;
  for (auto& l : loops_) executors.push_back(l->get_executor());
  rt_->cache->start(executors);
  spdlog::info(
      "cache: redis {}, default_ttl {} ms, max_entry_bytes {}, l1_bytes {}{}",
      cache::parse_redis_url(cfg.cache.redis, nullptr).value_or(cache::RedisEndpoint{}).display(),
      cfg.cache.default_ttl.count(), cfg.cache.max_entry_bytes, cfg.cache.l1_bytes,
      cfg.cache.enabled ? "" : " (cache.enabled: false)");
}

// After the loops ran out: everything that holds sockets or threads, while the loops still exist.
void App::stop_services() {
  if (http_) http_->stop();
  if (rt_->mongo) {
    rt_->mongo->stop();
    rt_->mongo->close_for_exit();
  }
  rt_->obs.monitor.stop();
  rt_->obs.explainer.stop();
  if (rt_->follower) rt_->follower->stop();
  // Tear down while every loop object still exists: idle server connections first, then the
  // loops, whose destruction frees the remaining session frames (their leases close inline).
  rt_->pools.close_for_exit();
  if (rt_->cache) rt_->cache->close_for_exit();  // its sockets must not outlive the loops
}

int App::run() {
  auto cfg = rt_->config();
  std::signal(SIGPIPE, SIG_IGN);
  start_services(*cfg);
  auto ep = acceptor_->local_endpoint();
  spdlog::info(
      "sluice {} listening on {}:{} (postgres): {} worker(s), {} database(s), auth={}, "
      "pool.mode={}, tls={}",
      version(), ep.address().to_string(), ep.port(), cfg->workers, cfg->databases.size(),
      config::to_string(cfg->auth_type), config::to_string(cfg->pool.mode),
      cfg->tls.cert_file.empty() ? "off" : "on");
  warn_if_trust_exposed(*cfg, pg_address_);
  start_cache(*cfg);
  start_follower(*cfg);

  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  for (auto& l : loops_) guards.push_back(asio::make_work_guard(*l));
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < loops_.size(); ++i)
    threads.emplace_back([&l = *loops_[i], i] {
      cache::Cache::set_loop_index(i);
      l.run();
    });
  cache::Cache::set_loop_index(0);
  // Type=notify units: the listeners are bound and every loop is about to run.
  if (!notify_service_manager(fmt::format("READY=1\nMAINPID={}\nSTATUS=accepting clients on {}:{}",
                                          ::getpid(), ep.address().to_string(), ep.port())))
    spdlog::warn("could not tell the service manager that sluice is ready ($NOTIFY_SOCKET)");
  loops_.front()->run();  // returns when drain() stops it
  for (auto& l : loops_) l->stop();
  for (auto& t : threads) t.join();
  stop_services();
  guards.clear();
  acceptor_.reset();
  mongo_acceptor_.reset();
  signals_.reset();
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

awaitable<void> App::accept_mongo() {
  for (;;) {
    const auto index = next_loop_++ % loops_.size();
    auto& loop = *loops_[index];
    auto [ec, socket] = co_await mongo_acceptor_->async_accept(loop.get_executor(), use_nothrow);
    if (ec == asio::error::operation_aborted || rt_->stopping) co_return;
    if (ec) {
      spdlog::error("mongo accept failed: {}", ec.message());
      co_await sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    asio::co_spawn(loop, rt_->mongo->session(std::move(socket), index),
                   log_exceptions("mongo session"));
  }
}

awaitable<void> App::signal_loop() {
  for (;;) {
    auto [ec, sig] = co_await signals_->async_wait(use_nothrow);
    if (ec) co_return;
    if (sig == SIGHUP) {
      reload();
      continue;
    }
    spdlog::info("received {}", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    begin_stop(StopMode::kDrain);
  }
}

void App::begin_stop(StopMode mode) {
  if (rt_->stopping) {
    if (mode == StopMode::kWaitForClients) return;
    spdlog::warn("stopping again: closing every client now");
    force_stop_ = true;
    return;
  }
  switch (mode) {
    case StopMode::kDrain:
      spdlog::info("no new clients; waiting up to {} ms for transactions to finish",
                   rt_->config()->shutdown_timeout.count());
      break;
    case StopMode::kImmediate:
      spdlog::info("SHUTDOWN: closing every client now");
      force_stop_ = true;
      break;
    case StopMode::kWaitForClients:
      spdlog::info(
          "SHUTDOWN WAIT_FOR_CLIENTS: no new clients; exiting when the connected ones have left");
      break;
  }
  notify_service_manager("STOPPING=1\nSTATUS=draining");
  rt_->stopping = true;
  rt_->accepting = false;
  error_code ignored;
  acceptor_->close(ignored);
  if (mongo_acceptor_) mongo_acceptor_->close(ignored);
  asio::co_spawn(*loops_.front(), drain(mode), log_exceptions("drain"));
}

awaitable<void> App::drain(StopMode mode) {
  auto deadline = Clock::now() + rt_->config()->shutdown_timeout;
  auto hard_deadline = deadline + std::chrono::seconds(5);
  for (;;) {
    auto sessions = rt_->sessions();
    if (mode == StopMode::kWaitForClients && !force_stop_) {
      // Only clients of the databases count: admin consoles are closed at the end.
      bool clients_left = std::any_of(sessions.begin(), sessions.end(),
                                      [](const auto& h) { return !h->snapshot().admin; });
      if (clients_left) {
        co_await sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      force_stop_ = true;  // close the admin consoles now
    }
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
  // The WAL follower gives its lease back through loop 0 (the next instance follows at once).
  if (rt_->follower) {
    rt_->follower->request_stop();
    for (int i = 0; i < 100 && !rt_->follower->stopped(); ++i)
      co_await sleep_for(std::chrono::milliseconds(10));
  }
  for (auto& l : loops_) l->stop();  // run() then closes the pools' idle connections inline
}

// Each loop notes every 250 ms that it runs; /healthz fails when one stops doing so. Under a
// systemd watchdog (WatchdogSec=), loop 0 pings it at half the interval while /healthz would
// answer 200: a stalled loop gets sluice restarted, as a failing liveness probe does in Kubernetes.
awaitable<void> App::heartbeat(std::uint32_t loop) {
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer t(ex);
  const auto watchdog = loop == 0 ? watchdog_interval() : std::nullopt;
  auto last_ping = Clock::time_point{};
  for (;;) {
    rt_->heartbeats[loop] = Clock::now().time_since_epoch().count();
    if (watchdog && Clock::now() - last_ping >= *watchdog / 2 && liveness(*rt_).ok) {
      notify_service_manager("WATCHDOG=1");
      last_ping = Clock::now();
    }
    t.expires_after(std::chrono::milliseconds(250));
    auto [ec] = co_await t.async_wait(use_nothrow);
    if (ec) co_return;
  }
}

// Once a second: close expired idle server connections and keep pool.min_pool_size open for
// every configured (database, user).
awaitable<void> App::maintenance_loop() {
  auto ex = co_await asio::this_coro::executor;
  auto period_start = Clock::now();
  while (!rt_->stopping) {
    auto cfg = rt_->config();
    if (Clock::now() - period_start >= cfg->stats_period) {
      rt_->obs.roll_stats_period(
          std::chrono::duration<double>(Clock::now() - period_start).count());
      period_start = Clock::now();
    }
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
    if (rt_->cache && rt_->cache->unbumped() > 0) co_await rt_->cache->retry_bumps();
    co_await sleep_for(std::chrono::seconds(1));
  }
}

std::string App::reload() {
  std::lock_guard lock(reload_mu_);  // SIGHUP and RELOAD may race
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  notify_service_manager(
      fmt::format("RELOADING=1\nMONOTONIC_USEC={}",
                  static_cast<std::int64_t>(now.tv_sec) * 1'000'000 + now.tv_nsec / 1000));
  // READY=1 again whether the file loaded or not: the old configuration keeps running.
  struct Ready {
    ~Ready() { notify_service_manager("READY=1"); }
  } ready;
  try {
    auto old_cfg = rt_->config();
    auto cfg = config::load_file(config_path_);
    rt_->install(cfg);
    Runtime* rt = rt_.get();
    rt_->failover.set_file(cfg, [rt](auto derived) { rt->install_roles(std::move(derived)); });
    ++rt_->generation;  // sessions pick the new limits and backends up at their next checkout
    setup_logging(cfg->log);
    if (old_cfg->auth_type != config::AuthType::kTrust) warn_if_trust_exposed(*cfg, pg_address_);
    watch_backends();
    auto http = [](const config::Config& c) {
      return c.listen_http ? c.listen_http->to_string() : std::string("off");
    };
    auto mongo = [](const config::Config& c) {
      if (!c.mongo) return std::string("off");
      std::string s = c.mongo->listen.to_string() + " " + c.mongo->uri;
      for (const auto& m : c.mongo->servers) s += " " + m.address() + (m.primary ? "p" : "s");
      return s;
    };
    if (mongo(*cfg) != mongo(*old_cfg))
      spdlog::warn(
          "reload: listen.mongo, mongo.uri and mongo.servers change only on restart (pool sizes, "
          "timeouts and mongo.cache rules apply now)");
    auto follower = [](const config::Config& c) {
      std::string s = c.cache.follows_wal() ? c.cache.wal_slot + " " + c.cache.wal_publication
                                            : std::string("off");
      for (const auto& [name, db] : c.databases) {
        if (!db.auto_roles()) s += " " + name + "@" + address_of(db.primary);
        for (const auto& h : db.hosts) s += " " + name + "@" + address_of(h);  // learned roles
      }
      return s;
    };
    if (follower(*cfg) != follower(*old_cfg))
      spdlog::warn(
          "reload: the cache's WAL follower (cache.follow_wal, wal_slot, wal_publication, the "
          "primaries it follows) changes only on restart; hits follow the new settings now");
    if (cfg->listen_postgres.to_string() != old_cfg->listen_postgres.to_string() ||
        http(*cfg) != http(*old_cfg) || cfg->workers != old_cfg->workers ||
        cfg->so_reuseport != old_cfg->so_reuseport)
      spdlog::warn("reload: listen addresses and workers change only on restart");
    spdlog::info(
        "reloaded {}: {} database(s), {} user(s); clients use it from their next transaction",
        config_path_, cfg->databases.size(), cfg->users.size());
    return {};
  } catch (const std::exception& e) {
    spdlog::error("reload failed, keeping the running configuration: {}", e.what());
    return e.what();
  }
}

}  // namespace sluice::server
