// Startup, TLS, authentication (SCRAM, md5, trust) and the first attach of a client.
#include "server/pg/session.hpp"

namespace sluice::server::pgsession {

namespace {

// The key unknown users' SCRAM salts are derived from: drawn once per process (at the first
// login), so a name keeps its salt while sluice runs, as a configured user's does.
const std::vector<std::uint8_t>& mock_auth_secret() {
  static const auto secret = pg::scram::random_bytes(32);
  return secret;
}

}  // namespace

awaitable<bool> ClientSession::startup_and_auth() {
  if (!co_await read_startup()) co_return false;
  if (rt_->clients > cfg_->pool.max_client_conn) {
    spdlog::warn("client {}: refused, {} clients connected (pool.max_client_conn={})", peer_,
                 rt_->clients.load(), cfg_->pool.max_client_conn);
    queue_error(
        {"53300",
         "sorry, too many clients already",
         {},
         "sluice allows pool.max_client_conn=" + std::to_string(cfg_->pool.max_client_conn) +
             " clients; raise it or close idle clients"});
    co_await flush();
    co_return false;
  }
  bool authenticated = co_await authenticate();
  co_return authenticated;
}

awaitable<bool> ClientSession::read_startup() {
  for (int round = 0; round < 3; ++round) {  // SSL and GSS negotiation, then the real startup
    auto m = co_await reader_.next(*client_, true, pg::kMaxStartupPacket);
    if (m.ec) co_return false;
    if (m.bad) {
      spdlog::warn("client {}: startup packet length {}: {}", peer_, m.bad->declared_length,
                   pg::describe(m.bad->error));
      queue_error({"08P01", "invalid length of startup packet", {}, {}});
      co_await flush();
      co_return false;
    }
    auto decoded = pg::decode_startup(m.frame.body);
    if (auto* err = std::get_if<pg::DecodeError>(&decoded)) {
      spdlog::warn("client {}: {}", peer_, err->message);
      queue_error({std::string(err->sqlstate), err->message, {}, {}});
      co_await flush();
      co_return false;
    }
    auto& packet = std::get<pg::StartupPacket>(decoded);
    if (std::holds_alternative<pg::SslRequest>(packet)) {
      auto ctx = rt_->client_tls();
      if (client_->tls() || !reader_.pending().empty()) {
        queue_error({"08P01", "received unencrypted data after SSL request", {}, {}});
        co_await flush();
        co_return false;
      }
      pg::Buffer answer(1, static_cast<std::uint8_t>(ctx ? 'S' : 'N'));
      if (!co_await send(std::move(answer))) co_return false;
      if (ctx) {
        if (auto ec = co_await client_->accept_tls(*ctx)) {
          spdlog::warn("client {}: TLS handshake failed: {}", peer_, ec.message());
          co_return false;
        }
      }
      continue;
    }
    if (std::holds_alternative<pg::GssEncRequest>(packet)) {
      pg::Buffer answer(1, static_cast<std::uint8_t>('N'));
      if (!co_await send(std::move(answer))) co_return false;
      continue;
    }
    if (auto* cancel = std::get_if<pg::CancelRequest>(&packet)) {
      pg::BackendKeyData client_key{cancel->pid, cancel->secret};  // named: g++ 12, co_await
      co_await rt_->cancels.forward(client_key);
      co_return false;  // the protocol closes cancel connections without a reply
    }
    auto& startup = std::get<pg::StartupMessage>(packet);
    std::vector<std::string_view> unrecognized;
    for (const auto& [k, v] : startup.params) {
      if (k.starts_with("_pq_.")) {
        unrecognized.push_back(k);
      } else {
        startup_params_.emplace_back(k, v);
      }
    }
    if ((startup.version & 0xffff) != 0 || !unrecognized.empty()) {
      pg::Buffer out;
      pg::encode_negotiate_protocol_version(out, 0, unrecognized);
      if (!co_await send(std::move(out))) co_return false;
    }
    user_name_ = std::string(startup.get("user"));
    db_name_ = std::string(startup.get("database"));
    if (db_name_.empty()) db_name_ = user_name_;
    if (user_name_.empty()) {
      queue_error({"28000", "no PostgreSQL user name specified in startup packet", {}, {}});
      co_await flush();
      co_return false;
    }
    if (!startup.get("replication").empty() && startup.get("replication") != "false") {
      queue_error({"0A000",
                   "sluice does not proxy replication connections",
                   {},
                   "connect replication clients to the server directly"});
      co_await flush();
      co_return false;
    }
    co_return true;
  }
  queue_error({"08P01", "too many negotiation packets before startup", {}, {}});
  co_await flush();
  co_return false;
}

awaitable<std::optional<pg::Frame>> ClientSession::read_auth_message() {
  auto m = co_await reader_.next(*client_, false, kMaxAuthMessage);
  if (m.ec) co_return std::nullopt;
  if (m.bad || m.frame.type != 'p') {
    queue_error({"08P01", "expected a password response", {}, {}});
    co_await flush();
    co_return std::nullopt;
  }
  co_return m.frame;
}

void ClientSession::log_auth_failure(std::string_view why) {
  spdlog::warn("client {} user={} db={}: password authentication failed ({})", peer_, user_name_,
               db_name_, why);
}

awaitable<bool> ClientSession::authenticate() {
  enter(Phase::kAuthenticating);
  user_ = cfg_->user(user_name_);
  bool ok = false;
  switch (cfg_->auth_type) {
    case config::AuthType::kTrust:
      if (!user_) {
        trust_user_ = std::make_unique<config::User>();
        trust_user_->name = trust_user_->server_user = user_name_;
        user_ = trust_user_.get();
      }
      ok = true;
      break;
    case config::AuthType::kMd5:
      // Like postgres: md5 is answered with SCRAM when only a SCRAM verifier is known. Unknown
      // users are asked for md5, as users with a password or an md5 hash are.
      if (!user_ || !user_->md5_hash.empty()) {
        bool md5_ok = co_await authenticate_md5(user_);
        ok = md5_ok;
      } else {
        bool scram_ok = co_await authenticate_scram(user_);
        ok = scram_ok;
      }
      break;
    case config::AuthType::kScram: {
      bool scram_ok = co_await authenticate_scram(user_);
      ok = scram_ok;
      break;
    }
  }
  rt_->obs.count_login(ok);
  if (!ok) co_return false;
  if (db_name_ == kAdminDatabase || (db_name_ == "pgbouncer" && !cfg_->database(db_name_))) {
    // The admin console ("pgbouncer" too, for scripts written for PgBouncer).
    if (!cfg_->is_stats_user(user_name_)) {
      spdlog::warn("client {} user={}: refused on the admin console", peer_, user_name_);
      queue_error({"28000",
                   "user \"" + user_name_ + "\" is not allowed on the sluice admin console",
                   {},
                   "list the user under admin.users (every command) or admin.stats_users (SHOW "
                   "only)"});
      co_await flush();
      co_return false;
    }
    admin_ = true;
    pg::Buffer out;
    pg::encode_authentication(out, pg::auth::kOk);
    const std::string server_version = "15.0 (sluice " + std::string(version()) + ")";
    using Param = std::pair<std::string_view, std::string_view>;
    for (auto [name, value] :
         {Param{"server_version", server_version}, Param{"server_encoding", "UTF8"},
          Param{"client_encoding", "UTF8"}, Param{"DateStyle", "ISO, MDY"},
          Param{"integer_datetimes", "on"}, Param{"standard_conforming_strings", "on"},
          Param{"TimeZone", "UTC"}, Param{"application_name", ""}})
      pg::encode_parameter_status(out, name, value);
    pg::encode_backend_key_data(out, {0, 0});
    pg::encode_ready_for_query(out, 'I');
    co_return co_await send(std::move(out));
  }
  db_ = cfg_->database(db_name_);
  if (db_ && rt_->control.disabled(db_name_)) {
    queue_error({"57P03",
                 "database \"" + db_name_ + "\" is disabled on sluice",
                 {},
                 "an operator ran DISABLE " + db_name_ + " on the admin console; ENABLE lifts it"});
    co_await flush();
    co_return false;
  }
  if (!db_) {
    spdlog::warn("client {} user={}: unknown database \"{}\"", peer_, user_name_, db_name_);
    queue_error({"3D000",
                 "database \"" + db_name_ + "\" does not exist",
                 {},
                 "sluice serves only the databases listed under databases: in its config"});
    co_await flush();
    co_return false;
  }
  pg::Buffer out;
  pg::encode_authentication(out, pg::auth::kOk);
  co_return co_await send(std::move(out));
}

awaitable<bool> ClientSession::authenticate_scram(const config::User* user) {
  // Unknown users get a full exchange against a verifier shaped like a real one (salt stable per
  // name, default iteration count), so probing reveals nothing.
  bool usable = user && !user->scram.salt.empty();
  auto verifier = usable ? user->scram : pg::scram::mock_verifier(mock_auth_secret(), user_name_);
  pg::scram::ServerExchange scram(std::move(verifier));
  pg::Buffer out;
  pg::encode_auth_sasl(out, {pg::scram::kMechanism});
  if (!co_await send(std::move(out))) co_return false;

  auto first = co_await read_auth_message();
  if (!first) co_return false;
  auto init = pg::decode_sasl_initial_response(first->body);
  if (!init || init->mechanism != pg::scram::kMechanism || !init->data) {
    queue_error({"08P01", "client selected an invalid SASL authentication mechanism", {}, {}});
    co_await flush();
    co_return false;
  }
  auto server_first = scram.on_client_first(bytes::as_chars(*init->data));
  if (!server_first) {
    queue_error({"08P01", "malformed SCRAM message: " + scram.error(), {}, {}});
    co_await flush();
    co_return false;
  }
  out.clear();
  pg::encode_authentication(out, pg::auth::kSaslContinue, bytes::as_bytes(*server_first));
  if (!co_await send(std::move(out))) co_return false;

  auto final_msg = co_await read_auth_message();
  if (!final_msg) co_return false;
  auto server_final = scram.on_client_final(bytes::as_chars(final_msg->body));
  if (!server_final || !usable) {
    log_auth_failure(!user     ? "no such user"
                     : !usable ? "user has only an md5 hash"
                               : scram.error());
    queue_error(
        {"28P01", "password authentication failed for user \"" + user_name_ + "\"", {}, {}});
    co_await flush();
    co_return false;
  }
  out.clear();
  pg::encode_authentication(out, pg::auth::kSaslFinal, bytes::as_bytes(*server_final));
  co_return co_await send(std::move(out));
}

awaitable<bool> ClientSession::authenticate_md5(const config::User* user) {
  auto salt_bytes = pg::scram::random_bytes(4);
  std::array<std::uint8_t, 4> salt{salt_bytes[0], salt_bytes[1], salt_bytes[2], salt_bytes[3]};
  pg::Buffer out;
  pg::encode_authentication(out, pg::auth::kMd5, bytes::Span(salt.data(), salt.size()));
  if (!co_await send(std::move(out))) co_return false;
  auto m = co_await read_auth_message();
  if (!m) co_return false;
  auto answer = pg::decode_password_message(m->body);
  // An unknown user is checked against a hash no answer matches, the same work as a known one.
  auto noise = pg::scram::random_bytes(16);
  auto stored = user ? user->md5_hash
                     : pg::md5::stored_hash(std::string(noise.begin(), noise.end()), user_name_);
  auto expected = pg::md5::response_from_stored(stored, salt);
  bool ok = user && answer && answer->size() == expected.size() &&
            CRYPTO_memcmp(answer->data(), expected.data(), expected.size()) == 0;
  if (!ok) {
    log_auth_failure(user ? "md5 response does not match" : "no such user");
    queue_error(
        {"28P01", "password authentication failed for user \"" + user_name_ + "\"", {}, {}});
    co_await flush();
  }
  co_return ok;
}

awaitable<bool> ClientSession::attach_server() {
  auto settings = startup_settings();
  if (auto* e = std::get_if<PgError>(&settings)) {
    queue_error(std::move(*e));
    co_await flush();
    co_return false;
  }
  login_ = bind_login(*rt_, user_name_, db_name_, std::get<routing::Settings>(std::move(settings)),
                      trust_user_ != nullptr);
  if (!login_) {  // a reload since authenticate() removed the database or the user
    queue_error({"3D000",
                 "database \"" + db_name_ + "\" or user \"" + user_name_ +
                     "\" was removed from the sluice configuration during login",
                 {},
                 "connect again once the configuration lists them"});
    co_await flush();
    co_return false;
  }
  adopt(*login_);
  trust_user_.reset();  // login_ has its own
  if (login_->mode != config::PoolMode::kSession) {
    ps_.emplace(rt_->analyses, login_->startup, pooled_options());
    handle_->parks = true;
  }
  fill_info();
  // A pooled client of a database whose primary is not elected (a failover) logs in on a
  // replica: its reads go on, its writes wait for the primary.
  if (ps_ && db_->auto_roles() && !db_->primary_known && replicas_) route_.replica = true;
  if (!co_await checkout()) {
    if (refused_) {  // pooled: the refusal waits for a request, and there is none at login
      queue_error(*refused_);
      refused_.reset();
      co_await flush();
    }
    co_return false;
  }
  route_ = RouteNeed{};
  key_ = rt_->cancels.add_client();
  rt_->cancels.set_target(key_, CancelTarget{server_->host(), server_->port(), server_->key()});
  pg::Buffer out;
  for (const auto& [name, value] : server_->params()) {
    // sluice takes writes whichever server the login ran on (libpq's target_session_attrs).
    if (name == "in_hot_standby" && node_ >= 0) {
      pg::encode_parameter_status(out, name, "off");
      continue;
    }
    pg::encode_parameter_status(out, name, value);
  }
  pg::encode_backend_key_data(out, key_);
  pg::encode_ready_for_query(out, 'I');
  if (!co_await send(std::move(out))) co_return false;
  if (can_release()) co_await release();
  co_return true;
}

// Settings from the startup packet (parameters and `options` -c switches), names in lower case.
std::variant<routing::Settings, PgError> ClientSession::startup_settings() const {
  routing::Settings settings;
  auto add = [&](std::string name, std::string value) {
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    settings[std::move(name)] = std::move(value);
  };
  for (const auto& [name, value] : startup_params_) {
    if (name == "user" || name == "database" || name == "replication") continue;
    if (name == "options") {
      auto opts = pg::sql::parse_options(value);
      if (!opts)
        return PgError{"08P01", "invalid command-line options in startup packet: " + value, {}, {}};
      for (auto& [k, v] : *opts) add(k, v);
      continue;
    }
    if (!pg::sql::is_setting_name(name))
      return PgError{"42704", "unrecognized configuration parameter \"" + name + "\"", {}, {}};
    add(name, value);
  }
  return settings;
}

}  // namespace sluice::server::pgsession
