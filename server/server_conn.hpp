// One authenticated connection from sluice to a PostgreSQL server: login, internal queries, state.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "config/config.hpp"
#include "protocol/pg/messages.hpp"
#include "routing/pooling.hpp"
#include "server/framed_reader.hpp"

namespace sluice::server {

// An error to report to the client: a SQLSTATE and a message that says what to do.
struct PgError {
  std::string sqlstate;
  std::string message;
  std::string detail;
  std::string hint;
};

struct ServerLogin {
  std::string host;
  std::uint16_t port = 5432;
  std::string dbname;
  std::string user;
  std::string password;  // plaintext, for SCRAM / md5 / cleartext
  std::string md5_hash;  // "md5..." when only the hash is known (md5 servers)
  config::ServerTls tls = config::ServerTls::kDisable;
  std::shared_ptr<ssl::context> tls_context;  // required unless tls is disable
  Clock::duration timeout = std::chrono::seconds(15);
};

class ServerConn {
 public:
  using Params = std::vector<std::pair<std::string, std::string>>;
  // Read buffer size; it grows for a large inspected message and the relay shrinks it back.
  static constexpr std::size_t kReadBuffer = 16 * 1024;

  // Connects, negotiates TLS, authenticates, and reads up to the first ReadyForQuery.
  static awaitable<std::variant<std::unique_ptr<ServerConn>, PgError>> connect(ServerLogin login);

  // Runs one simple-protocol query string to completion, discarding rows; the first error.
  awaitable<std::variant<std::monostate, PgError>> run(std::string sql);
  // Runs a query string and returns its rows (text format), or the first error.
  awaitable<std::variant<routing::Rows, PgError>> query(std::string sql);
  // Runs statements with text parameters (Parse/Bind/Execute each, then one Sync): the rows of
  // all of them, or the first error (the server skips the rest up to the Sync).
  awaitable<std::variant<routing::Rows, PgError>> query(std::vector<routing::ParamQuery> steps);
  awaitable<std::variant<std::monostate, PgError>> run(std::vector<routing::ParamQuery> steps);

  Stream& stream() { return *stream_; }
  FramedReader& reader() { return reader_; }
  const Params& params() const { return params_; }
  void set_param(std::string_view name, std::string_view value);
  pg::BackendKeyData key() const { return key_; }
  const std::string& host() const { return host_; }
  const std::string& user() const { return user_; }  // the role it logged in as
  std::uint16_t port() const { return port_; }
  Clock::time_point created() const { return created_; }
  Clock::time_point last_used() const { return last_used_; }
  void touch() { last_used_ = Clock::now(); }

  // What transaction pooling knows of this session: prepared statements and settings.
  routing::ServerState state;

 private:
  explicit ServerConn(tcp::socket s) : stream_(std::make_unique<Stream>(std::move(s))) {}
  // Coroutines take their arguments by value: they may outlive the caller's temporaries.
  awaitable<std::variant<std::monostate, PgError>> login(ServerLogin login);
  awaitable<std::variant<std::monostate, PgError>> authenticate(ServerLogin login,
                                                                pg::Authentication a);
  awaitable<std::variant<std::monostate, PgError>> scram(ServerLogin login,
                                                         std::vector<std::uint8_t> mechanisms);
  awaitable<std::variant<std::string, PgError>> expect_sasl(ServerLogin login, std::uint32_t code);
  awaitable<error_code> send(pg::Buffer b) {
    co_return co_await stream_->write_all(asio::buffer(b));
  }
  // Sends `b` (requests ending in one ReadyForQuery) and collects the rows.
  awaitable<std::variant<routing::Rows, PgError>> exchange(pg::Buffer b);

  std::unique_ptr<Stream> stream_;
  FramedReader reader_{kReadBuffer};
  Params params_;
  pg::BackendKeyData key_{0, 0};
  std::string host_;
  std::string user_;
  std::uint16_t port_ = 0;
  Clock::time_point created_ = Clock::now();
  Clock::time_point last_used_ = created_;
};

// Turns an ErrorResponse body from a server into a PgError (fields copied).
PgError error_from_fields(pg::Span body);

}  // namespace sluice::server
