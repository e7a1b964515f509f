// The MongoDB topology: static roles checked with hello by sluice itself, or a mongo.uri
// deployment monitored by libmongoc, published as the snapshot that routes reads.
#include <bson/bson.h>
#include <mongoc/mongoc.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "server/mongo.hpp"
#include "server/mongo/internal.hpp"
#include "server/mongo/pools.hpp"
#include "server/runtime.hpp"

namespace sluice::server {

// What the static monitor last learnt of one server (touched only on its event loop).
struct MongoStaticCheck {
  bool checked = false;
  bool up = false;
  double rtt_ms = 0;
  std::optional<double> last_write;  // lastWrite.lastWriteDate, ms since the epoch
  std::int32_t max_wire_version = 0;
  std::string error = "not checked yet";
};

namespace {

// One hello on a monitoring connection: its reply body, or why there is none (and no connection).
struct HelloProbe {
  std::unique_ptr<MongoConn> conn;  // null when the check failed
  Buffer body;
  double rtt_ms = 0;
  std::string why;
};

awaitable<HelloProbe> hello_round_trip(std::unique_ptr<MongoConn> conn, std::int32_t request_id,
                                       Clock::duration timeout) {
  bson_t hello;
  bson_init(&hello);
  bson_append_int32(&hello, "hello", 5, 1);
  bson_append_utf8(&hello, "$db", 3, "admin", 5);
  Buffer msg;
  wire::encode_msg(msg, request_id, 0, 0, span_of(&hello));
  bson_destroy(&hello);
  const auto t0 = Clock::now();
  auto ec = co_await conn->stream.write_all(asio::buffer(msg));
  std::optional<ReadMessage> got;
  if (!ec) {
    auto r = co_await with_timeout(read_message(conn->stream, conn->reader), timeout);
    if (r) got.emplace(std::move(*r));
  }
  HelloProbe out;
  if (ec || !got || got->ec || got->bad) {
    out.why = ec        ? ec.message()
              : !got    ? std::string("no hello reply within mongo.connect_timeout")
              : got->ec ? got->ec.message()
                        : got->bad->detail;
  } else if (got->frame.header.op_code != wire::kOpMsg) {
    out.why = "hello answered with opcode " + std::to_string(got->frame.header.op_code);
  } else {
    auto decoded = wire::decode_msg(got->frame);
    if (auto* m = std::get_if<wire::Msg>(&decoded)) {
      out.rtt_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      out.body.assign(m->body.begin(), m->body.end());
      out.conn = std::move(conn);
    } else {
      out.why = "hello reply: " + std::get<wire::Failure>(decoded).detail;
    }
  }
  co_return out;
}

// What a hello reply says of a server: up (and writable when configured as the primary), its
// wire version and lastWrite date; `sample` feeds the round-trip time's weighted average.
void read_hello(MongoStaticCheck& st, bool configured_primary, Span body, double sample) {
  bson_t doc;
  bson_iter_t it;
  bson_init_static(&doc, body.data(), body.size());
  st.up = true;
  st.error.clear();
  if (bson_iter_init_find(&it, &doc, "maxWireVersion") && BSON_ITER_HOLDS_NUMBER(&it))
    st.max_wire_version = static_cast<std::int32_t>(bson_iter_as_int64(&it));
  bson_iter_t lw;
  if (bson_iter_init(&it, &doc) && bson_iter_find_descendant(&it, "lastWrite.lastWriteDate", &lw) &&
      BSON_ITER_HOLDS_DATE_TIME(&lw))
    st.last_write = static_cast<double>(bson_iter_date_time(&lw));
  // A server configured as the primary that says it is not writable (a failover the static
  // roles do not know of) must not take writes.
  bool writable = true;
  if (bson_iter_init_find(&it, &doc, "isWritablePrimary") ||
      bson_iter_init_find(&it, &doc, "ismaster"))
    writable = bson_iter_as_bool(&it);
  if (configured_primary && !writable) {
    st.up = false;
    st.error =
        "configured as the primary but reports isWritablePrimary: false (a failover? "
        "fix mongo.servers or use mongo.uri)";
  }
  st.rtt_ms = st.rtt_ms == 0 ? sample : 0.2 * sample + 0.8 * st.rtt_ms;
}

}  // namespace

// Static roles: sluice sends hello to each server every mongo.heartbeat_interval, one coroutine
// per server (a server that does not answer delays only its own checks), for reachability,
// round-trip time (the spec's weighted average) and lastWrite dates, whose differences to the
// primary's are the secondaries' lag. Every check publishes a new snapshot.
awaitable<void> MongoProxy::watch_static() {
  auto ex = co_await asio::this_coro::executor;
  auto states = std::make_shared<std::vector<MongoStaticCheck>>(topology()->servers.size());
  for (std::size_t i = 0; i < states->size(); ++i)
    asio::co_spawn(ex, check_static(i, states), log_exceptions("mongo monitor"));
  co_return;
}

awaitable<void> MongoProxy::check_static(std::size_t index,
                                         std::shared_ptr<std::vector<MongoStaticCheck>> states) {
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
      auto probe =
          co_await hello_round_trip(std::move(conn), next_request_id_++, cfg_.connect_timeout);
      conn = std::move(probe.conn);
      if (!conn) {
        st.up = false;
        st.error = probe.why;
      } else {
        read_hello(st, server.primary, probe.body, probe.rtt_ms);
      }
    }
    publish_static(*states);
    asio::steady_timer t(ex, cfg_.heartbeat_interval);
    co_await t.async_wait(use_nothrow);
  }
  if (conn) conn->stream.close();
}

// The snapshot from the static checks; lag = the primary's lastWriteDate minus the secondary's.
void MongoProxy::publish_static(const std::vector<MongoStaticCheck>& states) {
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

// libmongoc's client pool for mongo.uri (null when the URI does not parse, which is logged).
mongoc_client_pool_t* open_uri_pool(const config::Mongo& cfg) {
  bson_error_t err;
  mongoc_uri_t* uri = mongoc_uri_new_with_error(cfg.uri.c_str(), &err);
  if (!uri) {
    spdlog::error("mongo.uri: {}", err.message);
    return nullptr;
  }
  if (!mongoc_uri_has_option(uri, MONGOC_URI_HEARTBEATFREQUENCYMS))
    mongoc_uri_set_option_as_int32(
        uri, MONGOC_URI_HEARTBEATFREQUENCYMS,
        static_cast<std::int32_t>(std::max<std::int64_t>(500, cfg.heartbeat_interval.count())));
  mongoc_uri_set_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS,
                                 static_cast<std::int32_t>(cfg.connect_timeout.count()));
  mongoc_client_pool_t* pool = mongoc_client_pool_new(uri);
  mongoc_uri_destroy(uri);
  mongoc_client_pool_set_error_api(pool, MONGOC_ERROR_API_VERSION_2);
  mongoc_client_pool_set_appname(pool, "sluice");
  return pool;
}

// One server as libmongoc describes it; its lastWriteDate (ms since the epoch), when known.
std::pair<MongoServerState, std::optional<double>> describe(const mongoc_server_description_t* sd) {
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
  std::optional<double> last_write;
  if (hello && bson_iter_init_find(&it, hello, "maxWireVersion") && BSON_ITER_HOLDS_NUMBER(&it))
    s.max_wire_version = static_cast<std::int32_t>(bson_iter_as_int64(&it));
  if (hello && bson_iter_init(&it, hello) &&
      bson_iter_find_descendant(&it, "lastWrite.lastWriteDate", &sub) &&
      BSON_ITER_HOLDS_DATE_TIME(&sub))
    last_write = static_cast<double>(bson_iter_date_time(&sub));
  if (hello && bson_iter_init_find(&it, hello, "tags") && BSON_ITER_HOLDS_DOCUMENT(&it) &&
      bson_iter_recurse(&it, &sub)) {
    while (bson_iter_next(&sub)) {
      if (BSON_ITER_HOLDS_UTF8(&sub)) s.tags[bson_iter_key(&sub)] = bson_iter_utf8(&sub, nullptr);
    }
  }
  return {std::move(s), last_write};
}

// The snapshot of what libmongoc knows now; lag as for static roles.
std::shared_ptr<MongoTopology> uri_snapshot(mongoc_client_t* client) {
  std::size_t n = 0;
  mongoc_server_description_t** sds = mongoc_client_get_server_descriptions(client, &n);
  auto next = std::make_shared<MongoTopology>();
  std::optional<double> primary_write;
  std::map<std::string, double> last_write;
  for (std::size_t i = 0; i < n; ++i) {
    auto [s, written] = describe(sds[i]);
    if (written) {
      last_write[s.address] = *written;
      if (s.primary) primary_write = *written;
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
  return next;
}

}  // namespace

// mongo.uri: libmongoc's client pool monitors the deployment on its own threads (discovery,
// hello every heartbeatFrequencyMS, RTT); this thread copies its server descriptions into the
// snapshot routing reads.
void MongoProxy::watch_uri() {
  std::call_once(mongoc_once, [] {
    mongoc_init();
    mongoc_log_set_handler(log_mongoc, nullptr);
  });
  mongoc_client_pool_t* pool = open_uri_pool(cfg_);
  if (!pool) return;
  mongoc_client_t* client = mongoc_client_pool_pop(pool);  // starts background monitoring
  while (!stopping_) {
    publish(uri_snapshot(client));
    std::unique_lock lock(uri_mu_);
    uri_cv_.wait_for(lock, cfg_.heartbeat_interval, [this] { return stopping_.load(); });
  }
  mongoc_client_pool_push(pool, client);
  mongoc_client_pool_destroy(pool);
}

}  // namespace sluice::server
