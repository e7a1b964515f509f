// Connecting and logging in to PostgreSQL servers (TLS, SCRAM-SHA-256, md5, cleartext).
#include "server/server_conn.hpp"

#include <array>

#include "protocol/pg/md5.hpp"
#include "protocol/pg/scram.hpp"

namespace sluice::server {

using namespace asio::experimental::awaitable_operators;
using Outcome = std::variant<std::monostate, PgError>;

namespace {
constexpr std::uint32_t kMaxLoginMessage = 1 << 20;

PgError io_error(const std::string& what, const ServerLogin& l, const error_code& ec) {
  return PgError{"08006",
                 what + " " + l.host + ":" + std::to_string(l.port) + ": " + ec.message(),
                 {},
                 "check that the server in databases.*.primary is up and reachable from sluice"};
}
}  // namespace

PgError error_from_fields(pg::Span body) {
  auto f = pg::decode_error_fields(body);
  if (!f) return PgError{"08P01", "server sent a malformed ErrorResponse", {}, {}};
  PgError e{std::string(f->get('C')), std::string(f->get('M')), std::string(f->get('D')),
            std::string(f->get('H'))};
  if (e.sqlstate.empty()) e.sqlstate = "XX000";
  return e;
}

namespace {
// An ErrorResponse received while logging in, marked so the client sees who refused it.
PgError login_error(pg::Span body) {
  auto e = error_from_fields(body);
  e.message = "server login failed: " + e.message;
  return e;
}
}  // namespace

void ServerConn::set_param(std::string_view name, std::string_view value) {
  for (auto& [k, v] : params_) {
    if (k == name) {
      v = value;
      return;
    }
  }
  params_.emplace_back(name, value);
}

awaitable<std::variant<std::unique_ptr<ServerConn>, PgError>> ServerConn::connect(
    ServerLogin login) {
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  auto resolve = resolver.async_resolve(login.host, std::to_string(login.port), use_nothrow);
  auto r = co_await (std::move(resolve) || sleep_for(login.timeout));
  if (r.index() == 1) co_return PgError{"08006", "timed out resolving " + login.host, {}, {}};
  auto [rec, endpoints] = std::get<0>(r);
  if (rec) co_return io_error("could not resolve", login, rec);

  tcp::socket socket(ex);
  auto c =
      co_await (asio::async_connect(socket, endpoints, use_nothrow) || sleep_for(login.timeout));
  if (c.index() == 1)
    co_return PgError{"08006",
                      "timed out connecting to " + login.host + ":" + std::to_string(login.port),
                      {},
                      {}};
  if (auto [cec, ep] = std::get<0>(c); cec)
    co_return io_error("could not connect to server", login, cec);
  socket.set_option(tcp::no_delay(true));

  std::unique_ptr<ServerConn> conn(new ServerConn(std::move(socket)));
  conn->host_ = login.host;
  conn->user_ = login.user;
  conn->port_ = login.port;
  auto l = co_await with_timeout(conn->login(login), login.timeout);
  if (!l)
    co_return PgError{"08006",
                      "timed out logging in to " + login.host + ":" + std::to_string(login.port),
                      {},
                      {}};
  if (auto* e = std::get_if<PgError>(&*l)) co_return std::move(*e);
  co_return std::move(conn);
}

awaitable<Outcome> ServerConn::login(ServerLogin login) {
  if (login.tls != config::ServerTls::kDisable) {
    pg::Buffer req;
    pg::encode_ssl_request(req);
    if (auto ec = co_await send(req)) co_return io_error("could not send SSLRequest to", login, ec);
    std::array<std::uint8_t, 1> answer{};
    if (auto ec = co_await stream_->read_exact(asio::buffer(answer)))
      co_return io_error("could not read the SSL answer from", login, ec);
    if (answer[0] == 'S') {
      bool verify = login.tls == config::ServerTls::kVerifyFull;
      if (auto ec = co_await stream_->connect_tls(*login.tls_context, login.host, verify))
        co_return io_error("TLS handshake failed with", login, ec);
    } else if (answer[0] != 'N' || login.tls != config::ServerTls::kPrefer) {
      co_return PgError{
          "08006",
          "server " + login.host + ":" + std::to_string(login.port) + " does not accept TLS",
          {},
          "set tls.server_tls to prefer or disable, or enable ssl on the server"};
    }
  }
  pg::Buffer startup;
  pg::encode_startup_message(startup, {{"user", login.user}, {"database", login.dbname}});
  if (auto ec = co_await send(startup)) co_return io_error("could not send startup to", login, ec);

  for (;;) {
    auto m = co_await reader_.next(*stream_, false, kMaxLoginMessage);
    if (m.ec) co_return io_error("lost connection while logging in to", login, m.ec);
    if (m.bad)
      co_return PgError{"08P01", "server sent an invalid message length during login", {}, {}};
    auto body = m.frame.body;
    switch (m.frame.type) {
      case 'R': {
        auto a = pg::decode_authentication(body);
        if (!a)
          co_return PgError{"08P01", "server sent a malformed authentication request", {}, {}};
        if (a->code == pg::auth::kOk) break;
        auto out = co_await authenticate(login, *a);
        if (std::holds_alternative<PgError>(out)) co_return out;
        break;
      }
      case 'S':
        if (auto p = pg::decode_parameter_status(body)) set_param(p->name, p->value);
        break;
      case 'K':
        if (auto k = pg::decode_backend_key_data(body)) key_ = *k;
        break;
      case 'E':
        co_return login_error(body);
      case 'Z':
        co_return std::monostate{};
      case 'N':
      case 'v':  // NegotiateProtocolVersion: we only speak 3.0 anyway
        break;
      default:
        co_return PgError{
            "08P01",
            std::string("unexpected message '") + m.frame.type + "' during server login",
            {},
            {}};
    }
  }
}

awaitable<Outcome> ServerConn::authenticate(ServerLogin login, pg::Authentication a) {
  pg::Buffer out;
  const PgError no_password{
      "28P01",
      "the server asks for a password for user \"" + login.user +
          "\" and sluice has none it can use",
      {},
      "give the user a plaintext password or server_password in the sluice config"};
  switch (a.code) {
    case pg::auth::kCleartext:
      if (login.password.empty()) co_return no_password;
      pg::encode_password_message(out, login.password);
      break;
    case pg::auth::kMd5: {
      std::array<std::uint8_t, 4> salt{a.data[0], a.data[1], a.data[2], a.data[3]};
      std::string stored = !login.password.empty()
                               ? pg::md5::stored_hash(login.password, login.user)
                               : login.md5_hash;
      if (stored.empty()) co_return no_password;
      pg::encode_password_message(out, pg::md5::response_from_stored(stored, salt));
      break;
    }
    case pg::auth::kSasl: {
      std::vector<std::uint8_t> mechanisms(a.data.begin(), a.data.end());
      auto outcome = co_await scram(std::move(login), std::move(mechanisms));
      co_return outcome;
    }
    default:
      co_return PgError{"28000",
                        "server asks for an authentication method sluice does not support (code " +
                            std::to_string(a.code) + ")",
                        {},
                        "use scram-sha-256, md5 or password in pg_hba.conf"};
  }
  if (auto ec = co_await send(out))
    co_return io_error("lost connection while authenticating to", login, ec);
  co_return std::monostate{};
}

awaitable<Outcome> ServerConn::scram(ServerLogin login, std::vector<std::uint8_t> mechanisms) {
  auto mechs = pg::decode_sasl_mechanisms(pg::Span(mechanisms.data(), mechanisms.size()));
  bool offered =
      mechs && std::find(mechs->begin(), mechs->end(), pg::scram::kMechanism) != mechs->end();
  if (!offered)
    co_return PgError{"28000", "server offers no SASL mechanism sluice supports", {}, {}};
  if (login.password.empty()) {
    co_return PgError{"28P01",
                      "the server asks for SCRAM for user \"" + login.user +
                          "\" and sluice has no plaintext password",
                      {},
                      "set password (or server_password) for this user in the sluice config"};
  }
  pg::scram::ClientExchange scram(login.password);
  pg::Buffer out;
  pg::encode_sasl_initial_response(out, pg::scram::kMechanism,
                                   bytes::as_bytes(scram.client_first()));
  if (auto ec = co_await send(out))
    co_return io_error("lost connection while authenticating to", login, ec);

  auto first = co_await expect_sasl(login, pg::auth::kSaslContinue);
  if (auto* e = std::get_if<PgError>(&first)) co_return std::move(*e);
  auto final_msg = scram.on_server_first(std::get<std::string>(first));
  if (!final_msg)
    co_return PgError{"08P01", "SCRAM with the server failed: " + scram.error(), {}, {}};
  out.clear();
  pg::encode_sasl_response(out, bytes::as_bytes(*final_msg));
  if (auto ec = co_await send(out))
    co_return io_error("lost connection while authenticating to", login, ec);
  auto last = co_await expect_sasl(login, pg::auth::kSaslFinal);
  if (auto* e = std::get_if<PgError>(&last)) co_return std::move(*e);
  if (!scram.on_server_final(std::get<std::string>(last)))
    co_return PgError{"28000", "SCRAM with the server failed: " + scram.error(), {}, {}};
  co_return std::monostate{};
}

awaitable<std::variant<std::string, PgError>> ServerConn::expect_sasl(ServerLogin login,
                                                                      std::uint32_t code) {
  auto m = co_await reader_.next(*stream_, false, kMaxLoginMessage);
  if (m.ec) co_return io_error("lost connection while authenticating to", login, m.ec);
  if (m.bad)
    co_return PgError{"08P01", "server sent an invalid message length during SCRAM", {}, {}};
  if (m.frame.type == 'E') co_return login_error(m.frame.body);
  auto a = m.frame.type == 'R' ? pg::decode_authentication(m.frame.body) : std::nullopt;
  if (!a || a->code != code)
    co_return PgError{"08P01", "unexpected message during SCRAM exchange", {}, {}};
  co_return std::string(bytes::as_chars(a->data));
}

awaitable<Outcome> ServerConn::run(std::string sql) {
  auto r = co_await query(std::move(sql));
  if (auto* e = std::get_if<PgError>(&r)) co_return std::move(*e);
  co_return std::monostate{};
}

awaitable<Outcome> ServerConn::run(std::vector<routing::ParamQuery> steps) {
  auto r = co_await query(std::move(steps));
  if (auto* e = std::get_if<PgError>(&r)) co_return std::move(*e);
  co_return std::monostate{};
}

awaitable<std::variant<routing::Rows, PgError>> ServerConn::query(std::string sql) {
  pg::Buffer q;
  pg::encode_query(q, sql);
  co_return co_await exchange(std::move(q));
}

awaitable<std::variant<routing::Rows, PgError>> ServerConn::query(
    std::vector<routing::ParamQuery> steps) {
  pg::Buffer q;
  for (const auto& step : steps) {
    // Every parameter is text (OID 25): nothing is left for the server to infer.
    pg::encode_parse(q, "", step.sql, std::vector<std::uint32_t>(step.params.size(), 25));
    pg::encode_bind(q, "", "", step.params);
    pg::encode_execute(q, {"", 0});
  }
  pg::encode_sync(q);
  co_return co_await exchange(std::move(q));
}

awaitable<std::variant<routing::Rows, PgError>> ServerConn::exchange(pg::Buffer q) {
  if (auto ec = co_await send(std::move(q)))
    co_return PgError{"08006", "lost the server connection: " + ec.message(), {}, {}};
  routing::Rows rows;
  std::optional<PgError> error;
  for (;;) {
    auto m = co_await reader_.next(*stream_, false, pg::kMaxMessageLength);
    if (m.ec) co_return PgError{"08006", "lost the server connection: " + m.ec.message(), {}, {}};
    if (m.bad) co_return PgError{"08P01", "server sent an invalid message length", {}, {}};
    switch (m.frame.type) {
      case 'E':
        if (!error) error = error_from_fields(m.frame.body);
        break;
      case 'S':
        if (auto p = pg::decode_parameter_status(m.frame.body)) set_param(p->name, p->value);
        break;
      case 'D': {
        auto row = pg::decode_data_row(m.frame.body);
        if (!row) co_return PgError{"08P01", "server sent a malformed DataRow", {}, {}};
        auto& copy = rows.emplace_back();
        for (const auto& v : *row)
          copy.emplace_back(v ? std::optional<std::string>(*v) : std::nullopt);
        break;
      }
      case 'Z':
        touch();
        if (error) co_return std::move(*error);
        co_return std::move(rows);
      default:
        break;  // RowDescription, CommandComplete, notices
    }
  }
}

}  // namespace sluice::server
