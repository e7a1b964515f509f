// The HTTP endpoint on its own thread (Boost.Beast): /metrics, /healthz, /readyz, /status.
#pragma once

#include <memory>
#include <thread>

#include "server/runtime.hpp"

namespace sluice::server {

class HttpServer {
 public:
  // Binds now (throws when the address is taken); serves after start().
  HttpServer(std::shared_ptr<Runtime> rt, const config::Endpoint& at);
  ~HttpServer() { stop(); }
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  void start();
  void stop();
  tcp::endpoint local_endpoint() const { return acceptor_.local_endpoint(); }

 private:
  awaitable<void> accept_loop();
  std::shared_ptr<Runtime> rt_;
  asio::io_context ctx_{1};
  tcp::acceptor acceptor_;
  std::thread thread_;
};

// The JSON document /status serves.
std::string status_json(Runtime& rt);

}  // namespace sluice::server
