// A client or server byte stream that is plain TCP or TLS over it, decided at run time.
#pragma once

#include <memory>
#include <string>
#include <tuple>

#include "server/asio.hpp"

namespace sluice::server {

class Stream {
 public:
  explicit Stream(tcp::socket socket) : socket_(std::move(socket)) {}
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  awaitable<std::tuple<error_code, std::size_t>> read_some(asio::mutable_buffer b);
  awaitable<std::tuple<error_code, std::size_t>> write(asio::const_buffer b);  // all of b
  awaitable<error_code> write_all(asio::const_buffer b);
  // Reads exactly b.size() bytes.
  awaitable<error_code> read_exact(asio::mutable_buffer b);

  // TLS handshake as server (client-facing) or as client (to a PostgreSQL server).
  awaitable<error_code> accept_tls(ssl::context& ctx);
  awaitable<error_code> connect_tls(ssl::context& ctx, const std::string& host, bool verify_host);

  bool tls() const { return tls_ != nullptr; }
  tcp::socket& socket() { return socket_; }
  // Moves a plain connection to another event loop; false for TLS (its state cannot move).
  bool rebind(const asio::any_io_executor& ex);
  // True when nothing is waiting to be read and the peer has not closed: safe to reuse.
  bool idle_and_open();
  void close();

 private:
  tcp::socket socket_;
  std::unique_ptr<ssl::stream<tcp::socket&>> tls_;
};

}  // namespace sluice::server
