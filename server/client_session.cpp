// One client connection: startup, TLS, authentication, a pooled server connection, the relay.
#include "server/client_session.hpp"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <set>

#include "protocol/pg/extended.hpp"
#include "protocol/pg/md5.hpp"
#include "protocol/pg/scanner.hpp"
#include "protocol/pg/scram.hpp"
#include "protocol/pg/sql.hpp"
#include "routing/pooling.hpp"
#include "routing/replicas.hpp"
#include "server/admin.hpp"
#include "server/version.hpp"

namespace sluice::server {
namespace {

using namespace asio::experimental::awaitable_operators;

constexpr std::uint32_t kMaxAuthMessage = 65535;  // PG_MAX_AUTH_TOKEN_LENGTH
constexpr std::size_t kClientBuffer = 8 * 1024;

// Client → server: see Terminate whole, and what names a statement or ends a request (insights).
constexpr pg::WantTable kFromClient = pg::make_want_table({'X', 'Q', 'P', 'B', 'C', 'S', 'F'});
// Server → client: see ReadyForQuery (transaction state), ParameterStatus, and the replies that
// end a statement (CommandComplete, ErrorResponse) whole.
constexpr pg::WantTable kFromServer = pg::make_want_table({'Z', 'S', 'C', 'E'});
// Transaction pooling sees every message that names a statement or ends a request, and the
// replies it must match up with what it sent.
constexpr pg::WantTable kFromClientPooled =
    pg::make_want_table({'X', 'P', 'B', 'D', 'C', 'Q', 'S', 'F'});
constexpr pg::WantTable kFromServerPooled =
    pg::make_want_table({'Z', 'S', '1', '2', '3', 'E', 'G', 'W', 'C'});
// On a replica, notices too: "terminating connection due to immediate shutdown" comes as one.
constexpr pg::WantTable kFromReplica =
    pg::make_want_table({'Z', 'S', '1', '2', '3', 'E', 'G', 'W', 'C', 'N'});
constexpr pg::WantTable kEveryMessage = [] {
  pg::WantTable t{};
  t.fill(pg::Want::kWhole);
  return t;
}();
// What the relay returns when the client idles without a server and is parked (see serve()).
constexpr std::string_view kParked = "parked";
// What the relay returns when the server connection went back to the pool between transactions.
constexpr std::string_view kReleased = "released";
// What the sequential relay returns when both directions must be relayed at once.
constexpr std::string_view kConcurrent = "concurrent";
// What the relay returns when a read's replica connection broke before the client got a byte.
constexpr std::string_view kRetry = "retry";
// What the server side returns when its server went away with no request in flight: the client
// side moves on to another server at its next request (never losing what it read meanwhile).
constexpr std::string_view kGone = "server gone";
// What routing returns when sluice answered the request itself.
constexpr std::string_view kAnswered = "answered";

// The key unknown users' SCRAM salts are derived from: drawn once per process (at the first
// login), so a name keeps its salt while sluice runs, as a configured user's does.
const std::vector<std::uint8_t>& mock_auth_secret() {
  static const auto secret = pg::scram::random_bytes(32);
  return secret;
}
// Routing reads at most this much of a request to classify it (larger: the primary).
constexpr std::size_t kRouteMaxMessage = 64 * 1024;
// A read is retried on another node only if the client sent at most this much for it.
constexpr std::size_t kMaxReplay = 64 * 1024;
// choose_node(): routing policy refuses the read (every replica banned, and reads may not go to
// the primary).
constexpr int kRefused = -2;
// Requests up to this size are written before reading any reply (the server's socket buffer takes
// them whole, so the server cannot block on its replies while sluice writes).
constexpr std::size_t kSequentialBatch = 32 * 1024;

// A notice or error saying the server is going away (shutdown, crash, recovery): a read that got
// nothing else yet can run elsewhere.
bool replica_going_away(const pg::Frame& f) {
  auto e = pg::decode_error_fields(f.body);
  if (!e) return false;
  auto code = e->get('C');
  auto severity = e->get('V');
  return code == "57P01" || code == "57P02" || code == "57P03" ||
         (code.starts_with("08") && (severity == "FATAL" || severity == "PANIC"));
}

std::string peer_of(const tcp::socket& s) {
  error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return "?";
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

class ClientSession {
 public:
  ClientSession(tcp::socket socket, std::shared_ptr<Runtime> rt)
      : rt_(std::move(rt)),
        cfg_(rt_->config()),
        peer_(peer_of(socket)),
        client_(std::make_unique<Stream>(std::move(socket))),
        reader_(kClientBuffer),
        tracker_(&rt_->obs.insights),
        to_server_(cfg_->max_message_size),
        to_client_(pg::kMaxMessageLength) {
    ++rt_->clients;
    generation_ = rt_->generation.load();
    const auto& p = cfg_->pool;
    watchdog_on_ = p.query_timeout.count() > 0 || p.idle_transaction_timeout.count() > 0 ||
                   p.client_idle_timeout.count() > 0;
  }
  ClientSession(const ClientSession&) = delete;
  ClientSession& operator=(const ClientSession&) = delete;
  ~ClientSession();

  awaitable<std::optional<std::string>> start();
  static awaitable<void> serve(std::shared_ptr<ClientSession> self);

 private:
  static void park(std::shared_ptr<ClientSession> self);
  awaitable<void> finish(std::string reason);
  awaitable<bool> startup_and_auth();
  awaitable<bool> read_startup();
  awaitable<bool> authenticate();
  awaitable<bool> authenticate_scram(const config::User* user);
  awaitable<bool> authenticate_md5(const config::User* user);
  awaitable<bool> attach_server();
  std::variant<routing::Settings, PgError> startup_settings() const;
  awaitable<std::string> relay();
  awaitable<std::string> relay_attached();
  awaitable<std::string> wait_detached();
  awaitable<std::string> answer_detached();
  awaitable<std::string> wait_for_client();
  // Gives back what only a request in flight needs (buffers, reply queues).
  void trim_idle();
  // Between requests without a server, no TLS and no idle timer: the client may park.
  bool parkable() const {
    return ps_ && !killed_ && !client_->tls() && cfg_->pool.client_idle_timeout.count() == 0;
  }
  awaitable<bool> checkout();
  // A read refused for want of a replica (all_replicas_banned: error), in pooled mode: the
  // error answers that request alone and the session goes on.
  awaitable<bool> refuse_request(const PgError& e);
  std::unique_ptr<PgError> refused_;  // (pointers: an idle session stays small)
  awaitable<void> release();
  awaitable<std::string> client_to_server();
  awaitable<std::string> server_to_client();
  awaitable<std::string> client_to_server_pooled();
  awaitable<std::string> server_to_client_pooled();
  awaitable<std::string> relay_sequential();
  awaitable<std::string> relay_sequential_steps();
  struct ClientScan {
    enum Kind { kNeedMore, kTerminate, kBad, kTooLong, kReroute } kind = kNeedMore;
    std::size_t need = 0;  // kNeedMore: bytes still missing (0 = any)
    pg::FrameFailure failure{};
  };
  struct ServerScan {
    std::size_t consumed = 0;  // bytes of the server's buffer dealt with
    asio::const_buffer out;    // what goes to the client
    bool idle_now = false;     // ReadyForQuery with nothing outstanding, outside a transaction
    bool copy_in = false;      // CopyInResponse / CopyBothResponse went to the client
    bool desync = false;
    bool tx_refused = false;  // statement mode saw a transaction
    bool retry = false;       // the replica is going away: retry the read elsewhere
    bool gone = false;        // ... and nothing is in flight: let the connection go
    bool hold_ready = false;  // out ends with a ReadyForQuery that waits for the cache bump
    pg::MessageScanner::Stop stop{};
  };
  ClientScan scan_client();
  ServerScan scan_server();
  awaitable<std::optional<std::string>> forward_client(ClientScan scan);
  awaitable<std::optional<std::string>> forward_server(ServerScan scan);
  awaitable<std::optional<std::string>> read_client(std::size_t need);
  awaitable<std::optional<std::string>> read_server(std::size_t need);
  bool want_release(bool idle_now);
  // Writes client bytes to the server; a reason to end the session when that fails.
  awaitable<std::optional<std::string>> write_to_server(asio::const_buffer b);
  awaitable<std::string> client_message_rejected(const pg::FrameFailure& failure);
  awaitable<std::string> server_read_failed(const error_code& ec);
  void note_pin(routing::Pin pin);
  // Lexer mismatch (issue 17): the server may read this client's SQL unlike libpg_query.
  void note_lexer(std::string_view name, std::string_view value) {
    if (lexer_suspect_ || routing::lexer_agrees(name, value)) return;
    if (ps_) rt_->obs.count_pin(routing::to_string(routing::Pin::kLexer));
    lexer_mismatch("the server reports " + std::string(name) + " " + std::string(value));
  }
  void lexer_mismatch(const std::string& why);
  bool changes_lexer(std::string_view sql);
  awaitable<void> wait_killed();
  awaitable<std::optional<PgError>> wait_while_paused();
  void refresh_config();
  void finish_request(const routing::Completed& c, Clock::time_point now);
  void note_server_message(const pg::Frame& f, Clock::time_point now);
  void fill_info();
  awaitable<bool> send(pg::Buffer b);
  // Errors are queued in one statement and flushed in the next: g++ 12 miscompiles braced
  // temporaries inside a co_await expression (double free), so never co_await f({...}).
  void queue_error(const PgError& e);
  awaitable<bool> flush();
  awaitable<std::optional<pg::Frame>> read_auth_message();
  void kill();
  void log_auth_failure(std::string_view why);
  int pending() const { return ps_ ? ps_->pending() : pending_; }
  char tx_status() const { return ps_ ? ps_->tx_status() : tx_status_; }
  bool server_reusable() const {
    if (to_server_.mid_message() || to_client_.mid_message()) return false;
    if (ps_) return !pinned_ && ps_->idle() && ps_->touched().empty();
    return pending_ == 0 && tx_status_ == 'I';
  }
  // Transaction pooling: the server connection can go back to the pool now.
  bool can_release() const {
    return ps_ && !pinned_ && ps_->idle() && !to_server_.mid_message() &&
           !to_client_.mid_message() && !server_writing_ && !client_writing_ &&
           server_->reader().pending().empty();
  }
  void note_request() {
    if (pending_ == 0) request_started_ = Clock::now();
    ++pending_;
    handle_->idle = false;
  }
  awaitable<std::string> watchdog();

  std::shared_ptr<Runtime> rt_;
  std::shared_ptr<const config::Config> cfg_;
  std::string peer_;
  std::unique_ptr<Stream> client_;
  FramedReader reader_;
  std::shared_ptr<SessionHandle> handle_;
  std::optional<asio::steady_timer> kill_timer_;
  bool killed_ = false;

  std::string user_name_;
  std::string db_name_;
  std::vector<std::pair<std::string, std::string>> startup_params_;
  std::unique_ptr<config::User> trust_user_;  // auth_type trust, a user not in the config
  const config::User* user_ = nullptr;
  const config::Database* db_ = nullptr;
  pg::BackendKeyData key_{0, 0};
  Lease server_;
  bool server_failed_ = false;
  std::shared_ptr<Pool> pool_;
  std::optional<PoolLimits> limits_;
  bool admin_ = false;            // on the admin console
  std::uint64_t generation_ = 0;  // of the configuration cfg_ came from
  std::shared_ptr<const PoolCounters> counters_;
  routing::RequestTracker tracker_;
  Clock::time_point xact_start_{};
  bool xact_open_ = false;
  routing::Settings startup_;  // settings from the startup packet, applied on every server

  // Transaction and statement pooling.
  std::optional<routing::PooledSession> ps_;
  bool statement_mode_ = false;

  // Read routing (transaction and statement pooling, databases with replicas).
  struct RouteNeed {
    enum Kind { kDecided, kNeedMore, kShowLsn, kSetRoutePrimary } kind = kDecided;
    std::size_t need = 0;    // kNeedMore: bytes still missing
    std::size_t size = 0;    // kShowLsn, kSetRoutePrimary: the Query's size
    bool replica = false;    // every buffered request may run on a replica
    bool write = false;      // some buffered request may write
    std::size_t judged = 0;  // bytes of whole messages judged (scan_client need not again)
  };
  struct Verdict {
    bool replica = false;  // may run on a replica (hints included)
    bool write = false;    // may write (or cannot be known)
    bool catalog_change = false;
  };
  RouteNeed route_need();
  Verdict verdict(const pg::Frame& f, bool parse_seen);
  Verdict verdict(const routing::ReadFacts& facts);
  awaitable<std::string> prepare_route();
  int choose_node();
  std::shared_ptr<Pool> replica_pool(int node);
  routing::Lsn min_lsn() const;
  bool can_retry() const { return node_ >= 0 && replayable_ && !replied_ && !killed_ && !retried_; }
  void retry_elsewhere();
  void end_pick();
  // An error on this client's connection to its replica bans the replica at once.
  void ban_replica(const std::string& why) {
    if (node_ >= 0 && replicas_)
      replicas_->report_failure(replicas_->address(node_), std::chrono::steady_clock::now(), why);
  }
  std::string setting(const std::string& name) const {
    const auto& s = ps_->settings();
    auto it = s.find(name);
    return it == s.end() ? std::string() : it->second;
  }
  std::shared_ptr<routing::ReplicaSet> replicas_;  // null: no read routing
  // What only read routing needs, allocated for clients of databases with replicas (so that
  // other idle clients stay small).
  struct Routed {
    std::vector<std::shared_ptr<Pool>> pools;         // by replica index
    std::optional<asio::steady_timer> reroute_timer;  // concurrent relay: wakes the client side
    std::string retry_why;
    pg::Buffer replay;  // the client bytes sent to the replica, to send again elsewhere
    std::optional<routing::PooledSession> ps_saved;  // the session as it was at the checkout
    std::optional<routing::RequestTracker> tracker_saved;
  };
  std::unique_ptr<Routed> routed_;

  // Query cache (cache.redis configured): lookups before a checkout (transaction and statement
  // pooling), fills from the replies, and the relations each transaction wrote, bumped before
  // its client sees the ReadyForQuery that ends it. Allocated at first use.
  struct Cached {
    cache::Lookup fill;  // the miss being filled
    bool filling = false;
    pg::Buffer reply;         // the miss's reply so far
    std::size_t scanned = 0;  // bytes of `reply` walked message by message
    cache::Writes writes;     // this transaction's, bumped at its end
    // Session pooling: the client's named statements (no PooledSession tracks them there).
    std::unordered_map<std::string, std::shared_ptr<const cache::CacheFacts>> named;
    bool server_reserved = false;  // sluice's own query runs on the server: the client side waits
    std::optional<asio::steady_timer> reserve_timer;
  };
  std::unique_ptr<Cached> cached_;
  Cached& cached() {
    if (!cached_) cached_ = std::make_unique<Cached>();
    return *cached_;
  }
  bool cache_on() const { return rt_->cache && cfg_->cache.enabled; }
  struct CacheRequest {
    enum Kind { kNo, kNeedMore, kCandidate } kind = kNo;
    std::size_t need = 0;  // kNeedMore
    std::size_t size = 0;  // kCandidate: bytes of the request
    cache::Request request;
  };
  CacheRequest cache_request();
  awaitable<std::string> try_cache();
  void capture_fill(asio::const_buffer out);
  void end_fill();
  void note_writes(const pg::Frame& f);
  awaitable<void> bump_writes();
  bool writes_pending() const { return cached_ && !cached_->writes.empty(); }
  void set_replicas(std::shared_ptr<routing::ReplicaSet> set) {
    replicas_ = std::move(set);
    if (replicas_ && !routed_) routed_ = std::make_unique<Routed>();
    if (routed_) routed_->pools.clear();
  }
  RouteNeed route_{};                         // for the next checkout
  int node_ = routing::ReplicaSet::kPrimary;  // where the attached server is
  bool picked_ = false;                       // replicas_->finished(node_) is owed
  bool wrote_ = false;                        // this transaction may have written
  bool catalog_changed_ = false;              // ... and changed function volatility
  bool reroute_ = false;          // a non-read waits for the replica to finish, then moves
  bool reroute_allowed_ = false;  // the replica stays in a transaction: it gets the rest
  routing::Lsn last_write_lsn_ = 0;
  Clock::time_point last_write_at_{};
  bool replayable_ = false;      // routed_->replay holds everything sent since the checkout
  bool replied_ = false;         // the client got bytes from this server
  bool retried_ = false;         // once per request
  bool server_gone_ = false;     // the server died between requests: detach before the next one
  bool pinned_ = false;          // the client keeps its server connection to the end
  bool lexer_suspect_ = false;   // its server may lex SQL unlike libpg_query (sticky)
  bool release_wanted_ = false;  // idle, waiting for a write in flight to finish
  bool watchdog_on_ = true;      // any of query/idle_transaction/client_idle timeouts set
  bool parked_ = false;          // idle between transactions, waiting for the client's socket
  bool woke_ = false;            // serve() runs again: the client's socket became readable
  bool logged_in_ = false;       // the relay started (the session's end is logged)
  std::function<void()> cancel_wait_;  // set while waiting in the pool
  bool attached_light_ = false;        // relaying without a wait_killed() coroutine
  bool sequential_ = false;            // in relay_sequential(): one direction at a time
  bool write_lsn_known_ = false;       // the bump fetched this transaction's write LSN already
  bool server_writing_ = false;
  bool client_writing_ = false;
  pg::Buffer to_server_buf_;
  pg::Buffer to_client_buf_;

  pg::Buffer outbox_;  // queued error responses
  pg::MessageScanner to_server_;
  pg::MessageScanner to_client_;
  int pending_ = 0;  // requests sent (Query, Sync, FunctionCall) not yet answered by ReadyForQuery
  Clock::time_point request_started_{};             // when pending_ last rose from 0
  Clock::time_point last_activity_ = Clock::now();  // last client bytes or ReadyForQuery
  std::unique_ptr<PgError> close_error_;            // why the watchdog ended the session
  bool cancel_server_ = false;                      // stop the server's work before closing
  char tx_status_ = 'I';                            // from the last ReadyForQuery
};

// Login, then the admin console or the first attach: nullopt when the relay is to start, else
// why the session ended.
awaitable<std::optional<std::string>> ClientSession::start() {
  auto ex = co_await asio::this_coro::executor;
  kill_timer_.emplace(ex, Clock::time_point::max());
  handle_ = std::make_shared<SessionHandle>(ex);
  handle_->kill = [this] { kill(); };
  fill_info();
  rt_->add_session(handle_);

  std::string reason = "client disconnected during login";
  auto login =
      co_await (startup_and_auth() || sleep_for(cfg_->pool.client_login_timeout) || wait_killed());
  bool logged_in = login.index() == 0 && std::get<0>(login);
  if (login.index() == 1) {
    queue_error({"08P01", "timeout during startup and authentication", {}, {}});
    co_await flush();
  } else if (logged_in && admin_ && !killed_) {
    fill_info();
    handle_->state = ClientState::kActive;
    spdlog::info("client {} user={}: on the admin console", peer_, user_name_);
    AdminClient who;  // named: no braced temporary inside a co_await (g++ 12)
    who.user = user_name_;
    who.full = cfg_->is_admin(user_name_);
    auto r = co_await (run_admin_console(*client_, reader_, rt_, std::move(who)) || wait_killed());
    reason = r.index() == 0 ? std::get<0>(r) : std::string("shutdown");
    logged_in = false;  // logged as an admin session
    spdlog::info("client {} user={}: left the admin console ({})", peer_, user_name_, reason);
  } else if (logged_in && !killed_) {
    bool attached = co_await attach_server();
    logged_in = attached;
  }
  if (logged_in && !killed_) {
    logged_in_ = true;
    spdlog::info("client {} user={} db={}{}: logged in", peer_, user_name_, db_name_,
                 client_->tls() ? " tls" : "");
    co_return std::nullopt;
  }
  co_await finish(std::move(reason));
  co_return std::string();
}

// Relays until the session ends, or parks it: an idle client then holds no coroutine frame,
// only this object and a wait for its socket to become readable, which runs serve() again.
awaitable<void> ClientSession::serve(std::shared_ptr<ClientSession> self) {
  auto reason = co_await self->relay();
  if (reason == kParked) {
    park(std::move(self));
    co_return;
  }
  if (self->close_error_ && !self->to_client_.mid_message()) {
    self->queue_error(*self->close_error_);
    co_await self->flush();
  }
  if (self->cancel_server_ && self->server_) {
    CancelTarget target{self->server_->host(), self->server_->port(), self->server_->key()};
    co_await send_cancel(std::move(target));  // no braced temporary in a co_await (g++ 12)
  }
  co_await self->finish(std::move(reason));
}

void ClientSession::park(std::shared_ptr<ClientSession> self) {
  auto& socket = self->client_->socket();
  self->parked_ = true;  // kill() cancels this wait
  socket.async_wait(tcp::socket::wait_read, [self = std::move(self)](error_code) mutable {
    // A failed wait shows again at the read (or killed_ says why): serve() tells the client.
    self->parked_ = false;
    self->woke_ = true;
    auto ex = self->client_->socket().get_executor();
    asio::co_spawn(ex, serve(std::move(self)), log_exceptions("client session"));
  });
}

// The end of a session: what a shutdown or KILL tells the client, and the log line.
awaitable<void> ClientSession::finish(std::string reason) {
  if (killed_) {
    reason = handle_->admin_kill ? "KILL" : "shutdown";
    if (!to_client_.mid_message()) {
      if (handle_->admin_kill) {
        queue_error({"57P01",
                     "terminating connection due to administrator command (KILL " + db_name_ + ")",
                     {},
                     "the database is paused until an operator runs RESUME on the admin console"});
      } else {
        queue_error({"57P01", "terminating connection because sluice is shutting down", {}, {}});
      }
      co_await flush();
    }
  }
  if (logged_in_)
    spdlog::info("client {} user={} db={}: closed ({})", peer_, user_name_, db_name_, reason);
}

// The one exit path: runs however run() ends, an exception included.
ClientSession::~ClientSession() {
  if (handle_) {
    handle_->kill = nullptr;
    rt_->remove_session(handle_);
  }
  --rt_->clients;
  if (key_.pid != 0) rt_->cancels.remove(key_);
  end_pick();
  end_fill();
  // A pinned server holds LISTENs, locks or temp tables of this client: it is closed, not reused.
  if (server_ && (server_failed_ || pinned_ || !server_reusable())) server_.mark_broken();
  server_.give_back();
  client_->close();
}

void ClientSession::kill() {
  killed_ = true;
  kill_timer_->cancel();
  // Without a wait_killed() coroutine, the pending reads are cancelled and the loops see
  // killed_ before their next read. A write in flight finishes (cancelling it could leave half a
  // message on the socket).
  if (cancel_wait_) cancel_wait_();  // waiting for a server connection
  error_code ec;
  if (parked_ || (attached_light_ && !client_writing_)) client_->socket().cancel(ec);
  if (attached_light_ && server_ && !server_writing_) server_->stream().socket().cancel(ec);
}

awaitable<void> ClientSession::wait_killed() {
  if (!killed_) co_await kill_timer_->async_wait(use_nothrow);
}

awaitable<bool> ClientSession::send(pg::Buffer b) {
  auto ec = co_await client_->write_all(asio::buffer(b));
  co_return !ec;
}

void ClientSession::queue_error(const PgError& e) {
  rt_->obs.count_error(e.sqlstate);
  pg::encode_error_response(outbox_, {"FATAL", e.sqlstate, e.message, e.detail, e.hint});
}

// What SHOW CLIENTS shows of this client; called as login reveals more.
void ClientSession::fill_info() {
  std::lock_guard lock(handle_->mu);
  auto& i = handle_->info;
  error_code ec;
  if (i.addr.empty()) {
    auto remote = client_->socket().remote_endpoint(ec);
    if (!ec) {
      i.addr = remote.address().to_string();
      i.port = remote.port();
    }
    auto local = client_->socket().local_endpoint(ec);
    if (!ec) {
      i.local_addr = local.address().to_string();
      i.local_port = local.port();
    }
  }
  i.user = user_name_;
  i.database = db_name_;
  i.tls = client_->tls();
  i.admin = admin_;
  for (const auto& [k, v] : startup_params_) {
    if (k == "application_name") i.application_name = v;
  }
}

awaitable<bool> ClientSession::flush() {
  if (outbox_.empty()) co_return true;
  pg::Buffer out = std::move(outbox_);
  outbox_.clear();
  bool ok = co_await send(std::move(out));
  co_return ok;
}

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
  startup_ = std::get<routing::Settings>(std::move(settings));
  auto mode = cfg_->pool_mode_for(*db_, *user_);
  if (mode != config::PoolMode::kSession) {
    routing::PooledSession::Options options{cfg_->pool.pin_is_error, &rt_->known_statements,
                                            db_name_ + '\0' + user_->server_user};
    ps_.emplace(rt_->analyses, startup_, std::move(options));
    statement_mode_ = mode == config::PoolMode::kStatement;
  }
  pool_ = rt_->pools.get(*cfg_, *db_, *user_, rt_->server_tls());
  limits_ = PoolLimits::from(*cfg_, *db_, *user_);
  if (ps_) set_replicas(rt_->routes.get(db_name_));
  tracker_.set_identity(routing::sample_identity(db_name_, user_->server_user));
  counters_ = rt_->obs.counters(db_name_, user_name_);
  fill_info();
  handle_->state = ClientState::kActive;
  if (!co_await checkout()) co_return false;
  key_ = rt_->cancels.add_client();
  rt_->cancels.set_target(key_, CancelTarget{server_->host(), server_->port(), server_->key()});
  pg::Buffer out;
  for (const auto& [name, value] : server_->params()) pg::encode_parameter_status(out, name, value);
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

// Gets a server connection from the pool of the node routing chose (the primary unless the
// request only reads and a replica may serve it) and gives it this client's settings.
awaitable<bool> ClientSession::checkout() {
  auto ex = co_await asio::this_coro::executor;
  if (rt_->control.any_paused()) {
    auto refused = co_await wait_while_paused();
    if (killed_) co_return false;
    if (refused) {
      queue_error(std::move(*refused));
      co_await flush();
      co_return false;
    }
  }
  if (rt_->generation.load(std::memory_order_relaxed) != generation_) refresh_config();
  // A replica that fails here is banned and the read goes to the next choice.
  for (std::size_t attempt = 0;; ++attempt) {
    const int node = attempt <= (replicas_ ? replicas_->size() : 0) ? choose_node()
                                                                    : routing::ReplicaSet::kPrimary;
    if (node == kRefused) {
      PgError e{"57P03",
                "no replica of database \"" + db_name_ + "\" can serve reads now",
                {},
                "every replica is banned (SHOW REPLICAS on the admin console says why); "
                "routing.primary_reads / routing.all_replicas_banned decide whether the "
                "primary takes reads then"};
      if (ps_) {
        refused_ = std::make_unique<PgError>(std::move(e));  // relay() answers it and goes on
        co_return false;
      }
      queue_error(e);
      co_await flush();
      co_return false;
    }
    node_ = node;
    auto pool = node < 0 ? pool_ : replica_pool(node);
    auto fail_replica = [&](const std::string& why) {
      spdlog::warn("client {} user={} db={}: replica {} failed ({}): banned, read goes elsewhere",
                   peer_, user_name_, db_name_, replicas_->address(node), why);
      ban_replica(why);
      end_pick();
    };
    if (auto idle = pool->try_acquire(*limits_, ex)) {
      server_ = std::move(*idle);  // the common case: no waiting, no coroutines
    } else {
      // kill() ends the wait through cancel_wait_ (no wait_killed() coroutine per checkout).
      const auto wait_from = Clock::now();
      handle_->wait_since = wait_from.time_since_epoch().count();
      handle_->state = ClientState::kWaiting;
      auto got = co_await pool->acquire(*limits_, &cancel_wait_);
      handle_->state = ClientState::kActive;
      counters_->waits->inc();
      counters_->wait_us->inc(static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - wait_from).count()));
      if (auto* lease = std::get_if<Lease>(&got); lease && ps_) lease->skip_reset();
      if (killed_) co_return false;  // a connection goes straight back, untouched
      if (auto* e = std::get_if<PgError>(&got)) {
        if (node >= 0 && e->sqlstate != "53300") {
          fail_replica(e->message);
          continue;
        }
        spdlog::warn("client {} user={} db={}: no server connection: {}", peer_, user_name_,
                     db_name_, e->message);
        queue_error(std::move(*e));
        co_await flush();
        co_return false;
      }
      server_ = std::move(std::get<Lease>(got));
    }
    // A cancel still on its way to this backend (any client's) lands before it runs anything.
    CancelTarget settling{server_->host(), server_->port(), server_->key()};
    co_await rt_->cancels.wait_settled(std::move(settling), &killed_);
    auto& state = server_->state;
    if (ps_) {
      server_.skip_reset();  // the pooled session's state is tracked instead
      state.set_max_statements(cfg_->pool.max_prepared_statements);
    }
    // Session mode: the reset query left the server at its defaults.
    auto sync = routing::settings_sync(ps_ ? ps_->settings() : startup_,
                                       ps_ ? state.settings : routing::Settings{});
    if (!sync.empty()) {
      auto synced = co_await server_->run(std::move(sync));
      if (auto* e = std::get_if<PgError>(&synced)) {
        server_.mark_broken();  // some settings may have been applied
        if (node >= 0 && e->sqlstate.starts_with("08")) {
          server_.give_back();
          fail_replica(e->message);
          continue;
        }
        queue_error(std::move(*e));
        co_await flush();
        co_return false;
      }
    }
    break;
  }
  if (ps_) ps_->attached(server_->state);
  // A miss is keyed by the role its lookup saw. A reload since then may have changed
  // users[].server_user: what this server answers as another role is not stored under that key.
  if (cached_ && cached_->filling && cached_->fill.role != server_->user()) {
    if (cached_->fill.plan && cached_->fill.plan->counters)
      cached_->fill.plan->counters->skipped_fills++;
    end_fill();
  }
  // The client's startup options and the server's defaults, as this server has them now.
  for (const auto& [name, value] : server_->params()) note_lexer(name, value);
  if (node_ >= 0) {  // a read on a replica: what it needs to run again elsewhere if it breaks
    routed_->ps_saved.emplace(*ps_);
    routed_->tracker_saved.emplace(tracker_);
    routed_->replay.clear();
    replayable_ = !retried_;
    replied_ = false;
  }
  if (key_.pid != 0)
    rt_->cancels.set_target(key_, CancelTarget{server_->host(), server_->port(), server_->key()});
  co_return true;
}

// Where one statement string may run, from its classification, the session's settings and hints.
ClientSession::Verdict ClientSession::verdict(const routing::ReadFacts& f) {
  Verdict v;
  const bool read_only_tx = f.read_only_tx || setting("default_transaction_read_only") == "on";
  v.replica = f.parsed && f.read && !(f.begins && (!read_only_tx || f.read_write_tx)) &&
              !replicas_->may_write(f.functions);
  v.write = !v.replica;
  v.catalog_change = f.catalog_change;
  if (f.hint == routing::Hint::kPrimary) v.replica = false;
  if (f.hint == routing::Hint::kReplica) v.replica = true;
  if (f.hint == routing::Hint::kNone) {
    auto route = setting("sluice.route");
    if (route == "primary") v.replica = false;
    if (route == "replica") v.replica = true;
  }
  return v;
}

// One client message: Query and Parse by their text, Bind of a named statement by the text it
// was prepared with; a Bind of the unnamed statement without its Parse, FunctionCall and COPY
// data cannot be judged and go to the primary.
ClientSession::Verdict ClientSession::verdict(const pg::Frame& f, bool parse_seen) {
  if (lexer_suspect_) return {false, true, false};  // its text may be misread
  std::string_view text;
  routing::StatementPtr stmt;
  switch (f.type) {
    case 'Q': {
      auto body = bytes::as_chars(f.body);
      text = body.substr(0, body.find('\0'));
      break;
    }
    case 'P': {
      auto p = pg::decode_parse(f.body);
      if (!p) return {false, true, false};
      text = p->query;
      break;
    }
    case 'B': {
      auto b = pg::decode_bind(f.body);
      if (!b) return {false, true, false};
      if (b->statement.empty()) {
        if (parse_seen) return {true, false, false};  // judged at its Parse
        return {false, true, false};
      }
      stmt = ps_->statement(b->statement);
      if (!stmt) return {false, true, false};  // the server will say it does not exist
      text = stmt->query;
      break;
    }
    case 'D':
    case 'E':
    case 'S':
    case 'H':
    case 'C':
      return {true, false, false};
    default:
      return {false, true, false};
  }
  auto facts = rt_->reads.get(text);
  return verdict(*facts);
}

// The buffered requests a checkout must place: all reads → a replica may take them.
ClientSession::RouteNeed ClientSession::route_need() {
  RouteNeed n;
  auto data = reader_.pending();
  std::size_t pos = 0;
  bool any = false;
  bool replica = true;
  bool parse_seen = false;
  // Extended-query messages since the last Sync: they run in one implicit transaction that
  // cannot move to another server later, so the route waits for the whole of it.
  bool open = false, flushed = false;
  std::size_t missing = pg::kHeaderSize;  // of the next message, when it is incomplete
  while (data.size() - pos >= pg::kHeaderSize) {
    const char type = static_cast<char>(data[pos]);
    bytes::Reader header(data.subspan(pos + 1, 4));
    const std::uint32_t len = header.u32();
    if (len < 4) return n;  // malformed: primary; the relay reports it
    const std::size_t size = 1 + static_cast<std::size_t>(len);
    if (size > data.size() - pos) {
      if (!any) {
        if (size > kRouteMaxMessage) {  // too large to classify: the primary, as a write
          n.write = true;
          return n;
        }
        n.kind = RouteNeed::kNeedMore;
        n.need = size - (data.size() - pos);
        return n;
      }
      missing = pos + size > kRouteMaxMessage ? 0 : size - (data.size() - pos);
      break;
    }
    if (type == 'S') open = flushed = false;
    if (type == 'P' || type == 'B' || type == 'D' || type == 'C' || type == 'E') open = true;
    if (type == 'H') flushed = open;
    pg::Frame f{type, data.subspan(pos + pg::kHeaderSize, len - 4), size};
    Verdict v;
    if (type == 'Q') {
      auto body = bytes::as_chars(f.body);
      auto text = body.substr(0, body.find('\0'));
      auto facts = rt_->reads.get(text);
      if (!any && size == data.size()) {  // a lone Query sluice may answer or rewrite
        if (facts->show_last_write_lsn) {
          n.kind = RouteNeed::kShowLsn;
          n.size = size;
          return n;
        }
        if (routing::is_set_route_primary(text)) {
          n.kind = RouteNeed::kSetRoutePrimary;
          n.size = size;
          return n;
        }
      }
      v = verdict(*facts);
      if (changes_lexer(text)) v = Verdict{false, true, v.catalog_change};  // what follows
    } else {
      v = verdict(f, parse_seen);
      if (type == 'P') {
        auto p = pg::decode_parse(f.body);
        if (p && changes_lexer(p->query)) v = Verdict{false, true, v.catalog_change};
      }
    }
    if (v.catalog_change) {
      replicas_->catalog_changed();  // until it is fetched again, function calls go to the primary
      catalog_changed_ = true;
    }
    if (type == 'P') parse_seen = true;
    replica = replica && v.replica;
    n.write = n.write || v.write;
    any = true;
    pos += size;
  }
  if (open && !flushed && missing > 0 && data.size() < kRouteMaxMessage) {
    // No Sync or Flush yet: the client still sends (it waits for nothing before either).
    n.kind = RouteNeed::kNeedMore;
    n.need = data.size() - pos >= pg::kHeaderSize ? missing : pg::kHeaderSize - (data.size() - pos);
    n.write = n.replica = false;
    return n;
  }
  // A segment left open (the client waits at a Flush): what it sends next joins that implicit
  // transaction, writes included, so it starts on the primary.
  n.replica = any && replica && !open;
  n.judged = pos;
  return n;
}

// Before a checkout: makes sure the first request is whole, answers what sluice answers itself.
// "" to check out, kAnswered, or why the session ends.
awaitable<std::string> ClientSession::prepare_route() {
  for (;;) {
    route_ = route_need();
    if (route_.kind == RouteNeed::kNeedMore) {
      if (auto end = co_await read_client(route_.need)) co_return *end;
      continue;
    }
    if (route_.kind == RouteNeed::kSetRoutePrimary) {
      // PRIMARY is a reserved word: the server would refuse it unquoted.
      reader_.consume(route_.size);
      pg::Buffer q;
      pg::encode_query(q, "SET sluice.route = 'primary'");
      reader_.unread(q);
      continue;
    }
    if (route_.kind == RouteNeed::kShowLsn) {  // SHOW sluice.last_write_lsn
      reader_.consume(route_.size);
      route_ = RouteNeed{};
      pg::Buffer out;
      pg::Column col;
      col.name = "last_write_lsn";
      col.type_oid = 25;  // text
      col.type_len = -1;
      std::vector<pg::Column> cols{col};
      pg::encode_row_description(out, cols);
      const auto lsn = routing::format_lsn(last_write_lsn_);
      std::vector<std::optional<std::string_view>> row{lsn};
      pg::encode_data_row(out, row);
      pg::encode_command_complete(out, "SHOW");
      pg::encode_ready_for_query(out, 'I');
      if (!co_await send(std::move(out))) co_return "client write failed";
      co_return std::string(kAnswered);
    }
    co_return std::string();
  }
}

// The first buffered request, when the cache may answer it: a lone Query, or an unnamed Parse
// (or a Bind of a named statement) with Bind, Describe portal, Execute of every row and Sync,
// and nothing pipelined after it.
ClientSession::CacheRequest ClientSession::cache_request() {
  CacheRequest r;
  if (setting("sluice.cache") == "off") return r;
  auto data = reader_.pending();
  std::size_t pos = 0;
  std::string& material = r.request.material;
  bool parsed = false, bound = false, executed = false;
  while (pos < data.size()) {
    if (data.size() - pos < pg::kHeaderSize) {
      r.kind = CacheRequest::kNeedMore;
      r.need = pg::kHeaderSize - (data.size() - pos);
      return r;
    }
    const char type = static_cast<char>(data[pos]);
    bytes::Reader header(data.subspan(pos + 1, 4));
    const std::uint32_t len = header.u32();
    if (len < 4) return CacheRequest{};
    const std::size_t size = 1 + static_cast<std::size_t>(len);
    if (size > data.size() - pos) {
      if (pos + size > kRouteMaxMessage) return CacheRequest{};
      r.kind = CacheRequest::kNeedMore;
      r.need = size - (data.size() - pos);
      return r;
    }
    const auto body = data.subspan(pos + pg::kHeaderSize, len - 4);
    const bool last = pos + size == data.size();
    auto types = [&material](const std::vector<std::uint32_t>& oids) {
      for (auto oid : oids) material += std::to_string(oid) + ",";
      material.push_back('\0');
    };
    switch (type) {
      case 'Q': {
        if (pos != 0 || !last) return CacheRequest{};
        auto text = bytes::as_chars(body);
        r.request.sql = text.substr(0, text.find('\0'));
        material = "Q";
        material.append(r.request.sql);
        r.size = size;
        r.kind = CacheRequest::kCandidate;
        break;
      }
      case 'P': {
        auto p = pg::decode_parse(body);
        if (!p || pos != 0 || !p->name.empty()) return CacheRequest{};
        r.request.sql = p->query;
        material = "P";
        material.append(p->query);
        material.push_back('\0');
        types(p->param_types);
        parsed = true;
        break;
      }
      case 'B': {
        auto b = pg::decode_bind(body);
        if (!b || bound || !b->portal.empty()) return CacheRequest{};
        if (b->statement.empty()) {
          if (!parsed) return CacheRequest{};
        } else {
          auto stmt = parsed ? nullptr : ps_->statement(b->statement);
          if (!stmt) return CacheRequest{};
          r.request.sql = stmt->query;
          material = "N";
          material.append(stmt->query);
          material.push_back('\0');
          types(stmt->param_types);
        }
        material.push_back('B');
        material.append(bytes::as_chars(b->rest));
        bound = true;
        break;
      }
      case 'D': {
        auto t = pg::decode_target(body);
        if (!t || !t->name.empty() || executed) return CacheRequest{};
        if (t->kind == 'P' && bound) {
          material += "DP";
        } else if (t->kind == 'S' && parsed && !bound) {
          material += "DS";
        } else {
          return CacheRequest{};
        }
        break;
      }
      case 'E': {
        auto e = pg::decode_execute(body);
        if (!e || !e->portal.empty() || e->max_rows != 0 || !bound || executed)
          return CacheRequest{};
        material.push_back('E');
        executed = true;
        break;
      }
      case 'S':
        if (!executed || !last) return CacheRequest{};
        material.push_back('S');
        r.size = pos + size;
        r.kind = CacheRequest::kCandidate;
        break;
      default:
        return CacheRequest{};
    }
    pos += size;
  }
  if (r.kind != CacheRequest::kCandidate) return CacheRequest{};  // no Sync yet: not ours
  r.request.database = db_name_;
  r.request.role = user_->server_user;
  for (const auto& [name, value] : ps_->settings()) {
    // Settings that cannot change a result stay out of the key.
    if (name == "search_path" || name == "application_name" || name.starts_with("sluice."))
      continue;
    r.request.settings.emplace_back(name, value);
  }
  if (auto path = setting("search_path"); !path.empty()) r.request.search_path = path;
  r.request.strict = !setting("sluice.min_lsn").empty();
  r.request.generation = generation_;
  return r;
}

// Before a checkout: answers the request from the cache when it can. "" to go on to the server
// (a miss is filled from its reply), kAnswered, or why the session ends.
awaitable<std::string> ClientSession::try_cache() {
  CacheRequest req;
  for (;;) {
    req = cache_request();
    if (req.kind != CacheRequest::kNeedMore) break;
    if (auto end = co_await read_client(req.need)) co_return *end;
  }
  if (req.kind != CacheRequest::kCandidate) co_return std::string();
  const auto started = Clock::now();
  auto l = co_await rt_->cache->lookup(std::move(req.request), cfg_->cache);
  if (l.outcome == cache::Lookup::Outcome::kHit) {
    reader_.consume(req.size);
    route_.judged = 0;
    pg::Buffer out;
    out.reserve(l.value->size() + 6);
    out.assign(l.value->begin(), l.value->end());
    pg::encode_ready_for_query(out, 'I');
    const auto bytes = out.size();
    if (!co_await send(std::move(out))) co_return "client write failed";
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    cache::Cache::note_outcome(l, true);
    rt_->obs.observe_cache_hit(seconds);
    const auto& k = *counters_;
    k.queries[static_cast<std::size_t>(routing::Route::kCache)]->inc();
    k.transactions->inc();
    k.sent_bytes->inc(bytes);
    k.query_duration->observe(seconds);
    handle_->request_time = std::time(nullptr);
    co_return std::string(kAnswered);
  }
  if (l.outcome == cache::Lookup::Outcome::kMiss) {
    cache::Cache::note_outcome(l, false);
    auto& c = cached();
    c.fill = std::move(l);
    c.filling = true;
    c.reply.clear();
    c.scanned = 0;
  }
  co_return std::string();
}

// Keeps what the client receives of a miss's reply; at its ReadyForQuery, stores it.
void ClientSession::capture_fill(asio::const_buffer out) {
  auto& c = *cached_;
  const auto* p = static_cast<const std::uint8_t*>(out.data());
  c.reply.insert(c.reply.end(), p, p + out.size());
  if (c.reply.size() > cfg_->cache.max_entry_bytes + 64) {
    if (c.fill.plan && c.fill.plan->counters) c.fill.plan->counters->skipped_fills++;
    end_fill();
    return;
  }
  while (c.reply.size() - c.scanned >= pg::kHeaderSize) {
    bytes::Reader header(std::span(c.reply).subspan(c.scanned + 1, 4));
    const std::size_t size = 1 + static_cast<std::size_t>(header.u32());
    if (size < pg::kHeaderSize || size > c.reply.size() - c.scanned) return;
    if (c.reply[c.scanned] == 'Z') {
      const bool idle = c.reply[c.scanned + 5] == 'I';
      std::string_view reply(reinterpret_cast<const char*>(c.reply.data()), c.scanned);
      if (idle) rt_->cache->store(c.fill, reply, cfg_->cache);
      end_fill();
      return;
    }
    c.scanned += size;
  }
}

void ClientSession::end_fill() {
  if (!cached_ || !cached_->filling) return;
  cached_->filling = false;
  rt_->cache->finish(cached_->fill);
  cached_->fill = cache::Lookup{};
  pg::Buffer().swap(cached_->reply);
}

// Notes what a client message may write, for the bump at the end of its transaction.
void ClientSession::note_writes(const pg::Frame& f) {
  std::shared_ptr<const cache::CacheFacts> facts;
  // The server may read a backslash where libpg_query does not: the analysis cannot be trusted.
  auto misread = [this](std::string_view sql) {
    if (!lexer_suspect_ || sql.find('\\') == std::string_view::npos) return false;
    cached().writes.unknown = true;
    return true;
  };
  switch (f.type) {
    case 'Q': {
      auto body = bytes::as_chars(f.body);
      if (misread(body)) return;
      facts = rt_->cache->facts(body.substr(0, body.find('\0')));
      break;
    }
    case 'P': {
      auto p = pg::decode_parse(f.body);
      if (!p) return;
      if (misread(p->query)) {
        if (cached_) cached_->named.erase(std::string(p->name));  // its Binds: unknown too
        return;
      }
      facts = rt_->cache->facts(p->query);
      if (!ps_ && !p->name.empty()) {  // session pooling: remember the client's statements
        auto& named = cached().named;
        if (named.size() < 10'000 || named.contains(std::string(p->name)))
          named[std::string(p->name)] = facts;
      }
      break;
    }
    case 'B': {
      auto b = pg::decode_bind(f.body);
      if (!b || b->statement.empty()) return;  // the Parse before it was noted
      if (ps_) {
        auto stmt = ps_->statement(b->statement);
        if (!stmt || misread(stmt->query)) return;  // the server will refuse it, or unknown
        facts = rt_->cache->facts(stmt->query);
        break;
      }
      auto& named = cached().named;
      auto it = named.find(std::string(b->statement));
      if (it == named.end()) {
        cached().writes.unknown = true;
        return;
      }
      facts = it->second;
      break;
    }
    default:
      return;
  }
  if (facts->writes.empty() && !facts->writes_unknown && facts->functions.empty()) return;
  std::optional<std::string> path;
  if (ps_) {
    if (auto p = setting("search_path"); !p.empty()) path = p;
  } else {
    // Session pooling does not track the client's SETs: unqualified names cannot be resolved
    // for sure.
    for (const auto& w : facts->writes) {
      if (w.schema.empty()) {
        cached().writes.unknown = true;
        return;
      }
    }
  }
  rt_->cache->note_writes(db_name_, *facts, user_->server_user, path, cached().writes);
}

// Bumps the versions of what this transaction wrote, before its client sees ReadyForQuery.
awaitable<void> ClientSession::bump_writes() {
  auto writes = std::move(cached_->writes);
  cached_->writes.clear();
  // The primary's WAL position after the commit: replicas may fill entries under the new
  // versions only once they have replayed this far. Unknown (the server is busy with pipelined
  // requests, or session pooling): no replica fills those relations' entries.
  routing::Lsn lsn = ~routing::Lsn{0};
  // Quiet: nothing of the client's is on the server connection or on its way (a pipelined
  // request already forwarded, even in part, would take this query's reply as its own).
  const bool quiet = ps_ && ps_->idle() && !to_server_.mid_message() &&
                     server_->reader().pending().empty() && !server_writing_ &&
                     (sequential_ || reader_.pending().empty());
  if (node_ < 0 && quiet) {
    auto& c = cached();
    if (!sequential_) {
      if (!c.reserve_timer) c.reserve_timer.emplace(co_await asio::this_coro::executor);
      c.server_reserved = true;
    }
    auto r = co_await server_->query("SELECT pg_catalog.pg_current_wal_insert_lsn()");
    if (!sequential_) {
      c.server_reserved = false;
      c.reserve_timer->cancel();
    }
    auto* rows = std::get_if<routing::Rows>(&r);
    if (rows && rows->size() == 1 && !(*rows)[0].empty() && (*rows)[0][0]) {
      if (auto parsed = routing::parse_lsn(*(*rows)[0][0])) {
        lsn = *parsed;
        last_write_lsn_ = std::max(last_write_lsn_, lsn);
        write_lsn_known_ = true;
      }
    } else if (!rows) {
      server_failed_ = true;
    }
  }
  if (cfg_->cache.invalidation) co_await rt_->cache->bump(db_name_, writes, lsn);
}

// The node for the next checkout: a replica when the request only reads and one is fresh enough.
int ClientSession::choose_node() {
  if (!replicas_ || pinned_ || !route_.replica) {
    if (route_.write) wrote_ = true;
    return routing::ReplicaSet::kPrimary;
  }
  const auto& r = cfg_->routing;
  if (r.read_your_writes == config::Routing::ReadYourWrites::kWindow &&
      last_write_at_ != Clock::time_point{} &&
      Clock::now() - last_write_at_ < r.read_your_writes_window)
    return routing::ReplicaSet::kPrimary;
  auto pick =
      replicas_->pick(min_lsn(), std::chrono::steady_clock::now(),
                      static_cast<std::uint64_t>(key_.pid) +
                          static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()));
  if (pick.refused) return kRefused;
  picked_ = true;
  return pick.node;
}

// This client must not read anything older than its own last write, nor than the causal token
// it set (SET sluice.min_lsn).
routing::Lsn ClientSession::min_lsn() const {
  routing::Lsn lsn = 0;
  if (cfg_->routing.read_your_writes == config::Routing::ReadYourWrites::kLsn)
    lsn = last_write_lsn_;
  if (auto token = routing::parse_lsn(setting("sluice.min_lsn"))) lsn = std::max(lsn, *token);
  // A cache miss is stored under versions whose writes its source must have replayed.
  if (cached_ && cached_->filling) lsn = std::max(lsn, cached_->fill.min_lsn);
  return lsn;
}

std::shared_ptr<Pool> ClientSession::replica_pool(int node) {
  auto i = static_cast<std::size_t>(node);
  if (routed_->pools.size() <= i) routed_->pools.resize(db_->replicas.size());
  auto& pool = routed_->pools.at(i);
  if (!pool) pool = rt_->pools.get(*cfg_, *db_, *user_, rt_->server_tls(), &db_->replicas.at(i));
  return pool;
}

// The read's replica connection broke before the client saw a byte: ban the replica, put the
// client's messages back, and let routing choose again.
void ClientSession::retry_elsewhere() {
  const auto address = replicas_->address(node_);
  spdlog::warn(
      "client {} user={} db={}: replica {} failed during a read ({}): banned, retrying "
      "the read on another node",
      peer_, user_name_, db_name_, address, routed_->retry_why);
  ban_replica(routed_->retry_why);
  end_pick();
  server_.mark_broken();
  server_.give_back();
  server_failed_ = false;
  if (key_.pid != 0) rt_->cancels.set_target(key_, std::nullopt);
  ps_.emplace(*routed_->ps_saved);
  tracker_ = *routed_->tracker_saved;
  to_server_ = pg::MessageScanner(cfg_->max_message_size);
  to_client_ = pg::MessageScanner(pg::kMaxMessageLength);
  reader_.unread(routed_->replay);
  routed_->replay.clear();
  retried_ = true;
  release_wanted_ = false;
}

void ClientSession::end_pick() {
  if (picked_ && replicas_) replicas_->finished(node_);
  picked_ = false;
}

// PAUSE / KILL: holds the client until RESUME, at most pool.query_wait_timeout (then 53300).
awaitable<std::optional<PgError>> ClientSession::wait_while_paused() {
  if (!rt_->control.paused(db_name_)) co_return std::nullopt;
  auto ex = co_await asio::this_coro::executor;
  const auto from = Clock::now();
  handle_->wait_since = from.time_since_epoch().count();
  handle_->state = ClientState::kWaiting;
  asio::steady_timer timer(ex);
  cancel_wait_ = [&timer] { timer.cancel(); };
  std::optional<PgError> refused;
  while (!killed_ && rt_->control.paused(db_name_)) {
    if (Clock::now() - from >= cfg_->pool.query_wait_timeout) {
      refused = PgError{"53300",
                        "database \"" + db_name_ + "\" stayed paused longer than " +
                            std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                               cfg_->pool.query_wait_timeout)
                                               .count()) +
                            "s",
                        {},
                        "an operator ran PAUSE on the admin console; RESUME releases waiting "
                        "clients (pool.query_wait_timeout bounds the wait)"};
      break;
    }
    timer.expires_after(std::chrono::milliseconds(10));
    co_await timer.async_wait(use_nothrow);
  }
  cancel_wait_ = nullptr;
  handle_->state = ClientState::kActive;
  counters_->wait_us->inc(static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - from).count()));
  co_return refused;
}

// After a reload: the next transaction uses the new pool size, limits and backend, as long as
// the client's database and user still exist (otherwise it keeps the old ones until it leaves).
void ClientSession::refresh_config() {
  generation_ = rt_->generation.load();
  auto cfg = rt_->config();
  const auto* db = cfg->database(db_name_);
  const auto* user = trust_user_ ? trust_user_.get() : cfg->user(user_name_);
  if (!db || !user) return;
  cfg_ = std::move(cfg);
  db_ = db;
  user_ = user;
  pool_ = rt_->pools.get(*cfg_, *db_, *user_, rt_->server_tls());
  limits_ = PoolLimits::from(*cfg_, *db_, *user_);
  if (ps_) set_replicas(rt_->routes.get(db_name_));
  tracker_.set_identity(routing::sample_identity(db_name_, user_->server_user));
  fill_info();
}

// One request answered (ReadyForQuery): statement and transaction counters, timings, insights.
void ClientSession::finish_request(const routing::Completed& c, Clock::time_point now) {
  const auto route = node_ >= 0 ? routing::Route::kReplica : routing::Route::kPrimary;
  const auto& k = *counters_;
  if (c.statements > 0) k.queries[static_cast<std::size_t>(route)]->inc(c.statements);
  k.query_us->inc(static_cast<std::uint64_t>(c.seconds * 1e6));
  k.query_duration->observe(c.seconds);
  if (!xact_open_) {
    xact_open_ = true;
    xact_start_ =
        now - std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(c.seconds));
  }
  if (c.tx_status == 'I') {
    xact_open_ = false;
    k.transactions->inc();
    k.xact_us->inc(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(now - xact_start_).count()));
  }
  handle_->request_time = std::time(nullptr);
  if (!c.entry) return;
  const auto& in = cfg_->insights;
  const double threshold = std::chrono::duration<double>(in.slow_query_threshold).count();
  auto slow = rt_->obs.insights.record(*c.entry, c.seconds, c.rows, c.failed, route, now, threshold,
                                       in.slow_log_interval);
  if (threshold > 0 && c.seconds >= threshold) rt_->obs.count_slow(db_name_);
  if (slow) {
    spdlog::warn(
        "slow query: {:.1f} ms (insights.slow_query_threshold {} ms) db={} user={} "
        "fingerprint={} rows={}{}: {}",
        c.seconds * 1e3, in.slow_query_threshold.count(), db_name_, user_name_, c.entry->id, c.rows,
        slow->calls_since_last > 1
            ? fmt::format(" ({} slow calls since the last report)", slow->calls_since_last)
            : std::string(),
        c.entry->normalized);
    if (in.explain && c.entry->explain_candidate && !user_->server_password.empty()) {
      // Only a text this client's identity sent runs with its credentials.
      auto sample = rt_->obs.insights.sample(
          *c.entry, routing::sample_identity(db_name_, user_->server_user));
      if (sample && rt_->obs.insights.take_explain(*c.entry, now, in.slow_log_interval)) {
        ExplainJob job;
        job.entry = c.entry;
        job.sample = std::move(*sample);
        job.server.host = db_->primary.host;
        job.server.port = db_->primary.port;
        job.server.dbname = db_->primary.dbname;
        job.server.user = user_->server_user;
        job.server.password = user_->server_password;
        routing::apply_server_tls(job.server, cfg_->tls);
        job.seq_scan_rows = in.seq_scan_rows;
        rt_->obs.explainer.submit(std::move(job));
      }
    }
  }
}

// A server message forwarded to the client: statements, errors and request ends.
void ClientSession::note_server_message(const pg::Frame& f, Clock::time_point now) {
  if (f.type == 'E') {
    if (auto e = pg::decode_error_fields(f.body)) rt_->obs.count_error(e->get('C'));
  }
  if (auto done = tracker_.on_server(f, now)) finish_request(*done, now);
}

// Transaction pooling, between transactions: reads back the settings the client changed, then
// returns the server connection to the pool.
awaitable<void> ClientSession::release() {
  auto& state = server_->state;
  if (!ps_->touched().empty()) {
    auto r = co_await server_->query(routing::settings_capture(ps_->capture_names()));
    if (auto* rows = std::get_if<routing::Rows>(&r)) {
      ps_->apply_capture(*rows, state);
    } else {
      server_failed_ = true;
    }
  }
  if (!server_failed_ && !ps_->uncertain().empty()) {
    auto r = co_await server_->query(
        "SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql");
    if (auto* rows = std::get_if<routing::Rows>(&r)) {
      std::set<std::string> present;
      for (const auto& row : *rows) {
        if (!row.empty() && row[0]) present.insert(*row[0]);
      }
      ps_->apply_present(present, state);
    } else {
      server_failed_ = true;
    }
  }
  end_fill();  // a reply not seen whole is not stored
  if (wrote_ && replicas_ && !server_failed_ && node_ < 0) {
    // Read-your-writes: the client's reads wait for replicas that replayed this far.
    if (cfg_->routing.read_your_writes == config::Routing::ReadYourWrites::kLsn &&
        !write_lsn_known_) {
      auto r = co_await server_->query("SELECT pg_catalog.pg_current_wal_insert_lsn()");
      auto* rows = std::get_if<routing::Rows>(&r);
      if (rows && rows->size() == 1 && !(*rows)[0].empty() && (*rows)[0][0]) {
        if (auto lsn = routing::parse_lsn(*(*rows)[0][0]))
          last_write_lsn_ = std::max(last_write_lsn_, *lsn);
      } else if (!rows) {
        server_failed_ = true;
      }
    }
    last_write_at_ = Clock::now();
  }
  if (catalog_changed_ && replicas_) {  // committed now: fetch the catalog again
    replicas_->catalog_changed();
    rt_->obs.monitor.wake();
  }
  if (key_.pid != 0) rt_->cancels.set_target(key_, std::nullopt);
  if (server_failed_) server_.mark_broken();
  server_failed_ = false;
  release_wanted_ = false;
  server_.give_back();
  end_pick();
  node_ = routing::ReplicaSet::kPrimary;
  wrote_ = catalog_changed_ = reroute_ = reroute_allowed_ = server_gone_ = false;
  write_lsn_known_ = false;
  retried_ = replayable_ = false;
  if (routed_) {
    routed_->replay.clear();
    routed_->ps_saved.reset();
    routed_->tracker_saved.reset();
  }
}

// Waits, without a server connection, until the client sends something. A plain-TCP client
// holds no read buffer while it waits: thousands of idle clients cost little memory.
void ClientSession::trim_idle() {
  reader_.release();
  to_server_buf_ = pg::Buffer();
  if (ps_) ps_->trim();
  tracker_.trim();
}

awaitable<std::string> ClientSession::wait_for_client() {
  for (;;) {
    auto data = reader_.pending();
    if (data.size() >= pg::kHeaderSize && data[0] == 'X') co_return "client terminated";
    if (!data.empty()) co_return std::string();
    // Woken from park(): the socket is readable now (a second wait would need another edge).
    if (!client_->tls() && !std::exchange(woke_, false)) {
      trim_idle();
      parked_ = true;  // kill() cancels this wait
      auto [wec] = co_await client_->socket().async_wait(tcp::socket::wait_read, use_nothrow);
      parked_ = false;
      if (killed_) co_return "shutdown";
      if (wec) co_return "client disconnected";
    }
    reader_.shrink(kClientBuffer);
    reader_.ensure(kClientBuffer);
    auto [ec, n] = co_await client_->read_some(reader_.prepare(1));
    reader_.commit(n);
    if (ec) co_return "client disconnected";
    counters_->received_bytes->inc(n);
    last_activity_ = Clock::now();
  }
}

awaitable<std::string> ClientSession::relay() {
  for (;;) {
    if (!server_) {
      if (!woke_ && parkable() && reader_.pending().empty()) {
        trim_idle();
        co_return std::string(kParked);
      }
      auto why = co_await wait_detached();
      if (!why.empty()) co_return why;
      if (ps_ && !pinned_) {
        auto local = co_await answer_detached();
        if (local == kAnswered) continue;
        if (!local.empty()) co_return local;
      }
      if (ps_ && !pinned_ && cache_on()) {
        auto cached = co_await try_cache();
        if (cached == kAnswered) continue;
        if (!cached.empty()) co_return cached;
      }
      if (replicas_) {
        auto routed = co_await prepare_route();
        if (routed == kAnswered) continue;
        if (!routed.empty()) co_return routed;
      }
      if (!co_await checkout()) {
        if (!refused_) co_return "no server connection";
        auto refused = std::move(*refused_);  // named: no temporary inside a co_await (g++ 12)
        refused_.reset();
        if (!co_await refuse_request(refused)) co_return "client write failed";
        continue;
      }
    }
    std::string reason(kConcurrent);
    if (ps_ && !watchdog_on_ && !pinned_) {
      attached_light_ = true;  // kill() cancels the pending read
      auto sequential = co_await relay_sequential();
      attached_light_ = false;
      reason = killed_ ? std::string("shutdown") : std::move(sequential);
    }
    if (reason == kConcurrent) {
      auto concurrent = co_await relay_attached();
      reason = std::move(concurrent);
    }
    if (reason == kRetry) {
      retry_elsewhere();
      continue;
    }
    if (reason == kGone) reason = kReleased;  // sequential: nothing was read from the client
    if (reason != kReleased) co_return reason;
    co_await release();
  }
}

// Without a server: answers a request of Parses of statements known to parse (and Closes), so a
// client blocked in a synchronous prepare never waits for servers other clients of its thread
// hold. "" when a server must answer, kAnswered, or why the session ends.
awaitable<std::string> ClientSession::answer_detached() {
  for (;;) {
    pg::Buffer out;
    auto data = reader_.pending();
    auto a = ps_->answer_detached(data, out);
    if (a.kind == routing::PooledSession::LocalAnswer::kNo) co_return std::string();
    if (a.kind == routing::PooledSession::LocalAnswer::kNeedMore) {
      if (auto end = co_await read_client(a.need)) co_return *end;
      continue;
    }
    for (std::size_t pos = 0; pos < a.consumed;) {
      auto f = std::get<pg::Frame>(pg::next_frame(data.subspan(pos)));
      tracker_.on_answered(f);
      pos += f.size;
    }
    reader_.consume(a.consumed);
    counters_->sent_bytes->inc(out.size());
    if (!co_await send(std::move(out))) co_return "client write failed";
    co_return std::string(kAnswered);
  }
}

// Drops the client's first request (a Query, or extended messages through their Sync; routing
// judged it whole) and answers it with `e` and ReadyForQuery.
awaitable<bool> ClientSession::refuse_request(const PgError& e) {
  auto data = reader_.pending();
  std::size_t pos = 0;
  while (data.size() - pos >= pg::kHeaderSize) {
    const char type = static_cast<char>(data[pos]);
    bytes::Reader header(data.subspan(pos + 1, 4));
    const std::size_t size = 1 + static_cast<std::size_t>(header.u32());
    if (size < pg::kHeaderSize || size > data.size() - pos) break;
    pos += size;
    if (type == 'Q' || type == 'S') break;
  }
  reader_.consume(pos);
  route_ = RouteNeed{};
  rt_->obs.count_error(e.sqlstate);
  pg::Buffer out;
  pg::encode_error_response(out, {"ERROR", e.sqlstate, e.message, e.detail, e.hint});
  pg::encode_ready_for_query(out, 'I');
  co_return co_await send(std::move(out));
}

// Between transactions: "" once the client sent something, else why the session ends.
awaitable<std::string> ClientSession::wait_detached() {
  if (killed_) co_return "shutdown";
  if (cfg_->pool.client_idle_timeout.count() == 0 && !client_->tls()) {
    // No timer and no parallel group: an idle client costs one small coroutine frame, and
    // kill() cancels the socket wait.
    auto why = co_await wait_for_client();
    co_return why;
  }
  if (watchdog_on_) {
    auto w = co_await (wait_for_client() || watchdog() || wait_killed());
    if (w.index() == 0) co_return std::get<0>(w);
    if (w.index() == 1) co_return std::get<1>(w);
    co_return "shutdown";
  }
  auto w = co_await (wait_for_client() || wait_killed());  // one coroutine frame fewer
  if (w.index() == 0) co_return std::get<0>(w);
  co_return "shutdown";
}

// Relays while a server connection is attached; kReleased when it went back to the pool.
// Each result is initialised from its co_await in its own statement: g++ 12 miscompiles
// `r = co_await ...` assignments and `c ? co_await a : co_await b` (double free).
awaitable<std::string> ClientSession::relay_attached() {
  auto reason = [](auto& r) {
    return std::visit(
        [](auto& v) -> std::string {
          if constexpr (std::is_same_v<std::decay_t<decltype(v)>, std::monostate>) {
            return "shutdown";  // wait_killed
          } else {
            return v;
          }
        },
        r);
  };
  if (ps_ && !watchdog_on_) {
    // kill() cancels both sockets' operations instead of a third coroutine per transaction.
    attached_light_ = true;
    auto r = co_await (client_to_server_pooled() || server_to_client_pooled());
    attached_light_ = false;
    if (killed_) co_return "shutdown";
    co_return reason(r);
  }
  if (ps_) {
    auto r = co_await (client_to_server_pooled() || server_to_client_pooled() || watchdog() ||
                       wait_killed());
    co_return reason(r);
  }
  auto r = co_await (client_to_server() || server_to_client() || watchdog() || wait_killed());
  co_return reason(r);
}

void ClientSession::note_pin(routing::Pin pin) {
  rt_->obs.count_pin(routing::to_string(pin));
  if (cfg_->pool.pin_is_error) {
    spdlog::info("client {} user={} db={}: refused {} (pool.pinning: error)", peer_, user_name_,
                 db_name_, routing::to_string(pin));
    return;
  }
  if (pin == routing::Pin::kLexer) {
    lexer_mismatch("it set standard_conforming_strings or client_encoding");
    return;
  }
  if (!pinned_)
    spdlog::info("client {} user={} db={}: pinned to its server connection ({})", peer_, user_name_,
                 db_name_, routing::to_string(pin));
  pinned_ = true;
}

// The server may lex this client's SQL unlike libpg_query (standard_conforming_strings off, a
// client-only encoding), so sluice's analyses of it may be wrong: from now on it keeps its
// server connection (no routing, no replays; a pinned client is never cached) and its
// statements with a backslash count as writing anything. Pinned even with pool.pinning: error
// when the server reported it: that has happened already. Never lifted for this client.
void ClientSession::lexer_mismatch(const std::string& why) {
  if (lexer_suspect_) return;
  lexer_suspect_ = true;
  spdlog::info(
      "client {} user={} db={}: {}: sluice's parser cannot read its SQL as the server "
      "does; {}",
      peer_, user_name_, db_name_, why,
      ps_ ? "pinned to its server connection, never cached"
          : "its statements with a backslash count as writing anything");
  if (ps_) pinned_ = true;
}

// A client message that may make the server lex what follows unlike libpg_query (the message
// itself is lexed before it runs: its analysis is right).
bool ClientSession::changes_lexer(std::string_view sql) {
  if (!routing::may_affect_session(sql)) return false;
  auto a = rt_->analyses.get(sql);
  return std::find(a->pins.begin(), a->pins.end(), routing::Pin::kLexer) != a->pins.end();
}

awaitable<std::optional<std::string>> ClientSession::write_to_server(asio::const_buffer b) {
  server_writing_ = true;
  auto [ec, written] = co_await server_->stream().write(b);
  server_writing_ = false;
  if (ec == asio::error::operation_aborted) {  // the server side ended mid-write
    server_failed_ = true;
    co_return "cancelled";
  }
  if (ec && can_retry()) {
    server_failed_ = true;
    routed_->retry_why = "write failed: " + ec.message();
    co_return std::string(kRetry);
  }
  if (ec) {
    server_failed_ = true;
    ban_replica("write failed: " + ec.message());
    queue_error({"08006", "lost the connection to the server: " + ec.message(), {}, {}});
    co_await flush();
    co_return "server write failed";
  }
  co_return std::nullopt;
}

awaitable<std::string> ClientSession::client_message_rejected(const pg::FrameFailure& failure) {
  spdlog::warn("client {}: message length {} rejected: {} (limits.max_message_size={})", peer_,
               failure.declared_length, pg::describe(failure.error), cfg_->max_message_size);
  queue_error({"08P01",
               "invalid message length from client",
               {},
               "messages are capped by limits.max_message_size"});
  co_await flush();
  co_return "protocol violation";
}

awaitable<std::string> ClientSession::server_read_failed(const error_code& ec) {
  if (ec == asio::error::operation_aborted) co_return "cancelled";  // the other direction ended
  server_failed_ = true;
  if (can_retry()) {
    routed_->retry_why = "connection lost: " + ec.message();
    co_return std::string(kRetry);
  }
  ban_replica("connection lost: " + ec.message());
  if (ps_ && ps_->pending() == 0 && ps_->idle() && !to_client_.mid_message()) {
    server_gone_ = true;  // between requests: the next one gets another server
    co_return std::string(kGone);
  }
  if (!to_client_.mid_message()) {
    queue_error({"08006",
                 "server closed the connection unexpectedly",
                 {},
                 "the server may have been restarted or terminated this backend"});
    co_await flush();
  }
  co_return "server disconnected";
}

// Session pooling: bytes pass through; only request boundaries are counted.
awaitable<std::string> ClientSession::client_to_server() {
  for (;;) {
    auto data = reader_.pending();
    std::size_t forward = 0;
    pg::MessageScanner::Stop stop{};
    const auto now = Clock::now();
    for (;;) {  // inspected messages are noted and forwarded in the same write
      stop = to_server_.scan(data.subspan(forward), kFromClient, [](const pg::Header&) {});
      forward += stop.offset;
      if (stop.kind != pg::MessageScanner::Stop::kInspect || stop.frame.type == 'X') break;
      const auto type = stop.frame.type;
      if (type == 'Q' || type == 'S' || type == 'F') note_request();
      if (rt_->cache && (type == 'Q' || type == 'P' || type == 'B')) note_writes(stop.frame);
      if (rt_->cache && !lexer_suspect_ && (type == 'Q' || type == 'P')) {
        std::string_view sql = bytes::as_chars(stop.frame.body);
        if (type == 'P') {
          auto p = pg::decode_parse(stop.frame.body);
          sql = p ? p->query : std::string_view();
        }
        if (changes_lexer(sql.substr(0, sql.find('\0'))))  // before the next message is noted
          lexer_mismatch("it set standard_conforming_strings or client_encoding");
      }
      tracker_.on_client(stop.frame, now);
      forward += stop.frame.size;
    }
    if (forward > 0) {
      if (auto failed = co_await write_to_server(asio::buffer(data.data(), forward)))
        co_return *failed;
      reader_.consume(forward);
    }
    if (stop.kind == pg::MessageScanner::Stop::kInspect) co_return "client terminated";  // 'X'
    if (stop.kind == pg::MessageScanner::Stop::kError) {
      auto reason = co_await client_message_rejected(stop.failure);
      co_return reason;
    }
    reader_.shrink(kClientBuffer);
    auto [ec, n] = co_await client_->read_some(reader_.prepare(stop.need));
    reader_.commit(n);
    if (ec) co_return "client disconnected";
    counters_->received_bytes->inc(n);
    last_activity_ = Clock::now();
  }
}

awaitable<std::string> ClientSession::server_to_client() {
  auto& in = server_->reader();
  for (;;) {
    auto data = in.pending();
    std::size_t forward = 0;
    pg::MessageScanner::Stop stop{};
    const auto now = Clock::now();
    bool hold = false;  // the ReadyForQuery ending a transaction that wrote waits for the bump
    for (;;) {          // consume inspected messages in place; forward everything in one write
      stop = to_client_.scan(data.subspan(forward), kFromServer, [](const pg::Header&) {});
      forward += stop.offset;
      if (stop.kind != pg::MessageScanner::Stop::kInspect) break;
      if (stop.frame.type != 'S') note_server_message(stop.frame, now);
      if (stop.frame.type == 'Z') {
        tx_status_ = pg::decode_ready_for_query(stop.frame.body).value_or('E');
        if (pending_ > 0) --pending_;
        last_activity_ = Clock::now();
        handle_->idle = pending_ == 0 && tx_status_ == 'I';
        hold = writes_pending() && tx_status_ == 'I' && pending_ == 0;
      } else if (stop.frame.type == 'S') {
        if (auto p = pg::decode_parameter_status(stop.frame.body)) {
          server_->set_param(p->name, p->value);
          note_lexer(p->name, p->value);
        }
      }
      forward += stop.frame.size;
      if (hold) break;
    }
    std::array<char, 6> ready{};
    if (hold) std::memcpy(ready.data(), data.data() + forward - ready.size(), ready.size());
    if (const std::size_t n = forward - (hold ? ready.size() : 0); n > 0) {
      auto [ec, written] = co_await client_->write(asio::buffer(data.data(), n));
      if (ec) co_return "client write failed";
      counters_->sent_bytes->inc(written);
    }
    in.consume(forward);
    if (hold) {
      co_await bump_writes();
      auto [ec, written] = co_await client_->write(asio::buffer(ready));
      if (ec) co_return "client write failed";
      counters_->sent_bytes->inc(written);
      continue;
    }
    if (stop.kind == pg::MessageScanner::Stop::kError) {
      server_failed_ = true;
      queue_error({"08P01", "server sent an invalid message length", {}, {}});
      co_await flush();
      co_return "server protocol violation";
    }
    in.shrink(ServerConn::kReadBuffer);
    auto [ec, n] = co_await server_->stream().read_some(in.prepare(stop.need));
    in.commit(n);
    if (ec) {
      auto reason = co_await server_read_failed(ec);
      co_return reason;
    }
  }
}

// Transaction pooling, one step client → server: moves the client's buffered messages into
// to_server_buf_ (statement names rewritten, requests tracked), consuming them from reader_.
ClientSession::ClientScan ClientSession::scan_client() {
  auto data = reader_.pending();
  std::size_t pos = 0;
  ClientScan result;
  const int before = ps_->pending();
  const auto now = Clock::now();
  for (;;) {
    auto stop = to_server_.scan(data.subspan(pos), kFromClientPooled,
                                [this](const pg::Header& h) { ps_->on_client_passed(h.type); });
    to_server_buf_.insert(to_server_buf_.end(), data.begin() + static_cast<std::ptrdiff_t>(pos),
                          data.begin() + static_cast<std::ptrdiff_t>(pos + stop.offset));
    pos += stop.offset;
    if (stop.kind == pg::MessageScanner::Stop::kNeedMore) {
      result.need = stop.need;
      break;
    }
    if (stop.kind == pg::MessageScanner::Stop::kError) {
      result.kind = ClientScan::kTooLong;
      result.failure = stop.failure;
      break;
    }
    if (stop.frame.type == 'X') {
      result.kind = ClientScan::kTerminate;
      break;
    }
    const auto type = stop.frame.type;
    const bool judged = pos < route_.judged;  // route_need() saw this message at the checkout
    if (replicas_ && !judged && (type == 'Q' || type == 'P' || type == 'B')) {
      if (node_ >= 0) {
        // A request that may write, pipelined after reads on a replica: it waits until the
        // replica has answered, then goes to the primary (unless the replica is then inside a
        // transaction, which keeps it).
        if (!reroute_allowed_ && !ps_->unsynced() && !verdict(stop.frame, false).replica) {
          result.kind = ClientScan::kReroute;
          reroute_ = true;
          break;
        }
      } else if (!wrote_) {
        auto v = verdict(stop.frame, true);
        wrote_ = v.write;
        catalog_changed_ = catalog_changed_ || v.catalog_change;
      }
    }
    if (rt_->cache && (type == 'Q' || type == 'P' || type == 'B')) note_writes(stop.frame);
    tracker_.on_client(stop.frame, now);
    auto outcome = ps_->on_client(stop.frame, server_->state, to_server_buf_);
    pos += stop.frame.size;
    if (outcome.bad) {
      result.kind = ClientScan::kBad;
      break;
    }
    if (outcome.pin) note_pin(*outcome.pin);
  }
  if (replayable_) {  // a read on a replica keeps what it sent, to send it elsewhere if it breaks
    routed_->replay.insert(routed_->replay.end(), data.begin(),
                           data.begin() + static_cast<std::ptrdiff_t>(pos));
    if (routed_->replay.size() > kMaxReplay || to_server_.mid_message()) {
      replayable_ = false;
      pg::Buffer().swap(routed_->replay);
    }
  }
  reader_.consume(pos);  // all of it is in to_server_buf_ now
  route_.judged -= std::min(route_.judged, pos);
  if (before == 0 && ps_->pending() > 0) request_started_ = Clock::now();
  if (!ps_->idle()) handle_->idle = false;
  return result;
}

// Writes to_server_buf_ and reacts to what scan_client() found; a reason to end the session.
awaitable<std::optional<std::string>> ClientSession::forward_client(ClientScan scan) {
  if (!to_server_buf_.empty()) {
    if (auto failed = co_await write_to_server(asio::buffer(to_server_buf_))) co_return failed;
    to_server_buf_.clear();
  }
  switch (scan.kind) {
    case ClientScan::kBad: {
      queue_error({"08P01", "invalid extended-query message from client", {}, {}});
      co_await flush();
      co_return "protocol violation";
    }
    case ClientScan::kTerminate:
      co_return "client terminated";
    case ClientScan::kTooLong: {
      auto reason = co_await client_message_rejected(scan.failure);
      co_return reason;
    }
    default:
      co_return std::nullopt;
  }
}

// Reads more client bytes (at least `need` when known); a reason to end the session.
awaitable<std::optional<std::string>> ClientSession::read_client(std::size_t need) {
  if (killed_) co_return "shutdown";
  reader_.shrink(kClientBuffer);
  reader_.ensure(kClientBuffer);
  auto [ec, n] = co_await client_->read_some(reader_.prepare(need));
  reader_.commit(n);
  if (ec) co_return "client disconnected";
  counters_->received_bytes->inc(n);
  last_activity_ = Clock::now();
  co_return std::nullopt;
}

// One step server → client over what the server sent so far: replies to sluice's own messages
// are dropped, the rest forwarded as one buffer (zero-copy while nothing was dropped).
ClientSession::ServerScan ClientSession::scan_server() {
  auto data = server_->reader().pending();
  ServerScan r;
  std::size_t kept = 0;  // forwarded bytes; == consumed while nothing was dropped
  to_client_buf_.clear();
  auto keep = [&](std::size_t from, std::size_t n) {
    if (n == 0) return;
    if (to_client_buf_.empty() && kept == from) {
      kept += n;  // still one contiguous run from the start: no copy
      return;
    }
    if (to_client_buf_.empty())  // first gap: copy the run before it, then append
      to_client_buf_.assign(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(kept));
    to_client_buf_.insert(to_client_buf_.end(), data.begin() + static_cast<std::ptrdiff_t>(from),
                          data.begin() + static_cast<std::ptrdiff_t>(from + n));
  };
  std::size_t& pos = r.consumed;
  const auto now = Clock::now();
  for (;;) {
    const auto& want = ps_->swallowing() ? kEveryMessage
                       : node_ >= 0      ? kFromReplica
                                         : kFromServerPooled;
    r.stop = to_client_.scan(data.subspan(pos), want, [](const pg::Header&) {});
    keep(pos, r.stop.offset);
    pos += r.stop.offset;
    if (r.stop.kind != pg::MessageScanner::Stop::kInspect) break;
    const auto& f = r.stop.frame;
    if ((f.type == 'N' || f.type == 'E') && node_ >= 0 && replica_going_away(f)) {
      if (can_retry()) {
        r.retry = true;  // nothing of this reply reaches the client
        break;
      }
      if (ps_->pending() == 0 && ps_->idle()) {
        r.gone = true;  // no request in flight: the client need not hear of it
        break;
      }
    }
    if (f.type == 'N' && !ps_->swallowing()) {  // a notice passed on
      keep(pos, f.size);
      pos += f.size;
      continue;
    }
    auto verdict = ps_->on_server(f, server_->state);
    if (verdict == routing::PooledSession::Verdict::kDesync) {
      r.desync = true;
      break;
    }
    if (f.type == 'S') {
      if (auto p = pg::decode_parameter_status(f.body)) {
        server_->set_param(p->name, p->value);
        note_lexer(p->name, p->value);
      }
    }
    const bool forward = verdict == routing::PooledSession::Verdict::kForward;
    if (forward && (f.type == 'C' || f.type == 'E' || f.type == 'Z')) note_server_message(f, now);
    if (forward && (f.type == 'G' || f.type == 'W')) r.copy_in = true;
    if (f.type == 'Z' && forward && statement_mode_ && ps_->tx_status() != 'I') {
      r.tx_refused = true;  // the client gets the error in place of this ReadyForQuery
      pos += f.size;
      break;
    }
    if (forward) keep(pos, f.size);
    pos += f.size;
    if (f.type == 'Z' && forward) {
      last_activity_ = Clock::now();
      handle_->idle = ps_->pending() == 0 && ps_->tx_status() == 'I';
      // The end of a transaction that wrote (and of every request sent): its client waits for
      // the cache bump.
      r.hold_ready = writes_pending() && ps_->tx_status() == 'I' && ps_->pending() == 0;
      if (ps_->idle() || r.hold_ready) {
        r.idle_now = ps_->idle();
        break;
      }
    }
  }
  if (r.retry) {  // nothing goes to the client
    kept = 0;
    to_client_buf_.clear();
  }
  r.out = to_client_buf_.empty() ? asio::buffer(data.data(), kept) : asio::buffer(to_client_buf_);
  return r;
}

// Writes what scan_server() kept, consumes what it read; a reason to end the session.
awaitable<std::optional<std::string>> ClientSession::forward_server(ServerScan scan) {
  if (scan.retry) {
    server_failed_ = true;
    routed_->retry_why = "the server is shutting down";
    co_return std::string(kRetry);
  }
  std::array<char, 6> ready{};  // a ReadyForQuery held back for the cache bump
  if (scan.out.size() > 0) {
    replied_ = true;
    auto out = scan.out;
    if (scan.hold_ready) {
      std::memcpy(ready.data(), static_cast<const char*>(out.data()) + out.size() - ready.size(),
                  ready.size());
      out = asio::buffer(out.data(), out.size() - ready.size());
    }
    if (cached_ && cached_->filling) capture_fill(scan.out);
    client_writing_ = true;
    auto [ec, written] = co_await client_->write(out);
    client_writing_ = false;
    if (ec) co_return "client write failed";
    counters_->sent_bytes->inc(written);
  }
  if (scan.gone) {
    server_failed_ = server_gone_ = true;
    ban_replica("the server is shutting down");
    co_return std::string(kGone);
  }
  server_->reader().consume(scan.consumed);
  if (scan.hold_ready) {
    co_await bump_writes();
    client_writing_ = true;
    auto [ec, written] = co_await client_->write(asio::buffer(ready));
    client_writing_ = false;
    if (ec) co_return "client write failed";
    counters_->sent_bytes->inc(written);
  }
  if (scan.desync) {
    server_failed_ = true;
    spdlog::error("client {} user={} db={}: server reply does not match the requests sent", peer_,
                  user_name_, db_name_);
    queue_error({"08P01", "sluice lost track of the server's replies; reconnect", {}, {}});
    co_await flush();
    co_return "server reply out of sync";
  }
  if (scan.tx_refused) {
    server_failed_ = true;  // closing it ends the transaction on the server
    queue_error({"0A000",
                 "transaction blocks not allowed in statement pooling mode",
                 {},
                 "use pool mode transaction for clients that run BEGIN ... COMMIT"});
    co_await flush();
    co_return "transaction in statement pooling";
  }
  if (scan.stop.kind == pg::MessageScanner::Stop::kError) {
    server_failed_ = true;
    queue_error({"08P01", "server sent an invalid message length", {}, {}});
    co_await flush();
    co_return "server protocol violation";
  }
  co_return std::nullopt;
}

// Reads more server bytes; a reason to end the session.
awaitable<std::optional<std::string>> ClientSession::read_server(std::size_t need) {
  if (killed_) co_return "shutdown";
  auto& in = server_->reader();
  in.shrink(ServerConn::kReadBuffer);
  auto [ec, n] = co_await server_->stream().read_some(in.prepare(need));
  in.commit(n);
  if (ec) {
    auto reason = co_await server_read_failed(ec);
    co_return reason;
  }
  co_return std::nullopt;
}

// True when the server connection can go back now, or should once a write in flight ends.
bool ClientSession::want_release(bool idle_now) {
  if (idle_now) release_wanted_ = true;
  if (release_wanted_ && !ps_->idle()) release_wanted_ = false;
  return release_wanted_ && can_release();
}

// Transaction pooling, the common shape without coroutines spawned per transaction: forward
// the client's requests, then relay the replies until they are all answered, then the client's
// next requests. Returns kConcurrent for what needs both directions at once (COPY FROM STDIN,
// Flush-driven batches, large pipelines, pinned sessions), kReleased at the end of a
// transaction.
awaitable<std::string> ClientSession::relay_sequential() {
  sequential_ = true;
  auto result = co_await relay_sequential_steps();
  sequential_ = false;
  co_return result;
}

awaitable<std::string> ClientSession::relay_sequential_steps() {
  for (;;) {
    auto scan = scan_client();
    bool large = to_server_buf_.size() > kSequentialBatch;
    if (scan.kind == ClientScan::kNeedMore &&
        (large || pinned_ || ps_->unsynced() || to_server_.mid_message()))
      co_return kConcurrent;  // it writes what scan_client() buffered first
    const bool sent = !to_server_buf_.empty();
    if (auto end = co_await forward_client(scan)) co_return *end;
    while (ps_->pending() > 0) {
      auto answer = scan_server();
      if (auto end = co_await forward_server(answer)) co_return *end;
      if (answer.copy_in) co_return kConcurrent;  // the client sends data now
      if (answer.stop.kind == pg::MessageScanner::Stop::kInspect) continue;  // more buffered
      if (ps_->pending() == 0) break;
      if (auto end = co_await read_server(answer.stop.need)) co_return *end;
    }
    if (scan.kind == ClientScan::kReroute) {
      if (ps_->idle() && can_release()) co_return std::string(kReleased);  // the next checkout
      reroute_allowed_ = true;  // the replica is inside a transaction: it keeps the request
      continue;
    }
    // Nothing sent (a partial message so far): read on rather than release and re-acquire.
    if (sent && want_release(ps_->idle())) co_return kReleased;
    if (!server_->reader().pending().empty()) co_return kConcurrent;  // unexpected extra bytes
    if (sent && !reader_.pending().empty()) continue;  // the client pipelined more: scan it
    if (auto end = co_await read_client(scan.need)) co_return *end;
  }
}

// Transaction pooling, client → server, concurrently with server_to_client_pooled().
awaitable<std::string> ClientSession::client_to_server_pooled() {
  for (;;) {
    if (server_gone_) co_return std::string(kReleased);  // the next request goes elsewhere
    while (cached_ && cached_->server_reserved) {        // sluice's own query is on the server
      auto& timer = *cached_->reserve_timer;
      timer.expires_at(asio::steady_timer::time_point::max());
      co_await timer.async_wait(use_nothrow);
      if (killed_) co_return "shutdown";
    }
    auto scan = scan_client();
    if (auto end = co_await forward_client(scan)) co_return *end;
    if (want_release(false)) co_return std::string(kReleased);
    if (scan.kind == ClientScan::kReroute) {
      if (ps_->pending() == 0) {  // the replica answered everything already
        if (ps_->idle() && can_release()) co_return std::string(kReleased);
        reroute_allowed_ = true;
        reroute_ = false;
        continue;
      }
      // server_to_client_pooled() wakes this once the replica has answered.
      if (!routed_->reroute_timer) {
        auto ex = co_await asio::this_coro::executor;
        routed_->reroute_timer.emplace(ex);
      }
      routed_->reroute_timer->expires_at(asio::steady_timer::time_point::max());
      co_await routed_->reroute_timer->async_wait(use_nothrow);
      if (killed_) co_return "shutdown";
      continue;
    }
    if (auto end = co_await read_client(scan.need)) co_return *end;
  }
}

// Transaction pooling, server → client: at ReadyForQuery outside a transaction the server
// connection is released.
awaitable<std::string> ClientSession::server_to_client_pooled() {
  for (;;) {
    auto scan = scan_server();
    if (auto end = co_await forward_server(scan)) {
      if (*end == kGone) break;
      co_return *end;
    }
    if (want_release(scan.idle_now)) co_return std::string(kReleased);
    if (reroute_ && ps_->pending() == 0) {  // a request waits to move off this replica
      if (ps_->idle() && can_release()) co_return std::string(kReleased);
      reroute_allowed_ = true;
      reroute_ = false;
      if (routed_->reroute_timer) routed_->reroute_timer->cancel();
    }
    if (scan.stop.kind == pg::MessageScanner::Stop::kInspect &&
        !server_->reader().pending().empty())
      continue;
    if (auto end = co_await read_server(scan.stop.need)) {
      if (*end == kGone) break;
      co_return *end;
    }
  }
  // The server went away between requests: the client side detaches before the client's next
  // request (it must not be cut short while it may hold bytes it read from the client).
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer parked(ex, asio::steady_timer::time_point::max());
  co_await parked.async_wait(use_nothrow);
  co_return "cancelled";
}

// Enforces pool.query_timeout, idle_transaction_timeout and client_idle_timeout. Completes only
// when one fires (the relay then ends); never completes when all three are off.
awaitable<std::string> ClientSession::watchdog() {
  const auto& p = cfg_->pool;
  auto ex = co_await asio::this_coro::executor;
  std::vector<Clock::duration> on;
  for (auto d : {p.query_timeout, p.idle_transaction_timeout, p.client_idle_timeout}) {
    if (d.count() > 0) on.push_back(d);
  }
  if (on.empty()) {
    asio::steady_timer forever(ex, Clock::time_point::max());
    co_await forever.async_wait(use_nothrow);
    co_return "cancelled";
  }
  // Check often enough to act within a quarter of the shortest timeout (50 ms .. 1 s).
  auto tick = std::clamp<Clock::duration>(*std::min_element(on.begin(), on.end()) / 4,
                                          std::chrono::milliseconds(50), std::chrono::seconds(1));
  auto expired = [](Clock::duration limit, Clock::time_point since) {
    return limit.count() > 0 && Clock::now() - since >= limit;
  };
  for (;;) {
    asio::steady_timer t(ex, tick);
    auto [ec] = co_await t.async_wait(use_nothrow);
    if (ec) co_return "cancelled";
    if (pending() > 0 && expired(p.query_timeout, request_started_)) {
      server_failed_ = true;  // mid-request: the server connection is never reused
      cancel_server_ = true;  // after the relay stops, so no reply overtakes our error
      close_error_ =
          std::make_unique<PgError>(PgError{"57014",
                                            "canceling statement due to query_timeout",
                                            {},
                                            "the request ran longer than pool.query_timeout"});
      co_return "query timeout";
    }
    if (pending() == 0 && tx_status() != 'I' &&
        expired(p.idle_transaction_timeout, last_activity_)) {
      server_failed_ = true;  // closing it rolls the transaction back on the server
      close_error_ = std::make_unique<PgError>(
          PgError{"25P03",
                  "terminating connection due to idle-in-transaction timeout",
                  {},
                  "transactions idle longer than pool.idle_transaction_timeout are ended"});
      co_return "idle transaction timeout";
    }
    if (pending() == 0 && tx_status() == 'I' && expired(p.client_idle_timeout, last_activity_)) {
      close_error_ = std::make_unique<PgError>(
          PgError{"57P05",
                  "terminating connection due to idle-session timeout",
                  {},
                  "clients idle longer than pool.client_idle_timeout are closed"});
      co_return "client idle timeout";
    }
  }
}

}  // namespace

awaitable<void> run_client_session(tcp::socket socket, std::shared_ptr<Runtime> rt) {
  error_code ec;
  socket.set_option(tcp::no_delay(true), ec);
  auto session = std::make_shared<ClientSession>(std::move(socket), std::move(rt));
  auto ended = co_await session->start();
  if (!ended) co_await ClientSession::serve(std::move(session));
}

}  // namespace sluice::server
