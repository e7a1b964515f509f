// Plain-or-TLS stream operations as coroutines returning error codes.
#include "server/stream.hpp"

#include <openssl/ssl.h>
#include <sys/socket.h>

namespace sluice::server {

// Not coroutines: they hand back the operation's own awaitable (both branches have one type),
// which saves a coroutine frame per read and write on the relay's hot path.
awaitable<std::tuple<error_code, std::size_t>> Stream::read_some(asio::mutable_buffer b) {
  if (tls_) return tls_->async_read_some(b, use_nothrow);
  return socket_.async_read_some(b, use_nothrow);
}

awaitable<std::tuple<error_code, std::size_t>> Stream::write(asio::const_buffer b) {
  if (tls_) return asio::async_write(*tls_, b, use_nothrow);
  return asio::async_write(socket_, b, use_nothrow);
}

awaitable<error_code> Stream::write_all(asio::const_buffer b) {
  auto [ec, n] = co_await write(b);
  co_return ec;
}

awaitable<error_code> Stream::read_exact(asio::mutable_buffer b) {
  if (tls_) {
    auto [ec, n] = co_await asio::async_read(*tls_, b, use_nothrow);
    co_return ec;
  }
  auto [ec, n] = co_await asio::async_read(socket_, b, use_nothrow);
  co_return ec;
}

awaitable<error_code> Stream::accept_tls(ssl::context& ctx) {
  tls_ = std::make_unique<ssl::stream<tcp::socket&>>(socket_, ctx);
  auto [ec] = co_await tls_->async_handshake(ssl::stream_base::server, use_nothrow);
  co_return ec;
}

awaitable<error_code> Stream::connect_tls(ssl::context& ctx, const std::string& host,
                                          bool verify_host) {
  tls_ = std::make_unique<ssl::stream<tcp::socket&>>(socket_, ctx);
  error_code addr_ec;
  asio::ip::make_address(host, addr_ec);
  if (addr_ec) {  // SNI for host names only (SSL_set_tlsext_host_name without its C cast)
    SSL_ctrl(tls_->native_handle(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
             const_cast<char*>(host.c_str()));
  }
  if (verify_host) {
    tls_->set_verify_mode(ssl::verify_peer);
    tls_->set_verify_callback(ssl::host_name_verification(host));
  }
  auto [ec] = co_await tls_->async_handshake(ssl::stream_base::client, use_nothrow);
  co_return ec;
}

bool Stream::rebind(const asio::any_io_executor& ex) {
  if (socket_.get_executor() == ex) return true;
  if (tls_) return false;
  error_code ec;
  auto protocol = socket_.local_endpoint(ec).protocol();
  if (ec) return false;
  auto fd = socket_.release(ec);
  if (ec) return false;
  socket_ = tcp::socket(ex, protocol, fd);
  return true;
}

bool Stream::idle_and_open() {
  if (!socket_.is_open()) return false;
  if (tls_ && SSL_pending(tls_->native_handle()) > 0) return false;
  char byte = 0;
  auto n = ::recv(socket_.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  // 0 = peer closed; >0 = unexpected bytes (e.g. a FATAL from the server); -1/EAGAIN = idle.
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void Stream::close() {
  error_code ec;
  socket_.shutdown(tcp::socket::shutdown_both, ec);
  socket_.close(ec);
}

}  // namespace sluice::server
