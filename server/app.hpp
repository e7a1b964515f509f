// The process: worker event loops, the Postgres listener, signals, reload, drain and exit.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "server/runtime.hpp"

namespace sluice::server {

class App {
 public:
  App(std::string config_path, std::shared_ptr<const config::Config> cfg);
  // Runs until SIGTERM/SIGINT and the drain that follows; returns the process exit code.
  int run();

 private:
  awaitable<void> accept_loop();
  awaitable<void> signal_loop();
  awaitable<void> maintenance_loop();
  awaitable<void> drain();
  void reload();

  std::string config_path_;
  std::shared_ptr<Runtime> rt_;
  std::vector<std::unique_ptr<asio::io_context>> loops_;  // cleared at the end of run()
  std::optional<tcp::acceptor> acceptor_;
  std::size_t next_loop_ = 0;
  bool force_stop_ = false;
};

}  // namespace sluice::server
