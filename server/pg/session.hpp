// The PostgreSQL client session (one ClientSession per client connection), shared by the files
// of server/pg/: session.cpp (lifecycle, parking), login.cpp (startup, TLS, auth), attach.cpp
// (checkout, release, idle wait), relay.cpp (the relay's two drivers) and scan.cpp (the relay
// engine: its steps, for every pool mode), route.cpp (read routing glue), caching.cpp (query cache
// glue), watchdog.cpp (timeouts), stats.cpp (requests, pins). Internal to server/pg/; the rest of
// sluice calls run_client_session().
#pragma once

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <set>

#include "cache/request.hpp"
#include "protocol/pg/extended.hpp"
#include "protocol/pg/md5.hpp"
#include "protocol/pg/scanner.hpp"
#include "protocol/pg/scram.hpp"
#include "protocol/pg/sql.hpp"
#include "routing/pooling.hpp"
#include "routing/replicas.hpp"
#include "routing/request_route.hpp"
#include "server/admin.hpp"
#include "server/client_session.hpp"
#include "server/pg/identity.hpp"
#include "server/pg/phase.hpp"
#include "server/version.hpp"

namespace sluice::server::pgsession {

using namespace asio::experimental::awaitable_operators;

inline constexpr std::uint32_t kMaxAuthMessage = 65535;  // PG_MAX_AUTH_TOKEN_LENGTH
inline constexpr std::size_t kClientBuffer = 8 * 1024;

// Client → server: see Terminate whole, and what names a statement or ends a request (insights).
inline constexpr pg::WantTable kFromClient =
    pg::make_want_table({'X', 'Q', 'P', 'B', 'C', 'S', 'F'});
// Server → client: see ReadyForQuery (transaction state), ParameterStatus, the replies that
// end a statement (CommandComplete, ErrorResponse) and the start of a COPY whole.
inline constexpr pg::WantTable kFromServer =
    pg::make_want_table({'Z', 'S', 'C', 'E', 'G', 'H', 'W'});
// Transaction pooling sees every message that names a statement or ends a request, and the
// replies it must match up with what it sent.
inline constexpr pg::WantTable kFromClientPooled =
    pg::make_want_table({'X', 'P', 'B', 'D', 'C', 'Q', 'S', 'F'});
inline constexpr pg::WantTable kFromServerPooled =
    pg::make_want_table({'Z', 'S', '1', '2', '3', 'E', 'G', 'W', 'C'});
// On a replica, notices too: "terminating connection due to immediate shutdown" comes as one.
inline constexpr pg::WantTable kFromReplica =
    pg::make_want_table({'Z', 'S', '1', '2', '3', 'E', 'G', 'W', 'C', 'N'});
inline constexpr pg::WantTable kEveryMessage = [] {
  pg::WantTable t{};
  t.fill(pg::Want::kWhole);
  return t;
}();
// Routing reads at most this much of a request to classify it (larger: the primary).
inline constexpr std::size_t kRouteMaxMessage = 64 * 1024;
// A read is retried on another node only if the client sent at most this much for it.
inline constexpr std::size_t kMaxReplay = 64 * 1024;
// choose_node(): routing policy refuses the read (every replica banned, and reads may not go to
// the primary).
inline constexpr int kRefused = -2;
// Requests up to this size are written before reading any reply (the server's socket buffer takes
// them whole, so the server cannot block on its replies while sluice writes).
inline constexpr std::size_t kSequentialBatch = 32 * 1024;

// Exactly-sized allocations for a parked client's socket wait: asio's recycling allocator would
// hand it a larger block another operation (the accept) freed, for as long as the client idles.
template <class T>
struct ExactAllocator {
  using value_type = T;
  ExactAllocator() = default;
  template <class U>
  ExactAllocator(const ExactAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, std::size_t n) noexcept { std::allocator<T>().deallocate(p, n); }
  friend bool operator==(const ExactAllocator&, const ExactAllocator&) noexcept { return true; }
};

inline std::string peer_of(const tcp::socket& s) {
  error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return "?";
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

// A pooled client parked between transactions until its socket becomes readable: only what must
// survive (the socket, who it is, its statements and settings when it has any). The session
// object, with its buffers, scanners and timers, is built again when the client wakes.
struct ParkedClient {
  explicit ParkedClient(tcp::socket s) : socket(std::move(s)) {}
  ParkedClient(ParkedClient&&) = default;
  ParkedClient& operator=(ParkedClient&&) = delete;
  ~ParkedClient();  // never woken (a shutdown): the client ends here

  std::shared_ptr<Runtime> rt;
  std::shared_ptr<const Login> login;
  tcp::socket socket;  // plain TCP only (a TLS client does not park): a new Stream on wake
  std::shared_ptr<SessionHandle> handle;
  std::unique_ptr<routing::PooledSession> ps;        // null: fresh from the login's settings
  std::unique_ptr<routing::RequestTracker> tracker;  // null: no statement names to keep
  pg::BackendKeyData key{0, 0};
  routing::Lsn last_write_lsn = 0;
  Clock::time_point last_write_at{};
  bool lexer_suspect = false;
  bool killed = false;
};

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
    if (++rt_->clients == cfg_->pool.park_idle_above + 1) nudge_idle(*rt_);
    generation_ = rt_->generation.load();
    const auto& p = cfg_->pool;
    watchdog_on_ = p.query_timeout.count() > 0 || p.idle_transaction_timeout.count() > 0 ||
                   p.client_idle_timeout.count() > 0;
  }
  // A parked client woke up (park()).
  explicit ClientSession(ParkedClient&& parked);
  ClientSession(const ClientSession&) = delete;
  ClientSession& operator=(const ClientSession&) = delete;
  ~ClientSession();

  awaitable<std::optional<std::string>> start();
  static awaitable<void> serve(std::shared_ptr<ClientSession> self);

 private:
  // Between transactions, among many clients (parkable()): the session gives way to a
  // ParkedClient until the client's socket becomes readable.
  static void park(std::shared_ptr<ClientSession> self);
  static void wait_parked(std::unique_ptr<ParkedClient> parked);
  // More clients than pool.park_idle_above now: idle clients that connected below it park too
  // (they wait in a coroutine until then).
  static void nudge_idle(Runtime& rt);
  ParkedClient leave();
  // Takes the configuration-bound part of the client's identity (login, reload, wake).
  void adopt(const Login& login);
  routing::PooledSession::Options pooled_options() const {
    return {cfg_->pool.pin_is_error, &rt_->known_statements, db_name_ + '\0' + user_->server_user};
  }
  // The one place the session changes state: checks the transition (phase.hpp), keeps what
  // SHOW CLIENTS shows in step.
  void enter(Phase next);
  awaitable<void> finish(std::string reason);
  awaitable<bool> startup_and_auth();
  awaitable<bool> read_startup();
  awaitable<bool> authenticate();
  awaitable<bool> authenticate_scram(const config::User* user);
  awaitable<bool> authenticate_md5(const config::User* user);
  awaitable<bool> attach_server();
  std::variant<routing::Settings, PgError> startup_settings() const;
  awaitable<Outcome> relay();
  awaitable<Outcome> relay_attached();
  awaitable<Outcome> wait_detached();
  awaitable<Outcome> answer_detached();
  awaitable<Outcome> wait_for_client();
  // Gives back what only a request in flight needs (buffers, reply queues).
  void trim_idle();
  // Between requests without a server, no TLS and no idle timer, among many clients
  // (pool.park_idle_above): the client may park. Waking a parked client costs a new coroutine
  // (about a tenth of select-only throughput at 16 clients); memory matters when there are many.
  bool parkable() const {
    return ps_ && !killed_ && !client_->tls() && cfg_->pool.client_idle_timeout.count() == 0 &&
           rt_->clients > cfg_->pool.park_idle_above;
  }
  awaitable<bool> checkout();
  // A step of checkout(). kPrimaryLost: a learned primary (databases.*.hosts) failed to connect;
  // checkout() waits for the health monitor's verdict instead of failing the request.
  enum class Attach : std::uint8_t { kOk, kNextNode, kFailed, kPrimaryLost };
  awaitable<bool> refuse_read();
  // Writes wait while a database with learned roles has no primary (or, after `after_round`,
  // until the monitor has checked its hosts again), up to failover_timeout from `since`.
  awaitable<std::optional<PgError>> wait_for_primary(std::optional<std::uint64_t> after_round,
                                                     Clock::time_point since);
  // The request is refused with `e` (pooled clients stay; a session-mode client's session ends).
  awaitable<bool> refuse(const PgError& e);
  void fail_replica(int node, const std::string& why);
  bool try_acquire(int node);
  awaitable<Attach> acquire(int node);
  std::vector<routing::ParamQuery> settings_for_server();
  awaitable<Attach> prepare_server(int node, std::vector<routing::ParamQuery> sync);
  awaitable<Attach> await_replay();
  void on_attached();
  // A read refused for want of a replica (all_replicas_banned: error), in pooled mode: the
  // error answers that request alone and the session goes on.
  awaitable<bool> refuse_request(const PgError& e);
  std::unique_ptr<PgError> refused_;  // (pointers: an idle session stays small)
  awaitable<void> release();
  awaitable<std::optional<routing::Lsn>> fetch_write_lsn();
  awaitable<std::optional<routing::Lsn>> commit_lsn();
  awaitable<std::optional<routing::Lsn>> monitor_lsn();
  // The relay: two drivers (relay.cpp) over one engine, the steps below (scan.cpp).
  awaitable<Outcome> client_side();  // concurrent driver, with server_side()
  awaitable<Outcome> server_side();
  awaitable<Outcome> relay_sequential();  // sequential driver (pooled modes)
  awaitable<Outcome> relay_sequential_steps();
  struct ClientScan {
    enum Kind { kNeedMore, kTerminate, kBad, kTooLong, kReroute } kind = kNeedMore;
    std::size_t need = 0;      // kNeedMore: bytes still missing (0 = any)
    std::size_t in_place = 0;  // session pooling: bytes of reader_ to forward as they are
    pg::FrameFailure failure{};
    bool ends() const { return kind == kTerminate || kind == kBad || kind == kTooLong; }
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
    // Nothing but bytes to write and consume: the concurrent driver's inline path.
    bool plain() const {
      return !retry && !gone && !hold_ready && !desync && !tx_refused &&
             stop.kind != pg::MessageScanner::Stop::kError;
    }
  };
  struct ServerStep {      // what inspect_server() decided about one message
    bool halt = false;     // stop before it (it stays unconsumed)
    bool forward = false;  // it goes to the client
    bool last = false;     // stop after it
  };
  ClientScan scan_client();
  bool reroutes(const pg::Frame& f, bool judged);
  void note_unpooled_request(const pg::Frame& f);
  void consumed_client(bytes::Span moved, int pending_before);
  ServerScan scan_server();
  const pg::WantTable& server_want() const;
  routing::PooledSession::Verdict on_server_unpooled(const pg::Frame& f);
  ServerStep inspect_server(const pg::Frame& f, ServerScan& r, Clock::time_point now);
  awaitable<Outcome> forward_client(ClientScan scan);
  asio::const_buffer client_bytes(const ClientScan& scan) const;
  void client_bytes_sent(const ClientScan& scan);
  awaitable<Outcome> client_scan_end(ClientScan scan);
  awaitable<Outcome> forward_server(ServerScan scan);
  void replying(asio::const_buffer out);
  Outcome replied(const error_code& ec, std::size_t written, std::size_t consumed);
  // The reads, and their halves around the read for the concurrent driver's inline path (each
  // nested coroutine costs a frame per step).
  awaitable<Outcome> read_client(std::size_t need);
  asio::mutable_buffer client_room(std::size_t need);
  Outcome client_got(const error_code& ec, std::size_t n);
  awaitable<Outcome> read_server(std::size_t need);
  asio::mutable_buffer server_room(std::size_t need);
  bool want_release(bool idle_now);
  // Writes client bytes to the server; a reason to end the session when that fails.
  awaitable<Outcome> write_to_server(asio::const_buffer b);
  awaitable<Outcome> client_message_rejected(const pg::FrameFailure& failure);
  awaitable<Outcome> server_read_failed(const error_code& ec);
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
  awaitable<bool> hold(const std::function<bool()>& keep, Clock::time_point since,
                       Clock::duration limit);
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
  awaitable<Outcome> watchdog();

  std::shared_ptr<Runtime> rt_;
  std::shared_ptr<const config::Config> cfg_;
  std::string peer_;
  std::unique_ptr<Stream> client_;
  FramedReader reader_;
  std::shared_ptr<SessionHandle> handle_;
  std::optional<asio::steady_timer> kill_timer_;
  bool killed_ = false;
  Phase phase_ = Phase::kStartup;

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
  std::shared_ptr<const Login> login_;  // set once the client is bound to a database

  // Transaction and statement pooling.
  std::optional<routing::PooledSession> ps_;
  bool statement_mode_ = false;

  // Read routing (transaction and statement pooling, databases with replicas).
  // The route of the next checkout; `local` codes for a lone Query sluice answers itself.
  using RouteNeed = routing::RequestRoute;
  enum LocalQuery : std::uint8_t { kNotLocal, kShowLsn, kSetRoutePrimary };
  struct Verdict {
    bool replica = false;  // may run on a replica (hints included)
    bool write = false;    // may write (or cannot be known)
    bool catalog_change = false;
  };
  RouteNeed route_need();
  Verdict verdict(const pg::Frame& f, bool parse_seen);
  Verdict verdict(const routing::ReadFacts& facts);
  awaitable<Outcome> prepare_route();
  int choose_node();
  std::shared_ptr<Pool> replica_pool(int node);
  routing::Lsn min_lsn() const;
  bool global_reads() const {
    return cfg_->routing.read_consistency == config::Routing::Consistency::kGlobal;
  }
  awaitable<void> read_marks();
  static constexpr std::size_t kMaxMarkedTexts = 16;  // more: the database's mark
  void note_route_text(const pg::Frame& f, std::optional<std::string_view> text);
  bool can_retry() const {
    return (node_ >= 0 || primary_read_) && replayable_ && !replied_ && !killed_ && !retried_;
  }
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
    cache::FillCapture capture;  // the miss's reply so far
    cache::Writes writes;        // this transaction's, bumped at its end
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
  bool cache_on() const { return rt_->redis_cache() && cfg_->cache.enabled; }
  using CacheRequest = cache::RequestScan;
  CacheRequest cache_request();
  awaitable<Outcome> try_cache();
  void capture_fill(asio::const_buffer out);
  void end_fill();
  void note_writes(const pg::Frame& f);
  awaitable<void> bump_writes();
  // The end of this transaction waits for the cache bump, or (read consistency global) for its
  // commit LSN to be known before its client sees it.
  bool writes_pending() const {
    return (cached_ && !cached_->writes.empty()) ||
           (wrote_ && replicas_ && node_ < 0 && global_reads());
  }
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
  // Read consistency, for the next checkout: the commit-LSN marks of what it reads (global),
  // whether they could not be read (the read goes to the primary), a replica's position to
  // wait for, and the texts route_need() judged (views of the client's buffered messages and
  // of its statements, valid until the client is read again).
  routing::Lsn mark_lsn_ = 0;
  routing::Lsn wait_lsn_ = 0;
  bool marks_unknown_ = false;
  bool behind_ = false;  // await_replay() gave up: the primary takes the read
  std::vector<std::string_view> route_texts_;
  bool replayable_ = false;  // routed_->replay holds everything sent since the checkout
  bool replied_ = false;     // the client got bytes from this server
  bool retried_ = false;     // once per request
  // A read judged whole on a learned primary (databases.*.hosts): if that server goes away
  // before the client saw a byte, it runs again, like a read on a replica (a failover).
  bool primary_read_ = false;
  bool server_gone_ = false;     // the server died between requests: detach before the next one
  bool pinned_ = false;          // the client keeps its server connection to the end
  bool lexer_suspect_ = false;   // its server may lex SQL unlike libpg_query (sticky)
  bool release_wanted_ = false;  // idle, waiting for a write in flight to finish
  bool watchdog_on_ = true;      // any of query/idle_transaction/client_idle timeouts set
  bool parked_ = false;          // wait_for_client() waits for the client's socket
  bool woke_ = false;            // the client's socket became readable (a parked client woke)
  bool park_now_ = false;        // nudge_idle(): wait_for_client() parks the session
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

}  // namespace sluice::server::pgsession
