// The process: worker event loops, the Postgres listener, signals, reload, drain and exit.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "server/http.hpp"
#include "server/runtime.hpp"

namespace sluice::server {

class App {
 public:
  App(std::string config_path, std::shared_ptr<const config::Config> cfg);
  // Runs until SIGTERM/SIGINT and the drain that follows; returns the process exit code.
  int run();

 private:
  awaitable<void> accept_loop();
  awaitable<void> accept_mongo();
  awaitable<void> signal_loop();
  awaitable<void> maintenance_loop();
  awaitable<void> drain(StopMode mode);
  awaitable<void> heartbeat(std::uint32_t loop);
  // Starts stopping (SIGTERM, SIGINT, admin SHUTDOWN); on loop 0.
  void begin_stop(StopMode mode);
  // Loads the config file again; "" when applied, else why not.
  std::string reload();
  // The steps of run(): before the loops run, and after they stopped.
  void start_services(const config::Config& cfg);
  void start_cache(const config::Config& cfg);
  void stop_services();
  // The health monitor's targets and hooks (app_monitor.cpp).
  void watch_backends();
  void feed_routes();
  // The WAL follower and the loop that reads its freshness stamps (app_follower.cpp).
  void start_follower(const config::Config& cfg);
  awaitable<void> freshness_loop();

  std::string config_path_;
  std::shared_ptr<Runtime> rt_;
  std::vector<std::unique_ptr<asio::io_context>> loops_;  // cleared at the end of run()
  std::optional<tcp::acceptor> acceptor_;
  asio::ip::address pg_address_;  // the address listen.postgres is bound to
  std::optional<tcp::acceptor> mongo_acceptor_;
  std::optional<asio::signal_set> signals_;
  std::unique_ptr<HttpServer> http_;
  std::mutex reload_mu_;
  std::size_t next_loop_ = 0;
  bool force_stop_ = false;
};

}  // namespace sluice::server
