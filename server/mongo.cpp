#include "server/mongo.hpp"

#include <bson/bson.h>
#include <mongoc/mongoc.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>

#include "protocol/mongo/wire.hpp"
#include "routing/mongo.hpp"
#include "server/framed_reader.hpp"
#include "server/runtime.hpp"
#include "server/stream.hpp"
#include "server/version.hpp"

namespace sluice::server {

namespace wire = sluice::mongo;
namespace rm = routing::mongo;
using wire::Buffer;
using wire::Span;

// Error codes as mongod / mongos send them.
namespace code {
constexpr std::int32_t kBadValue = 2;
constexpr std::int32_t kHostUnreachable = 6;
constexpr std::int32_t kFailedToParse = 9;
constexpr std::int32_t kUnauthorized = 13;
constexpr std::int32_t kAuthenticationFailed = 18;
constexpr std::int32_t kCursorNotFound = 43;
constexpr std::int32_t kFailedToSatisfyReadPreference = 133;
constexpr std::int32_t kNetworkInterfaceExceededTimeLimit = 202;
constexpr std::int32_t kUnsupportedOpQueryCommand = 352;
constexpr std::int32_t kBSONObjectTooLarge = 10334;
constexpr std::int32_t kNoDb = 40571;
}  // namespace code

namespace {

std::string_view code_name(std::int32_t c) {
  switch (c) {
    case code::kBadValue:
      return "BadValue";
    case code::kHostUnreachable:
      return "HostUnreachable";
    case code::kFailedToParse:
      return "FailedToParse";
    case code::kUnauthorized:
      return "Unauthorized";
    case code::kAuthenticationFailed:
      return "AuthenticationFailed";
    case code::kCursorNotFound:
      return "CursorNotFound";
    case code::kFailedToSatisfyReadPreference:
      return "FailedToSatisfyReadPreference";
    case code::kNetworkInterfaceExceededTimeLimit:
      return "NetworkInterfaceExceededTimeLimit";
    case code::kUnsupportedOpQueryCommand:
      return "UnsupportedOpQueryCommand";
    case code::kBSONObjectTooLarge:
      return "BSONObjectTooLarge";
    case code::kNoDb:
      return "Location40571";  // what mongod names it
    default:
      return "InternalError";
  }
}

}  // namespace

struct MongoCounters {
  explicit MongoCounters(metrics::Registry& r)
      : commands(r.counter("sluice_mongo_commands_total",
                           "MongoDB commands, by name (known names, else other), route "
                           "(primary, secondary, local, cache) and outcome (ok, error, "
                           "network).",
                           {"command", "route", "outcome"})),
        duration(r.histogram("sluice_mongo_command_duration_seconds",
                             "MongoDB commands: request read until its reply is ready, by route.",
                             {"route"},
                             {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                              0.25, 0.5, 1, 2.5, 5, 10})),
        cache(r.counter("sluice_mongo_cache_requests_total",
                        "Cacheable MongoDB reads, by result: hit, miss, bypass (Redis down, a "
                        "write not yet bumped).",
                        {"result"})),
        fills(r.counter("sluice_mongo_cache_fills_total", "MongoDB replies stored in the cache.")
                  .with({})),
        bumps(r.counter("sluice_mongo_cache_invalidations_total",
                        "Collection version bumps made by MongoDB writes through sluice, by "
                        "result.",
                        {"result"})),
        malformed(r.counter("sluice_mongo_protocol_errors_total",
                            "MongoDB client connections closed for a malformed message, by "
                            "reason.",
                            {"reason"})),
        clients(r.gauge("sluice_mongo_clients", "MongoDB client connections open.").with({})) {}
  metrics::Family<metrics::Counter>& commands;
  metrics::Family<metrics::Histogram>& duration;
  metrics::Family<metrics::Counter>& cache;
  metrics::Counter& fills;
  metrics::Family<metrics::Counter>& bumps;
  metrics::Family<metrics::Counter>& malformed;
  metrics::Gauge& clients;
  // Pool figures by server address, written from every loop, read at scrape time.
  struct PoolGauges {
    std::atomic<std::int64_t> idle{0}, active{0}, waiting{0};
  };
  PoolGauges& pool(const std::string& address) {
    std::lock_guard lock(mu);
    auto& p = pools[address];
    if (!p) p = std::make_unique<PoolGauges>();
    return *p;
  }
  std::mutex mu;
  std::map<std::string, std::unique_ptr<PoolGauges>> pools;
};

// --- Server connections ---------------------------------------------------------------------

struct MongoConn {
  MongoConn(tcp::socket s, std::string a) : stream(std::move(s)), address(std::move(a)) {}
  Stream stream;
  FramedReader reader{4096};
  std::string address;
};

struct ReadMessage {
  error_code ec;
  std::optional<wire::Failure> bad;
  wire::Frame frame{};  // valid until the next read
};

// One whole message from `s`, checked against maxMessageSizeBytes before anything is buffered.
awaitable<ReadMessage> read_message(Stream& s, FramedReader& r) {
  for (;;) {
    auto got = wire::next_frame(r.pending());
    if (auto* f = std::get_if<wire::Frame>(&got)) {
      r.consume(f->message.size());
      co_return ReadMessage{{}, std::nullopt, *f};
    }
    if (auto* bad = std::get_if<wire::Failure>(&got)) co_return ReadMessage{{}, *bad, {}};
    auto room = r.prepare(std::get<wire::NeedMore>(got).bytes);
    auto [ec, n] = co_await s.read_some(room);
    if (ec) co_return ReadMessage{ec, std::nullopt, {}};
    r.commit(n);
  }
}

// The server connections of one event loop: per server address, idle connections and clients
// waiting for one. Used only on that loop.
class MongoPools {
 public:
  MongoPools(MongoCounters& counters) : counters_(counters) {}

  struct Checkout {
    std::unique_ptr<MongoConn> conn;
    std::int32_t code = 0;
    std::string error;
  };

  awaitable<Checkout> get(const MongoServerState& server, const config::Mongo& cfg) {
    auto& slot = servers_[server.address];
    if (!slot.gauges) slot.gauges = &counters_.pool(server.address);
    const auto deadline = Clock::now() + cfg.wait_timeout;
    for (;;) {
      while (!slot.idle.empty()) {
        auto conn = std::move(slot.idle.back());
        slot.idle.pop_back();
        slot.gauges->idle--;
        if (!conn->stream.idle_and_open()) {  // closed by the server meanwhile
          --slot.open;
          continue;
        }
        slot.gauges->active++;
        co_return Checkout{std::move(conn), 0, {}};
      }
      if (slot.open < cfg.pool_size) {
        ++slot.open;
        slot.gauges->active++;
        auto r = co_await connect(server, cfg);
        if (!r.conn) {
          --slot.open;
          slot.gauges->active--;
          wake(slot);
        }
        co_return r;
      }
      if (Clock::now() >= deadline) break;
      auto timer = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor);
      timer->expires_at(deadline);
      slot.waiters.push_back(timer);
      slot.gauges->waiting++;
      co_await timer->async_wait(use_nothrow);
      slot.gauges->waiting--;
      std::erase(slot.waiters, timer);
    }
    co_return Checkout{nullptr, code::kNetworkInterfaceExceededTimeLimit,
                       "no connection to " + server.address + " free within mongo.wait_timeout (" +
                           std::to_string(cfg.wait_timeout.count()) +
                           " ms): raise mongo.pool_size or find the slow operations"};
  }

  // Returns a connection; `reusable` false closes it (an I/O error, a reply not yet read).
  void put(std::unique_ptr<MongoConn> conn, bool reusable) {
    auto& slot = servers_[conn->address];
    slot.gauges->active--;
    if (reusable) {
      slot.idle.push_back(std::move(conn));
      slot.gauges->idle++;
    } else {
      --slot.open;
      conn->stream.close();
    }
    wake(slot);
  }

  void close_all() {
    for (auto& [addr, slot] : servers_) {
      for (auto& c : slot.idle) c->stream.close();
      if (slot.gauges) slot.gauges->idle -= static_cast<std::int64_t>(slot.idle.size());
      slot.open -= static_cast<std::uint32_t>(slot.idle.size());
      slot.idle.clear();
    }
  }

  // A new connection to `server` (the pools' and the static monitor's).
  awaitable<Checkout> connect(const MongoServerState& server, const config::Mongo& cfg) {
    auto ex = co_await asio::this_coro::executor;
    tcp::resolver resolver(ex);
    auto resolved = co_await with_timeout(
        resolver.async_resolve(server.host, std::to_string(server.port), use_nothrow),
        cfg.connect_timeout);
    if (!resolved || std::get<0>(*resolved))
      co_return Checkout{nullptr, code::kHostUnreachable,
                         "cannot resolve " + server.host +
                             (resolved ? ": " + std::get<0>(*resolved).message() : ": timed out")};
    tcp::socket socket(ex);
    auto connected = co_await with_timeout(
        asio::async_connect(socket, std::get<1>(*resolved), use_nothrow), cfg.connect_timeout);
    if (!connected || std::get<0>(*connected))
      co_return Checkout{nullptr, code::kHostUnreachable,
                         "cannot connect to " + server.address + ": " +
                             (connected ? std::get<0>(*connected).message()
                                        : std::string("timed out after mongo.connect_timeout"))};
    socket.set_option(tcp::no_delay(true));
    co_return Checkout{std::make_unique<MongoConn>(std::move(socket), server.address), 0, {}};
  }

 private:
  struct Slot {
    std::vector<std::unique_ptr<MongoConn>> idle;
    std::uint32_t open = 0;
    std::deque<std::shared_ptr<asio::steady_timer>> waiters;
    MongoCounters::PoolGauges* gauges = nullptr;
  };
  static void wake(Slot& slot) {
    if (!slot.waiters.empty()) slot.waiters.front()->cancel();
  }

  MongoCounters& counters_;
  std::map<std::string, Slot> servers_;
};

// --- Documents ------------------------------------------------------------------------------

namespace {

Span span_of(const bson_t* b) {
  return {bson_get_data(b), b->len};
}

Buffer to_buffer(bson_t* b) {
  Buffer out(bson_get_data(b), bson_get_data(b) + b->len);
  bson_destroy(b);
  return out;
}

Buffer error_body(std::int32_t c, std::string_view errmsg) {
  return wire::error_document(c, code_name(c), errmsg);
}

Buffer ok_body() {
  bson_t b;
  bson_init(&b);
  bson_append_double(&b, "ok", 2, 1.0);
  return to_buffer(&b);
}

bool field_true(Span body, const char* key) {
  bson_t doc;
  bson_iter_t it;
  if (!bson_init_static(&doc, body.data(), body.size())) return false;
  return bson_iter_init_find(&it, &doc, key) && bson_iter_as_bool(&it);
}

}  // namespace

// --- The proxy ------------------------------------------------------------------------------

MongoProxy::MongoProxy(Runtime& rt, const config::Mongo& cfg, std::size_t loops)
    : rt_(rt), cfg_(cfg), counters_(std::make_unique<MongoCounters>(rt.obs.registry)) {
  auto t = std::make_shared<MongoTopology>();
  for (const auto& s : cfg.servers) {
    MongoServerState st;
    st.address = s.address();
    st.host = s.host;
    st.port = s.port;
    st.primary = s.primary;
    st.tags = s.tags;
    st.error = "not checked yet";
    t->servers.push_back(std::move(st));
  }
  topology_ = std::move(t);
  for (std::size_t i = 0; i < loops; ++i)
    pools_.push_back(std::make_unique<MongoPools>(*counters_));
  add_collectors();
}

MongoProxy::~MongoProxy() {
  stop();
}

void MongoProxy::publish(std::shared_ptr<const MongoTopology> t) {
  std::lock_guard lock(mu_);
  for (const auto& s : t->servers) {
    const MongoServerState* before = nullptr;
    for (const auto& o : topology_->servers) {
      if (o.address == s.address) before = &o;
    }
    const char* role = s.primary ? "primary" : "secondary";
    if (!s.checked) continue;
    if (!before || !before->checked) {
      if (!s.up)
        spdlog::warn("mongo: {} {} is down: {}", role, s.address, s.error);
      else
        spdlog::info("mongo: {} {} is up", role, s.address);
    } else if (before->up != s.up) {
      spdlog::log(s.up ? spdlog::level::info : spdlog::level::warn, "mongo: {} {} is {}{}", role,
                  s.address, s.up ? "up" : "down", s.up ? "" : ": " + s.error);
    } else if (before->primary != s.primary && s.up) {
      spdlog::info("mongo: {} is now the {}", s.address, role);
    }
  }
  topology_ = std::move(t);
}

Probe MongoProxy::readiness() const {
  auto t = topology();
  for (const auto& s : t->servers) {
    if (!s.primary) continue;
    if (!s.checked) return {false, "mongo primary " + s.address + " not checked yet"};
    if (!s.up) return {false, "mongo primary " + s.address + " unreachable: " + s.error};
    return {true, "ready"};
  }
  return {false, "no mongo primary known"};
}

void MongoProxy::start(asio::any_io_executor ex) {
  if (!cfg_.uri.empty()) {
    uri_thread_ = std::thread([this] { watch_uri(); });
    return;
  }
  asio::co_spawn(ex, watch_static(), log_exceptions("mongo monitor"));
}

void MongoProxy::stop() {
  stopping_ = true;
  {
    std::lock_guard lock(uri_mu_);
    uri_cv_.notify_all();
  }
  if (uri_thread_.joinable()) uri_thread_.join();
}

void MongoProxy::close_for_exit() {
  for (auto& p : pools_) p->close_all();
}

// Static roles: sluice sends hello to each server every mongo.heartbeat_interval, one coroutine
// per server (a server that does not answer delays only its own checks), for reachability,
// round-trip time (the spec's weighted average) and lastWrite dates, whose differences to the
// primary's are the secondaries' lag. Every check publishes a new snapshot.
awaitable<void> MongoProxy::watch_static() {
  auto ex = co_await asio::this_coro::executor;
  auto states = std::make_shared<std::vector<StaticCheck>>(topology()->servers.size());
  for (std::size_t i = 0; i < states->size(); ++i)
    asio::co_spawn(ex, check_static(i, states), log_exceptions("mongo monitor"));
  co_return;
}

awaitable<void> MongoProxy::check_static(std::size_t index,
                                         std::shared_ptr<std::vector<StaticCheck>> states) {
  auto ex = co_await asio::this_coro::executor;
  const auto server = topology()->servers[index];  // address and role are fixed
  std::unique_ptr<MongoConn> conn;
  MongoPools dialer(*counters_);
  while (!stopping_ && !rt_.stopping) {
    auto& st = (*states)[index];
    st.checked = true;
    st.last_write.reset();
    if (!conn) {
      auto c = co_await dialer.connect(server, cfg_);
      conn = std::move(c.conn);
      if (!conn) {
        st.up = false;
        st.error = c.error;
      }
    }
    if (conn) {
      bson_t hello;
      bson_init(&hello);
      bson_append_int32(&hello, "hello", 5, 1);
      bson_append_utf8(&hello, "$db", 3, "admin", 5);
      Buffer msg;
      wire::encode_msg(msg, next_request_id_++, 0, 0, span_of(&hello));
      bson_destroy(&hello);
      const auto t0 = Clock::now();
      auto ec = co_await conn->stream.write_all(asio::buffer(msg));
      std::optional<ReadMessage> got;
      if (!ec) {
        auto r =
            co_await with_timeout(read_message(conn->stream, conn->reader), cfg_.connect_timeout);
        if (r) got.emplace(std::move(*r));
      }
      std::optional<wire::Msg> reply;
      std::string why;
      if (ec || !got || got->ec || got->bad) {
        why = ec        ? ec.message()
              : !got    ? std::string("no hello reply within mongo.connect_timeout")
              : got->ec ? got->ec.message()
                        : got->bad->detail;
      } else if (got->frame.header.op_code != wire::kOpMsg) {
        why = "hello answered with opcode " + std::to_string(got->frame.header.op_code);
      } else {
        auto decoded = wire::decode_msg(got->frame);
        if (auto* m = std::get_if<wire::Msg>(&decoded))
          reply = *m;
        else
          why = "hello reply: " + std::get<wire::Failure>(decoded).detail;
      }
      if (!reply) {
        st.up = false;
        st.error = why;
        conn.reset();
      } else {
        const double sample = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        bson_t doc;
        bson_iter_t it;
        bson_init_static(&doc, reply->body.data(), reply->body.size());
        st.up = true;
        st.error.clear();
        if (bson_iter_init_find(&it, &doc, "maxWireVersion") && BSON_ITER_HOLDS_NUMBER(&it))
          st.max_wire_version = static_cast<std::int32_t>(bson_iter_as_int64(&it));
        bson_iter_t lw;
        if (bson_iter_init(&it, &doc) &&
            bson_iter_find_descendant(&it, "lastWrite.lastWriteDate", &lw) &&
            BSON_ITER_HOLDS_DATE_TIME(&lw))
          st.last_write = static_cast<double>(bson_iter_date_time(&lw));
        // A server configured as the primary that says it is not writable (a failover the
        // static roles do not know of) must not take writes.
        bool writable = true;
        if (bson_iter_init_find(&it, &doc, "isWritablePrimary") ||
            bson_iter_init_find(&it, &doc, "ismaster"))
          writable = bson_iter_as_bool(&it);
        if (server.primary && !writable) {
          st.up = false;
          st.error =
              "configured as the primary but reports isWritablePrimary: false (a failover? "
              "fix mongo.servers or use mongo.uri)";
        }
        st.rtt_ms = st.rtt_ms == 0 ? sample : 0.2 * sample + 0.8 * st.rtt_ms;
      }
    }
    publish_static(*states);
    asio::steady_timer t(ex, cfg_.heartbeat_interval);
    co_await t.async_wait(use_nothrow);
  }
  if (conn) conn->stream.close();
}

// The snapshot from the static checks; lag = the primary's lastWriteDate minus the secondary's.
void MongoProxy::publish_static(const std::vector<StaticCheck>& states) {
  auto next = std::make_shared<MongoTopology>(*topology());
  std::optional<double> primary_write;
  for (std::size_t i = 0; i < states.size(); ++i) {
    if (next->servers[i].primary && states[i].up) primary_write = states[i].last_write;
  }
  for (std::size_t i = 0; i < states.size(); ++i) {
    auto& s = next->servers[i];
    const auto& st = states[i];
    s.checked = st.checked;
    s.up = st.up;
    s.error = st.error;
    s.rtt_ms = st.rtt_ms;
    s.max_wire_version = st.max_wire_version;
    s.lag_seconds.reset();
    if (s.primary)
      s.lag_seconds = 0;
    else if (s.up && primary_write && st.last_write)
      s.lag_seconds = std::max(0.0, (*primary_write - *st.last_write) / 1000.0);
  }
  publish(std::move(next));
}

namespace {

void log_mongoc(mongoc_log_level_t level, const char* domain, const char* message, void*) {
  auto l = level <= MONGOC_LOG_LEVEL_ERROR     ? spdlog::level::err
           : level <= MONGOC_LOG_LEVEL_WARNING ? spdlog::level::warn
                                               : spdlog::level::debug;
  spdlog::log(l, "mongo: libmongoc {}: {}", domain, message);
}

std::once_flag mongoc_once;

}  // namespace

// mongo.uri: libmongoc's client pool monitors the deployment on its own threads (discovery,
// hello every heartbeatFrequencyMS, RTT); this thread copies its server descriptions into the
// snapshot routing reads.
void MongoProxy::watch_uri() {
  std::call_once(mongoc_once, [] {
    mongoc_init();
    mongoc_log_set_handler(log_mongoc, nullptr);
  });
  bson_error_t err;
  mongoc_uri_t* uri = mongoc_uri_new_with_error(cfg_.uri.c_str(), &err);
  if (!uri) {
    spdlog::error("mongo.uri: {}", err.message);
    return;
  }
  if (!mongoc_uri_has_option(uri, MONGOC_URI_HEARTBEATFREQUENCYMS))
    mongoc_uri_set_option_as_int32(
        uri, MONGOC_URI_HEARTBEATFREQUENCYMS,
        static_cast<std::int32_t>(std::max<std::int64_t>(500, cfg_.heartbeat_interval.count())));
  mongoc_uri_set_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS,
                                 static_cast<std::int32_t>(cfg_.connect_timeout.count()));
  mongoc_client_pool_t* pool = mongoc_client_pool_new(uri);
  mongoc_uri_destroy(uri);
  mongoc_client_pool_set_error_api(pool, MONGOC_ERROR_API_VERSION_2);
  mongoc_client_pool_set_appname(pool, "sluice");
  mongoc_client_t* client = mongoc_client_pool_pop(pool);  // starts background monitoring
  while (!stopping_) {
    std::size_t n = 0;
    mongoc_server_description_t** sds = mongoc_client_get_server_descriptions(client, &n);
    auto next = std::make_shared<MongoTopology>();
    std::optional<double> primary_write;
    std::map<std::string, double> last_write;
    for (std::size_t i = 0; i < n; ++i) {
      const auto* sd = sds[i];
      const auto* host = mongoc_server_description_host(sd);
      std::string_view type = mongoc_server_description_type(sd);
      MongoServerState s;
      s.host = host->host;
      s.port = host->port;
      s.address = host->host_and_port;
      s.checked = type != "Unknown";
      s.primary = type == "RSPrimary" || type == "Standalone" || type == "Mongos";
      s.up = s.primary || type == "RSSecondary";
      s.error = s.up ? "" : std::string("server type ") + std::string(type);
      const auto rtt = mongoc_server_description_round_trip_time(sd);
      s.rtt_ms = rtt < 0 ? 0 : static_cast<double>(rtt);
      const bson_t* hello = mongoc_server_description_hello_response(sd);
      bson_iter_t it;
      bson_iter_t sub;
      if (hello && bson_iter_init_find(&it, hello, "maxWireVersion") && BSON_ITER_HOLDS_NUMBER(&it))
        s.max_wire_version = static_cast<std::int32_t>(bson_iter_as_int64(&it));
      if (hello && bson_iter_init(&it, hello) &&
          bson_iter_find_descendant(&it, "lastWrite.lastWriteDate", &sub) &&
          BSON_ITER_HOLDS_DATE_TIME(&sub)) {
        last_write[s.address] = static_cast<double>(bson_iter_date_time(&sub));
        if (s.primary) primary_write = last_write[s.address];
      }
      if (hello && bson_iter_init_find(&it, hello, "tags") && BSON_ITER_HOLDS_DOCUMENT(&it) &&
          bson_iter_recurse(&it, &sub)) {
        while (bson_iter_next(&sub)) {
          if (BSON_ITER_HOLDS_UTF8(&sub))
            s.tags[bson_iter_key(&sub)] = bson_iter_utf8(&sub, nullptr);
        }
      }
      next->servers.push_back(std::move(s));
    }
    mongoc_server_descriptions_destroy_all(sds, n);
    for (auto& s : next->servers) {
      if (s.primary)
        s.lag_seconds = 0;
      else if (s.up && primary_write && last_write.contains(s.address))
        s.lag_seconds = std::max(0.0, (*primary_write - last_write[s.address]) / 1000.0);
    }
    publish(std::move(next));
    std::unique_lock lock(uri_mu_);
    uri_cv_.wait_for(lock, cfg_.heartbeat_interval, [this] { return stopping_.load(); });
  }
  mongoc_client_pool_push(pool, client);
  mongoc_client_pool_destroy(pool);
}

std::optional<MongoProxy::Owner> MongoProxy::cursor_owner(std::int64_t id) {
  std::lock_guard lock(mu_);
  auto it = cursors_.find(id);
  if (it == cursors_.end()) return std::nullopt;
  it->second.used = Clock::now();
  return it->second;
}

void MongoProxy::prune(Clock::time_point now) {
  // Servers time idle cursors out after 10 minutes and abort transactions older than
  // transactionLifetimeLimitSeconds (60 s): entries idle longer are dropped (once a minute).
  if (now - last_prune_ < std::chrono::minutes(1)) return;
  last_prune_ = now;
  std::erase_if(cursors_,
                [&](const auto& kv) { return now - kv.second.used > std::chrono::minutes(10); });
  std::erase_if(pins_,
                [&](const auto& kv) { return now - kv.second.used > std::chrono::minutes(2); });
  // Servers expire a session idle for logicalSessionTimeoutMinutes (30, as sluice's hello says).
  std::erase_if(sessions_,
                [&](const auto& kv) { return now - kv.second.used > std::chrono::minutes(30); });
}

void MongoProxy::note_cursor(std::int64_t id, Owner owner) {
  std::lock_guard lock(mu_);
  const auto now = Clock::now();
  prune(now);
  if (cursors_.size() >= 100'000) cursors_.erase(cursors_.begin());
  owner.used = now;
  cursors_[id] = std::move(owner);
}

void MongoProxy::claim_session(const std::string& lsid, std::int64_t conn) {
  std::lock_guard lock(mu_);
  const auto now = Clock::now();
  prune(now);
  auto it = sessions_.find(lsid);
  if (it == sessions_.end()) {
    if (sessions_.size() >= 100'000) sessions_.erase(sessions_.begin());
    sessions_.emplace(lsid, SessionOwner{conn, now});
    return;
  }
  if (!open_connections_.contains(it->second.connection)) it->second.connection = conn;
  it->second.used = now;
}

bool MongoProxy::may_end_session(const std::string& lsid, std::int64_t conn) {
  std::lock_guard lock(mu_);
  auto it = sessions_.find(lsid);
  return it == sessions_.end() || it->second.connection == conn ||
         !open_connections_.contains(it->second.connection);
}

void MongoProxy::forget_session(const std::string& lsid) {
  std::lock_guard lock(mu_);
  sessions_.erase(lsid);
}

void MongoProxy::connection_opened(std::int64_t conn) {
  std::lock_guard lock(mu_);
  open_connections_.insert(conn);
}

void MongoProxy::connection_closed(std::int64_t conn) {
  std::lock_guard lock(mu_);
  open_connections_.erase(conn);
}

void MongoProxy::forget_cursor(std::int64_t id) {
  std::lock_guard lock(mu_);
  cursors_.erase(id);
}

std::optional<MongoProxy::Pin> MongoProxy::pin(const std::string& lsid) {
  std::lock_guard lock(mu_);
  auto it = pins_.find(lsid);
  if (it == pins_.end()) return std::nullopt;
  it->second.used = Clock::now();
  return it->second;
}

void MongoProxy::set_pin(const std::string& lsid, Pin p) {
  std::lock_guard lock(mu_);
  p.used = Clock::now();
  prune(p.used);
  if (pins_.size() >= 100'000) pins_.erase(pins_.begin());
  pins_[lsid] = std::move(p);
}

void MongoProxy::add_pin_writes(const std::string& lsid, const std::string& db,
                                const std::string& coll) {
  std::lock_guard lock(mu_);
  auto it = pins_.find(lsid);
  if (it == pins_.end()) return;
  auto w = std::make_pair(db, coll);
  if (std::find(it->second.writes.begin(), it->second.writes.end(), w) == it->second.writes.end())
    it->second.writes.push_back(std::move(w));
}

std::optional<MongoProxy::Pin> MongoProxy::take_pin(const std::string& lsid) {
  std::lock_guard lock(mu_);
  auto it = pins_.find(lsid);
  if (it == pins_.end()) return std::nullopt;
  auto p = std::move(it->second);
  pins_.erase(it);
  return p;
}

void MongoProxy::add_collectors() {
  rt_.obs.registry.add_collector([this](metrics::Writer& w) {
    auto t = topology();
    w.family("sluice_mongo_server_up", "gauge",
             "1 when the MongoDB server answered its last check, by server and role.");
    for (const auto& s : t->servers)
      w.sample("sluice_mongo_server_up", {"server", "role"},
               {s.address, s.primary ? "primary" : "secondary"}, s.up ? 1 : 0);
    w.family("sluice_mongo_server_rtt_seconds", "gauge",
             "Round-trip time of hello to the MongoDB server (weighted average).");
    for (const auto& s : t->servers)
      w.sample("sluice_mongo_server_rtt_seconds", {"server"}, {s.address}, s.rtt_ms / 1000.0);
    w.family("sluice_mongo_server_lag_seconds", "gauge",
             "Replication lag of a MongoDB secondary (primary's lastWriteDate minus its own); "
             "absent while unknown.");
    for (const auto& s : t->servers) {
      if (s.lag_seconds)
        w.sample("sluice_mongo_server_lag_seconds", {"server"}, {s.address}, *s.lag_seconds);
    }
    w.family("sluice_mongo_pool_connections", "gauge",
             "Server connections of the MongoDB pools, by server and state (idle, active).");
    w.family("sluice_mongo_pool_waiting", "gauge",
             "MongoDB requests waiting for a server connection, by server.");
    {
      std::lock_guard lock(counters_->mu);
      for (const auto& [addr, g] : counters_->pools) {
        w.sample("sluice_mongo_pool_connections", {"server", "state"}, {addr, "idle"},
                 static_cast<double>(g->idle.load()));
        w.sample("sluice_mongo_pool_connections", {"server", "state"}, {addr, "active"},
                 static_cast<double>(g->active.load()));
        w.sample("sluice_mongo_pool_waiting", {"server"}, {addr},
                 static_cast<double>(g->waiting.load()));
      }
    }
    const auto [cursors, pins] = open_counts();
    w.family("sluice_mongo_cursors_open", "gauge",
             "MongoDB cursors opened through sluice and not yet exhausted or killed.");
    w.sample("sluice_mongo_cursors_open", static_cast<double>(cursors));
    w.family("sluice_mongo_transactions_open", "gauge",
             "MongoDB transactions started through sluice and not yet committed or aborted.");
    w.sample("sluice_mongo_transactions_open", static_cast<double>(pins));
  });
}

// --- Client sessions ------------------------------------------------------------------------

// One client connection. Requests are handled one at a time (drivers do not pipeline on a
// connection); each forwarded request checks a server connection out and back in.
class MongoSession {
 public:
  MongoSession(MongoProxy& px, tcp::socket socket, std::size_t loop)
      : px_(px),
        rt_(px.rt_),
        client_(std::move(socket)),
        pools_(*px.pools_[loop]),
        conn_id_(++px.connection_ids_) {}

  awaitable<void> run() {
    auto ex = co_await asio::this_coro::executor;
    handle_ = std::make_shared<SessionHandle>(ex);
    {
      error_code ignored;
      auto remote = client_.socket().remote_endpoint(ignored);
      auto local = client_.socket().local_endpoint(ignored);
      std::lock_guard lock(handle_->mu);
      handle_->info.user = "(mongo)";
      handle_->info.database = "(mongo)";
      handle_->info.addr = remote.address().to_string();
      handle_->info.port = remote.port();
      handle_->info.local_addr = local.address().to_string();
      handle_->info.local_port = local.port();
    }
    handle_->kill = [this] { client_.close(); };
    handle_->state = ClientState::kActive;
    rt_.add_session(handle_);
    px_.connection_opened(conn_id_);
    px_.counters_->clients.add(1);
    error_code ignored;
    client_.socket().set_option(tcp::no_delay(true), ignored);
    while (!rt_.stopping || !handle_->idle) {
      handle_->idle = true;
      auto got = co_await read_message(client_, reader_);
      handle_->idle = false;
      if (got.ec) break;
      if (got.bad) {
        co_await refuse(reader_.pending(), *got.bad);
        break;
      }
      const auto started = Clock::now();
      handle_->request_time = std::chrono::duration_cast<std::chrono::seconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count();
      bool keep = co_await handle(got.frame, started);
      reader_.shrink(16 * 1024);
      if (!keep) break;
    }
    handle_->kill = nullptr;
    rt_.remove_session(handle_);
    px_.connection_closed(conn_id_);
    px_.counters_->clients.add(-1);
    client_.close();
  }

 private:
  // A frame that cannot be read: the reason as an error reply when the header was readable,
  // then the connection closes (its stream position is lost).
  awaitable<void> refuse(Span pending, const wire::Failure& f) {
    px_.counters_->malformed.with({std::string(wire::describe(f.error))}).inc();
    spdlog::info("mongo: closing client {}: {}", conn_id_, f.detail);
    if (pending.size() < wire::kHeaderSize) co_return;
    std::int32_t request_id = 0;
    for (int i = 7; i >= 4; --i)
      request_id = (request_id << 8) | pending[static_cast<std::size_t>(i)];
    const auto c =
        f.error == wire::WireError::kLengthTooLarge ? code::kBSONObjectTooLarge : code::kBadValue;
    co_await reply(request_id, error_body(c, f.detail + " (sluice closes this connection)"));
  }

  awaitable<bool> reply(std::int32_t response_to, Span body) {
    Buffer out;
    wire::encode_msg(out, px_.next_request_id_++, response_to, 0, body);
    auto ec = co_await client_.write_all(asio::buffer(out));
    co_return !ec;
  }

  void count(std::string_view command, std::string_view route, std::string_view outcome,
             Clock::time_point started) {
    // The children are looked up once per session and label triple (the family's lookup takes
    // a lock and builds the label strings).
    const auto label = rm::command_label(command);
    auto& slot = metric_children_[std::make_tuple(label, route, outcome)];
    if (!slot.first) {
      slot.first = &px_.counters_->commands.with(
          {std::string(label), std::string(route), std::string(outcome)});
      slot.second = &px_.counters_->duration.with({std::string(route)});
    }
    slot.first->inc();
    slot.second->observe(std::chrono::duration<double>(Clock::now() - started).count());
  }

  Buffer hello_body(Span request, bool legacy) {
    auto t = px_.topology();
    std::int32_t max_wire = 0;
    for (const auto& s : t->servers) {
      if (s.up && s.max_wire_version > 0)
        max_wire = max_wire == 0 ? s.max_wire_version : std::min(max_wire, s.max_wire_version);
    }
    if (max_wire == 0) max_wire = 17;  // MongoDB 6.0, until a server has answered
    bson_t b;
    bson_init(&b);
    if (field_true(request, "helloOk")) bson_append_bool(&b, "helloOk", 7, true);
    if (legacy)
      bson_append_bool(&b, "ismaster", 8, true);
    else
      bson_append_bool(&b, "isWritablePrimary", 17, true);
    bson_append_utf8(&b, "msg", 3, "isdbgrid", 8);
    bson_append_int32(&b, "maxBsonObjectSize", 17,
                      static_cast<std::int32_t>(wire::kMaxBsonObjectSize));
    bson_append_int32(&b, "maxMessageSizeBytes", 19,
                      static_cast<std::int32_t>(wire::kMaxMessageSize));
    bson_append_int32(&b, "maxWriteBatchSize", 17, 100'000);
    bson_append_date_time(&b, "localTime", 9,
                          std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count());
    bson_append_int32(&b, "logicalSessionTimeoutMinutes", 28, 30);
    bson_append_int64(&b, "connectionId", 12, conn_id_);
    bson_append_int32(&b, "minWireVersion", 14, 0);
    bson_append_int32(&b, "maxWireVersion", 14, max_wire);
    bson_append_bool(&b, "readOnly", 8, false);
    bson_append_double(&b, "ok", 2, 1.0);
    return to_buffer(&b);
  }

  awaitable<bool> handle(const wire::Frame& frame, Clock::time_point started) {
    if (frame.header.op_code == wire::kOpQuery) {
      auto q = wire::decode_query(frame);
      if (auto* f = std::get_if<wire::Failure>(&q)) {
        co_await refuse(frame.message, *f);
        co_return false;
      }
      const auto& query = std::get<wire::Query>(q);
      auto name = wire::command_name(query.query);
      Buffer out;
      if (query.collection.ends_with(".$cmd") &&
          (name == "isMaster" || name == "ismaster" || name == "hello")) {
        wire::encode_reply(out, px_.next_request_id_++, frame.header.request_id,
                           hello_body(query.query, name != "hello"));
        count(name, "local", "ok", started);
      } else {
        wire::encode_reply(out, px_.next_request_id_++, frame.header.request_id,
                           error_body(code::kUnsupportedOpQueryCommand,
                                      "OP_QUERY is supported only for the hello / isMaster "
                                      "handshake; use OP_MSG (every driver since MongoDB 3.6)"));
        count(name, "local", "error", started);
      }
      auto ec = co_await client_.write_all(asio::buffer(out));
      co_return !ec;
    }
    if (frame.header.op_code == wire::kOpCompressed) {
      auto inner = wire::decompress(frame);
      if (auto* f = std::get_if<wire::Failure>(&inner)) {
        co_await refuse(frame.message, *f);
        co_return false;
      }
      // Re-framed as a plain message (compression is never advertised, so this is rare).
      const auto& in = std::get<wire::Frame>(inner);
      Buffer plain(wire::kHeaderSize + in.body.size());
      std::copy_n(frame.message.begin(), wire::kHeaderSize, plain.begin());
      std::copy(in.body.begin(), in.body.end(), plain.begin() + wire::kHeaderSize);
      const auto len = static_cast<std::uint32_t>(plain.size());
      const auto op = static_cast<std::uint32_t>(in.header.op_code);
      for (int i = 0; i < 4; ++i) {
        plain[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(len >> (8 * i));
        plain[static_cast<std::size_t>(12 + i)] = static_cast<std::uint8_t>(op >> (8 * i));
      }
      decompressed_ = std::move(plain);
      auto again = wire::next_frame(decompressed_);
      if (!std::holds_alternative<wire::Frame>(again) ||
          std::get<wire::Frame>(again).header.op_code == wire::kOpCompressed) {
        const wire::Failure f{wire::WireError::kUnsupportedOpCode,
                              "OP_COMPRESSED must wrap OP_MSG"};
        co_await refuse(frame.message, f);
        co_return false;
      }
      auto copy = std::get<wire::Frame>(again);
      bool keep = co_await handle(copy, started);
      co_return keep;
    }
    if (frame.header.op_code != wire::kOpMsg) {
      const wire::Failure f{wire::WireError::kUnsupportedOpCode,
                            "opcode " + std::to_string(frame.header.op_code) +
                                " is not supported; sluice speaks OP_MSG"};
      co_await refuse(frame.message, f);
      co_return false;
    }
    auto decoded = wire::decode_msg(frame);
    if (auto* f = std::get_if<wire::Failure>(&decoded)) {
      co_await refuse(frame.message, *f);
      co_return false;
    }
    const auto& msg = std::get<wire::Msg>(decoded);
    auto cmd = rm::analyze(msg.body);
    const auto rid = frame.header.request_id;
    if (cmd.db.empty()) {
      count(cmd.name, "local", "error", started);
      bool ok =
          co_await reply(rid, error_body(code::kNoDb, "OP_MSG requests require a $db argument"));
      co_return ok;
    }
    if (!cmd.pref_error.empty()) {
      count(cmd.name, "local", "error", started);
      bool ok = co_await reply(rid, error_body(code::kFailedToParse, cmd.pref_error));
      co_return ok;
    }
    if (cmd.refusal && !allowed_by_config(*cmd.refusal)) {
      bool ok = co_await unauthorized(cmd, msg, rid, started);
      co_return ok;
    }
    if (cmd.route == rm::Route::kLocal && cmd.name != "buildInfo" && cmd.name != "buildinfo") {
      bool ok = co_await local(cmd, msg, rid, started);
      co_return ok;
    }
    if (!cmd.lsid.empty()) px_.claim_session(cmd.lsid, conn_id_);
    if (cmd.name == "killCursors") {
      bool ok = co_await kill_cursors(cmd, msg, frame, rid, started);
      co_return ok;
    }
    bool ok = co_await forward_command(cmd, msg, frame, started);
    co_return ok;
  }

  bool allowed_by_config(const rm::Refusal& r) {
    auto cfg = rt_.config();
    const auto& allowed = (cfg->mongo ? *cfg->mongo : px_.cfg_).allow_commands;
    return !r.allow_as.empty() &&
           std::find(allowed.begin(), allowed.end(), r.allow_as) != allowed.end();
  }

  // A command the listener does not open to the clients it cannot authenticate: 13
  // Unauthorized (as a server answers a user without the privilege), naming the setting.
  awaitable<bool> unauthorized(const rm::Command& cmd, const wire::Msg& msg, std::int32_t rid,
                               Clock::time_point started) {
    count(cmd.name, "local", "error", started);
    if (msg.more_to_come()) co_return true;
    const auto& r = *cmd.refusal;
    std::string text =
        "sluice refuses " +
        (r.allow_as.starts_with('$') ? "the stage " + r.allow_as : "command '" + cmd.name + "'") +
        " (" + r.what +
        "): its MongoDB listener does not authenticate clients, so it opens only "
        "what drivers need";
    text += r.allow_as.empty()
                ? " (sluice: no setting allows it; connect to the server directly)"
                : " (sluice: set mongo.allow_commands: [" + r.allow_as + "] to allow it)";
    bool ok = co_await reply(rid, error_body(code::kUnauthorized, text));
    co_return ok;
  }

  awaitable<bool> local(const rm::Command& cmd, const wire::Msg& msg, std::int32_t rid,
                        Clock::time_point started) {
    Buffer body;
    if (cmd.name == "hello" || cmd.name == "isMaster" || cmd.name == "ismaster") {
      body = hello_body(msg.body, cmd.name != "hello");
    } else if (cmd.name == "endSessions") {
      // Sessions live on the servers: every reachable one is told (which aborts a transaction
      // left open), and the pins of those sessions go. Only sessions this connection used first
      // (or whose first connection has closed) are ended: another client's, with a guessed id,
      // are left alone (servers expire idle sessions after 30 minutes anyway).
      auto [ended, request_body] = own_sessions(msg.body, cmd.db);
      for (const auto& s : ended) {
        px_.take_pin(s);
        px_.forget_session(s);
      }
      auto topo = px_.topology();
      for (const auto& server : topo->servers) {
        if (!server.up || ended.empty()) continue;
        Buffer request;
        wire::encode_msg(request, 0, 0, 0, request_body);
        auto fwd = co_await exchange(server, std::move(request));
        if (fwd.code != 0) spdlog::debug("mongo: endSessions on {}: {}", server.address, fwd.error);
      }
      body = ok_body();
    } else if (cmd.name == "saslStart" || cmd.name == "saslContinue" ||
               cmd.name == "authenticate" || cmd.name == "logout") {
      count(cmd.name, "local", "error", started);
      bool ok = co_await reply(
          rid, error_body(code::kAuthenticationFailed,
                          "sluice's MongoDB listener does not authenticate clients (its pooled "
                          "server connections are shared): connect without credentials, and "
                          "restrict who reaches listen.mongo"));
      co_return ok;
    } else if (cmd.name == "whatsmyuri") {
      bson_t b;
      bson_init(&b);
      error_code ignored;
      auto ep = client_.socket().remote_endpoint(ignored);
      auto you = ep.address().to_string() + ":" + std::to_string(ep.port());
      bson_append_utf8(&b, "you", 3, you.c_str(), static_cast<int>(you.size()));
      bson_append_double(&b, "ok", 2, 1.0);
      body = to_buffer(&b);
    } else {
      body = ok_body();  // ping
    }
    count(cmd.name, "local", "ok", started);
    if (msg.more_to_come()) co_return true;
    bool ok = co_await reply(rid, body);
    co_return ok;
  }

  // The sessions of an endSessions this connection may end, and the command naming only those.
  std::pair<std::vector<std::string>, Buffer> own_sessions(Span body, const std::string& db) {
    std::vector<std::string> ids;
    bson_t doc;
    bson_iter_t it;
    bson_iter_t list;
    bson_t out;
    bson_init(&out);
    bson_t arr;
    bson_append_array_begin(&out, "endSessions", 11, &arr);
    if (bson_init_static(&doc, body.data(), body.size()) && bson_iter_init(&it, &doc) &&
        bson_iter_next(&it) && BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &list)) {
      while (bson_iter_next(&list)) {
        bson_iter_t id;
        if (!BSON_ITER_HOLDS_DOCUMENT(&list) || !bson_iter_recurse(&list, &id) ||
            !bson_iter_find(&id, "id") || !BSON_ITER_HOLDS_BINARY(&id))
          continue;
        bson_subtype_t st;
        std::uint32_t len = 0;
        const std::uint8_t* data = nullptr;
        bson_iter_binary(&id, &st, &len, &data);
        std::string lsid(reinterpret_cast<const char*>(data), len);
        if (!px_.may_end_session(lsid, conn_id_)) {
          spdlog::debug("mongo: client {}: endSessions of another connection's session ignored",
                        conn_id_);
          continue;
        }
        const auto key = std::to_string(ids.size());
        const auto element = sub_document(list);
        bson_t session;
        if (bson_init_static(&session, element.data(), element.size()))
          bson_append_document(&arr, key.c_str(), static_cast<int>(key.size()), &session);
        ids.push_back(std::move(lsid));
      }
    }
    bson_append_array_end(&out, &arr);
    bson_append_utf8(&out, "$db", 3, db.c_str(), static_cast<int>(db.size()));
    return {std::move(ids), to_buffer(&out)};
  }

  static Span sub_document(const bson_iter_t& it) {
    std::uint32_t len = 0;
    const std::uint8_t* data = nullptr;
    bson_iter_document(&it, &len, &data);
    return data ? Span(data, len) : Span();
  }

  const MongoServerState* find_server(const MongoTopology& t, const std::string& address) {
    for (const auto& s : t.servers) {
      if (s.address == address) return &s;
    }
    return nullptr;
  }

  struct Target {
    const MongoServerState* server = nullptr;
    std::string_view route;  // "primary" | "secondary"
    std::int32_t code = 0;
    std::string error;
  };

  Target choose(const MongoTopology& t, const rm::ReadPreference& pref) {
    std::vector<rm::ServerView> views;
    for (const auto& s : t.servers)
      views.push_back({s.primary, s.up, s.rtt_ms, s.lag_seconds, &s.tags});
    auto cfg = rt_.config();
    const double floor =
        std::chrono::duration<double>((cfg->mongo ? *cfg->mongo : px_.cfg_).max_staleness_floor)
            .count();
    auto sel = rm::select(views, pref, floor, px_.turn_++);
    if (!sel.server) return {nullptr, "", sel.code, sel.error};
    const auto& s = t.servers[*sel.server];
    return {&s, s.primary ? "primary" : "secondary", 0, {}};
  }

  // The cache rule for a read of db.collection: the first whose patterns match decides.
  const config::MongoCacheRule* rule_for(const config::Mongo& m, const std::string& db,
                                         const std::string& coll) {
    const std::string full = db + "." + coll;
    for (const auto& r : m.cache) {
      for (const auto& pattern : r.collections) {
        if (pattern == "*" || pattern == full ||
            (pattern.ends_with(".*") && pattern.substr(0, pattern.size() - 1) == db + "."))
          return &r;
      }
    }
    return nullptr;
  }

  std::string cache_ns(const std::string& db) const { return "mongo:" + px_.cfg_.name + "/" + db; }

  // Bumps the versions of what a write changed, before its reply reaches the client.
  awaitable<void> bump(const std::vector<std::pair<std::string, std::string>>& writes) {
    if (!rt_.cache || writes.empty() || !rt_.config()->cache.invalidation) co_return;
    std::map<std::string, cache::Writes> by_db;
    for (const auto& [db, coll] : writes) {
      auto& w = by_db[db];
      if (db == "*")
        w.roles = true;  // the global epoch: every database, every cached result
      else if (coll.empty())
        w.unknown = true;
      else
        w.oids.push_back(cache::Cache::collection_id(coll));
    }
    for (const auto& [db, w] : by_db) {
      bool ok = co_await rt_.cache->bump_namespace(cache_ns(db), w, 0, "mongo " + db);
      px_.counters_->bumps.with({ok ? "ok" : "failed"}).inc();
    }
  }

  struct Forwarded {
    Buffer reply;  // the whole reply message; empty when none (moreToCome, or an error)
    Span body;
    std::int32_t code = 0;
    std::string error;
  };

  // Sends `message` (a client's OP_MSG, ids and flags rewritten here) to `server` and reads its
  // reply. A moreToCome message has none: its connection goes back at once.
  awaitable<Forwarded> exchange(const MongoServerState& server, Buffer message) {
    auto cfg = rt_.config();
    const auto& mcfg = cfg->mongo ? *cfg->mongo : px_.cfg_;
    auto checkout = co_await pools_.get(server, mcfg);
    if (!checkout.conn) co_return Forwarded{{}, {}, checkout.code, checkout.error};
    auto conn = std::move(checkout.conn);
    const bool more_to_come = (message[wire::kHeaderSize] & wire::msg_flag::kMoreToCome) != 0;
    const std::int32_t id = px_.next_request_id_++;
    // Never exhaust: one request, one reply, and the connection is free again.
    wire::rewrite_ids(message, id, 0, wire::msg_flag::kExhaustAllowed);
    auto ec = co_await conn->stream.write_all(asio::buffer(message));
    if (ec) {
      pools_.put(std::move(conn), false);
      co_return Forwarded{{},
                          {},
                          code::kHostUnreachable,
                          "connection to " + server.address + " failed: " + ec.message()};
    }
    if (more_to_come) {
      pools_.put(std::move(conn), true);
      co_return Forwarded{};
    }
    auto got = co_await read_message(conn->stream, conn->reader);
    if (got.ec || got.bad || got.frame.header.response_to != id ||
        got.frame.header.op_code != wire::kOpMsg) {
      std::string why = got.ec    ? got.ec.message()
                        : got.bad ? got.bad->detail
                                  : std::string("a reply that does not answer the request");
      pools_.put(std::move(conn), false);
      co_return Forwarded{
          {}, {}, code::kHostUnreachable, "server " + server.address + " did not answer: " + why};
    }
    Forwarded out;
    out.reply.assign(got.frame.message.begin(), got.frame.message.end());
    auto decoded = wire::decode_msg(
        wire::Frame{got.frame.header, out.reply, Span(out.reply).subspan(wire::kHeaderSize)});
    if (auto* f = std::get_if<wire::Failure>(&decoded)) {
      pools_.put(std::move(conn), false);
      co_return Forwarded{{},
                          {},
                          code::kHostUnreachable,
                          "server " + server.address + " sent a malformed reply: " + f->detail};
    }
    const auto& m = std::get<wire::Msg>(decoded);
    const bool streaming = m.more_to_come();
    out.body = m.body;
    conn->reader.shrink(16 * 1024);
    pools_.put(std::move(conn), !streaming);
    co_return out;
  }

  awaitable<bool> send_reply(Buffer& reply, std::int32_t rid) {
    // Without moreToCome: the client asked for one reply and gets exactly one.
    wire::rewrite_ids(reply, px_.next_request_id_++, rid, wire::msg_flag::kMoreToCome);
    auto ec = co_await client_.write_all(asio::buffer(reply));
    co_return !ec;
  }

  awaitable<bool> forward_command(const rm::Command& cmd, const wire::Msg& msg,
                                  const wire::Frame& frame, Clock::time_point started) {
    const auto rid = frame.header.request_id;
    auto cfg = rt_.config();
    const auto& mcfg = cfg->mongo ? *cfg->mongo : px_.cfg_;
    auto topo = px_.topology();
    Target target;
    std::optional<MongoProxy::Pin> pinned;
    if (!cmd.lsid.empty() && (cmd.in_transaction || cmd.route == rm::Route::kTransaction))
      pinned = px_.pin(cmd.lsid);
    if (cmd.route == rm::Route::kCursor) {
      auto owner = cmd.cursors.empty() ? std::nullopt : px_.cursor_owner(cmd.cursors.front());
      if (owner && !owner->allows(conn_id_, cmd.lsid)) {
        bool ok = co_await not_owner(cmd, rid, cmd.cursors.front(), started);
        co_return ok;
      }
      const auto* s = owner ? find_server(*topo, owner->address) : nullptr;
      if (!s) {
        count(cmd.name, "local", "error", started);
        bool ok = co_await reply(
            rid, error_body(code::kCursorNotFound,
                            "cursor id " +
                                std::to_string(cmd.cursors.empty() ? 0 : cmd.cursors.front()) +
                                " not found: it was not opened through this sluice, or it was "
                                "exhausted or killed"));
        co_return ok;
      }
      target = {s, s->primary ? "primary" : "secondary", 0, {}};
    } else if (pinned) {
      const auto* s = find_server(*topo, pinned->address);
      if (!s) s = choose(*topo, rm::ReadPreference{}).server;
      if (s)
        target = {s, s->primary ? "primary" : "secondary", 0, {}};
      else
        target = choose(*topo, rm::ReadPreference{});
    } else if (cmd.route == rm::Route::kRead || cmd.name == "buildInfo" ||
               cmd.name == "buildinfo") {
      auto pref = cmd.pref;
      if (cmd.name == "buildInfo" || cmd.name == "buildinfo")
        pref.mode = rm::Mode::kPrimaryPreferred;
      target = choose(*topo, pref);
    } else {
      target = choose(*topo, rm::ReadPreference{});
    }

    // The cache: complete results of cacheable reads outside transactions.
    cache::Lookup lookup;
    const config::MongoCacheRule* rule = nullptr;
    if (cmd.cacheable && rt_.cache && cfg->cache.enabled && !mcfg.cache.empty())
      rule = rule_for(mcfg, cmd.db, cmd.collection);
    if (rule && !rule->cache) rule = nullptr;
    bool filling = false;
    if (rule) {
      const auto ttl = rule->ttl.count() > 0 ? rule->ttl : cfg->cache.default_ttl;
      auto plan = rt_.cache->document_plan(cache_ns(cmd.db), cmd.reads, "mongo:" + rule->name, ttl);
      std::string material = "mongo-1";
      material.push_back('\0');
      material += cmd.db;
      material.push_back('\0');
      material += cmd.read_concern;
      material.push_back('\0');
      material += rm::canonical_command(msg.body);
      auto got = co_await rt_.cache->lookup_planned(std::move(plan), std::move(material), false,
                                                    cfg->cache);
      lookup = std::move(got);
      if (lookup.outcome == cache::Lookup::Outcome::kHit) {
        cache::Cache::note_outcome(lookup, true);
        px_.counters_->cache.with({"hit"}).inc();
        count(cmd.name, "cache", "ok", started);
        Buffer out;
        const auto& v = *lookup.value;
        wire::encode_msg(out, px_.next_request_id_++, rid, 0,
                         Span(reinterpret_cast<const std::uint8_t*>(v.data()), v.size()));
        auto ec = co_await client_.write_all(asio::buffer(out));
        co_return !ec;
      }
      if (lookup.outcome == cache::Lookup::Outcome::kMiss) {
        cache::Cache::note_outcome(lookup, false);
        px_.counters_->cache.with({"miss"}).inc();
        // A fill must hold every write bumped so far: the primary's data, not a secondary's.
        auto primary = choose(*topo, rm::ReadPreference{});
        if (primary.server) {
          target = primary;
          filling = true;
        }
      } else {
        px_.counters_->cache.with({"bypass"}).inc();
      }
    }
    struct Finish {
      cache::Cache* c;
      cache::Lookup& l;
      ~Finish() {
        if (c && l.flight) c->finish(l);
      }
    } finish{rt_.cache.get(), lookup};

    if (!target.server) {
      count(cmd.name, "local", "error", started);
      bool ok = co_await reply(rid, error_body(target.code, target.error));
      co_return ok;
    }
    const std::string address = target.server->address;
    const std::string_view route = target.route;  // "primary" | "secondary" (static)
    if (cmd.starts_transaction && !cmd.lsid.empty())
      px_.set_pin(cmd.lsid, MongoProxy::Pin{address, {}, Clock::now()});

    Buffer request(frame.message.begin(), frame.message.end());
    auto fwd = co_await exchange(*target.server, std::move(request));

    // What the command wrote: bumped now, or at commit inside a transaction.
    std::vector<std::pair<std::string, std::string>> written;
    if (cmd.route == rm::Route::kWrite) {
      for (const auto& w : cmd.writes) {
        if (cmd.in_transaction && !cmd.lsid.empty())
          px_.add_pin_writes(cmd.lsid, w.db, w.collection);
        else
          written.emplace_back(w.db, w.collection);
      }
    }
    if (cmd.route == rm::Route::kTransaction && !cmd.lsid.empty()) {
      auto pin = px_.take_pin(cmd.lsid);
      if (pin && cmd.name == "commitTransaction") written = pin->writes;
    }
    if (fwd.code != 0) {
      co_await bump(written);  // the write may have happened before the connection broke
      count(cmd.name, route, "network", started);
      if (msg.more_to_come()) co_return true;
      bool ok = co_await reply(rid, error_body(fwd.code, fwd.error));
      co_return ok;
    }
    if (fwd.reply.empty()) {  // moreToCome: no reply
      co_await bump(written);
      count(cmd.name, route, "ok", started);
      co_return true;
    }
    auto facts = rm::reply_facts(fwd.body);
    if (facts.cursor_id && *facts.cursor_id != 0 && cmd.name != "getMore")
      px_.note_cursor(*facts.cursor_id, MongoProxy::Owner{address, {}, conn_id_, cmd.lsid});
    if (cmd.name == "getMore" && facts.cursor_id && *facts.cursor_id == 0 && !cmd.cursors.empty())
      px_.forget_cursor(cmd.cursors.front());
    if (cmd.starts_transaction && !facts.ok && !cmd.lsid.empty()) px_.take_pin(cmd.lsid);
    co_await bump(written);
    if (filling) {
      const bool complete = facts.ok && facts.cursor_id && *facts.cursor_id == 0;
      if (complete &&
          rt_.cache->store(
              lookup,
              std::string_view(reinterpret_cast<const char*>(fwd.body.data()), fwd.body.size()),
              cfg->cache))
        px_.counters_->fills.inc();
    }
    count(cmd.name, route, facts.ok ? "ok" : "error", started);
    bool ok = co_await send_reply(fwd.reply, rid);
    co_return ok;
  }

  // A cursor another client opened: 13 Unauthorized, as mongos answers a getMore or killCursors
  // of a cursor another user created (it exists, but not for this client).
  awaitable<bool> not_owner(const rm::Command& cmd, std::int32_t rid, std::int64_t id,
                            Clock::time_point started) {
    count(cmd.name, "local", "error", started);
    spdlog::info("mongo: client {}: {} of cursor {} refused: another client's", conn_id_, cmd.name,
                 id);
    bool ok = co_await reply(
        rid, error_body(code::kUnauthorized,
                        "cursor id " + std::to_string(id) +
                            " was not created by this client: sluice binds a cursor to the "
                            "connection that opened it and to the session it was opened in (send "
                            "the cursor's lsid from another connection)"));
    co_return ok;
  }

  // killCursors: each server gets the ids it owns; the replies are merged into one.
  awaitable<bool> kill_cursors(const rm::Command& cmd, const wire::Msg& msg,
                               const wire::Frame& frame, std::int32_t rid,
                               Clock::time_point started) {
    auto topo = px_.topology();
    for (auto id : cmd.cursors) {  // nothing is killed when one of them is another client's
      auto owner = px_.cursor_owner(id);
      if (owner && !owner->allows(conn_id_, cmd.lsid)) {
        bool ok = co_await not_owner(cmd, rid, id, started);
        co_return ok;
      }
    }
    std::map<std::string, std::vector<std::int64_t>> by_owner;
    std::vector<std::int64_t> unknown;
    for (auto id : cmd.cursors) {
      auto owner = px_.cursor_owner(id);
      if (owner && find_server(*topo, owner->address))
        by_owner[owner->address].push_back(id);
      else
        unknown.push_back(id);
      px_.forget_cursor(id);
    }
    std::vector<std::int64_t> killed, not_found = unknown, alive, unknown_out;
    for (const auto& [address, ids] : by_owner) {
      Buffer request;
      if (by_owner.size() == 1 && unknown.empty()) {
        request.assign(frame.message.begin(), frame.message.end());
      } else {
        bson_t b;
        bson_init(&b);
        bson_append_utf8(&b, "killCursors", 11, cmd.collection.c_str(),
                         static_cast<int>(cmd.collection.size()));
        bson_t arr;
        bson_append_array_begin(&b, "cursors", 7, &arr);
        for (std::size_t i = 0; i < ids.size(); ++i) {
          auto key = std::to_string(i);
          bson_append_int64(&arr, key.c_str(), static_cast<int>(key.size()), ids[i]);
        }
        bson_append_array_end(&b, &arr);
        bson_append_utf8(&b, "$db", 3, cmd.db.c_str(), static_cast<int>(cmd.db.size()));
        wire::encode_msg(request, 0, 0, 0, span_of(&b));
        bson_destroy(&b);
      }
      auto fwd = co_await exchange(*find_server(*topo, address), std::move(request));
      if (fwd.code != 0 || fwd.reply.empty()) {
        unknown_out.insert(unknown_out.end(), ids.begin(), ids.end());
        continue;
      }
      bson_t doc;
      bson_iter_t it;
      bson_init_static(&doc, fwd.body.data(), fwd.body.size());
      for (auto [key, out] :
           {std::pair<const char*, std::vector<std::int64_t>*>{"cursorsKilled", &killed},
            {"cursorsNotFound", &not_found},
            {"cursorsAlive", &alive},
            {"cursorsUnknown", &unknown_out}}) {
        bson_iter_t list;
        if (bson_iter_init_find(&it, &doc, key) && BSON_ITER_HOLDS_ARRAY(&it) &&
            bson_iter_recurse(&it, &list)) {
          while (bson_iter_next(&list)) out->push_back(bson_iter_as_int64(&list));
        }
      }
    }
    count(cmd.name, "local", "ok", started);
    if (msg.more_to_come()) co_return true;
    bson_t b;
    bson_init(&b);
    for (auto [key, list] :
         {std::pair<const char*, std::vector<std::int64_t>*>{"cursorsKilled", &killed},
          {"cursorsNotFound", &not_found},
          {"cursorsAlive", &alive},
          {"cursorsUnknown", &unknown_out}}) {
      bson_t arr;
      bson_append_array_begin(&b, key, -1, &arr);
      for (std::size_t i = 0; i < list->size(); ++i) {
        auto k = std::to_string(i);
        bson_append_int64(&arr, k.c_str(), static_cast<int>(k.size()), (*list)[i]);
      }
      bson_append_array_end(&b, &arr);
    }
    bson_append_double(&b, "ok", 2, 1.0);
    auto body = to_buffer(&b);
    bool ok = co_await reply(rid, body);
    co_return ok;
  }

  MongoProxy& px_;
  Runtime& rt_;
  Stream client_;
  FramedReader reader_{16 * 1024};
  MongoPools& pools_;
  std::int64_t conn_id_;
  std::shared_ptr<SessionHandle> handle_;
  Buffer decompressed_;
  // Keys are views of static strings (command_label's table and route/outcome literals).
  std::map<std::tuple<std::string_view, std::string_view, std::string_view>,
           std::pair<metrics::Counter*, metrics::Histogram*>>
      metric_children_;
};

awaitable<void> MongoProxy::session(tcp::socket socket, std::size_t loop) {
  MongoSession s(*this, std::move(socket), loop);
  co_await s.run();
}
}  // namespace sluice::server
