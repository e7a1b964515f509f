// The HTTP endpoint on its own thread (Boost.Beast): /metrics, /healthz, /readyz, /status.
#pragma once

#include <chrono>
#include <memory>
#include <ostream>
#include <string_view>
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

// `sluice --probe URL`: GET an http://host:port/path URL (a container HEALTHCHECK on /healthz
// without curl in the image). Prints the body; returns 0 for a 2xx answer within the timeout, 1
// otherwise (with the reason on `err`).
int http_probe(std::string_view url, std::chrono::milliseconds timeout, std::ostream& out,
               std::ostream& err);

}  // namespace sluice::server
