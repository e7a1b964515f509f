// HTTP endpoint: Prometheus scrapes, Kubernetes probes and a JSON status, on a thread of its own
// so a stalled worker loop shows up as a failing /healthz instead of a hanging one.
#include "server/http.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include "server/mongo.hpp"
#include "server/version.hpp"

namespace sluice::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;

namespace {

constexpr std::size_t kMaxRequest = 16 * 1024;

json::object probe_json(const Probe& p, const char* key) {
  json::object o;
  o[key] = p.ok;
  o["reason"] = p.reason;
  if (!p.warnings.empty()) {
    json::array w;
    for (const auto& s : p.warnings) w.emplace_back(s);
    o["warnings"] = std::move(w);
  }
  return o;
}

http::response<http::string_body> respond(Runtime& rt,
                                          const http::request<http::string_body>& req) {
  http::response<http::string_body> res;
  res.version(req.version());
  res.keep_alive(req.keep_alive());
  res.set(http::field::server, "sluice/" + std::string(version()));
  auto target = std::string(req.target());
  if (auto q = target.find('?'); q != std::string::npos) target.resize(q);
  res.set(http::field::content_type, "application/json");
  if (req.method() != http::verb::get && req.method() != http::verb::head) {
    res.result(http::status::method_not_allowed);
    res.set(http::field::allow, "GET, HEAD");
    res.body() = R"({"error":"only GET and HEAD"})";
  } else if (target == "/metrics") {
    res.result(http::status::ok);
    res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    res.body() = rt.obs.registry.expose();
  } else if (target == "/healthz") {
    auto p = liveness(rt);
    res.result(p.ok ? http::status::ok : http::status::service_unavailable);
    res.body() = json::serialize(probe_json(p, "alive"));
  } else if (target == "/readyz") {
    auto p = readiness(rt);
    res.result(p.ok ? http::status::ok : http::status::service_unavailable);
    res.body() = json::serialize(probe_json(p, "ready"));
  } else if (target == "/status") {
    res.result(http::status::ok);
    res.body() = status_json(rt);
  } else {
    res.result(http::status::not_found);
    res.body() = R"({"error":"not found; try /metrics, /healthz, /readyz or /status"})";
  }
  res.prepare_payload();
  if (req.method() == http::verb::head) res.body().clear();
  return res;
}

awaitable<void> serve(tcp::socket socket, std::shared_ptr<Runtime> rt) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer(kMaxRequest);
  for (;;) {
    stream.expires_after(std::chrono::seconds(30));
    http::request_parser<http::string_body> parser;
    parser.header_limit(kMaxRequest);
    parser.body_limit(kMaxRequest);
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, use_nothrow);
    if (ec) break;  // closed, timed out, or malformed: just close
    auto res = respond(*rt, parser.get());
    bool keep = res.keep_alive();
    auto [wec, wn] = co_await http::async_write(stream, res, use_nothrow);
    if (wec || !keep) break;
  }
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
}

std::string iso_time(std::chrono::system_clock::time_point t) {
  return format_utc(t, "%Y-%m-%dT%H:%M:%SZ");
}

}  // namespace

HttpServer::HttpServer(std::shared_ptr<Runtime> rt, const config::Endpoint& at)
    : rt_(std::move(rt)), acceptor_(ctx_) {
  tcp::resolver resolver(ctx_);
  auto ep = resolver.resolve(at.host, std::to_string(at.port)).begin()->endpoint();
  acceptor_.open(ep.protocol());
  acceptor_.set_option(tcp::acceptor::reuse_address(true));
  acceptor_.bind(ep);
  acceptor_.listen();
}

void HttpServer::start() {
  asio::co_spawn(ctx_, accept_loop(), log_exceptions("http listener"));
  thread_ = std::thread([this] { ctx_.run(); });
}

void HttpServer::stop() {
  if (!thread_.joinable()) return;
  ctx_.stop();
  thread_.join();
}

awaitable<void> HttpServer::accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor_.async_accept(use_nothrow);
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) {
      co_await sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    asio::co_spawn(ctx_, serve(std::move(socket), rt_), log_exceptions("http request"));
  }
}

namespace {

json::array pools_json(Runtime& rt) {
  json::array pools;
  for (const auto& p : rt.pools.all()) {
    auto s = p->snapshot(false);
    json::object o;
    o["database"] = s.database;
    o["user"] = s.user;
    o["mode"] = s.mode;
    o["active"] = s.active;
    o["idle"] = s.idle;
    o["tested"] = s.tested;
    o["login"] = s.login;
    o["waiting"] = s.waiting;
    o["max_wait_seconds"] = std::chrono::duration<double>(s.max_wait).count();
    pools.push_back(std::move(o));
  }
  return pools;
}

json::object clients_json(Runtime& rt, const config::Config& cfg) {
  json::object clients;
  std::uint64_t total = 0, waiting = 0;
  for (const auto& h : rt.sessions()) {
    ++total;
    if (h->state == ClientState::kWaiting) ++waiting;
  }
  clients["connected"] = total;
  clients["waiting"] = waiting;
  clients["max"] = cfg.pool.max_client_conn;
  return clients;
}

json::array backends_json(Runtime& rt) {
  json::array backends;
  for (const auto& h : rt.obs.monitor.snapshot()) {
    json::object o;
    o["database"] = h.target.database;
    o["role"] = h.target.role;
    o["address"] = h.target.address();
    o["up"] = h.up;
    o["checked"] = h.checked;
    o["error"] = h.error;
    o["check_seconds"] = h.rtt_seconds;
    o["checks"] = h.checks;
    o["failures"] = h.failures;
    if (h.checked) o["last_check"] = iso_time(h.last_check);
    backends.push_back(std::move(o));
  }
  return backends;
}

json::array hosts_json(Runtime& rt) {
  json::array hosts;
  for (const auto& h : host_status(rt)) {
    json::object o;
    o["database"] = h.database;
    o["address"] = h.address;
    o["role"] = h.role;
    o["learned"] = h.learned;
    if (h.timeline)
      o["timeline"] = *h.timeline;
    else
      o["timeline"] = nullptr;
    if (h.in_recovery)
      o["in_recovery"] = *h.in_recovery;
    else
      o["in_recovery"] = nullptr;
    o["error"] = h.error;
    o["why"] = h.why;
    hosts.push_back(std::move(o));
  }
  return hosts;
}

// The replicas read routing keeps reads off.
json::array bans_json(Runtime& rt) {
  json::array bans;
  const auto now = std::chrono::steady_clock::now();
  for (const auto& [db, set] : rt.routes.all()) {
    for (const auto& s : set->status(now)) {
      if (!s.banned) continue;
      json::object b;
      b["database"] = db;
      b["address"] = s.address;
      b["reason"] = s.reason;
      b["banned_for_seconds"] = s.banned_for_seconds;
      b["lag_seconds"] = s.lag_seconds;
      b["lag_bytes"] = s.lag_bytes;
      bans.push_back(std::move(b));
    }
  }
  return bans;
}

json::object cache_json(Runtime& rt, const config::Config& cfg) {
  json::object cache;
  cache["configured"] = !cfg.cache.redis.empty();
  cache["enabled"] = cfg.cache.enabled;
  const auto* c = rt.redis_cache();
  cache["redis_up"] = c && c->redis_up();
  cache["serving"] = c && c->redis_up() && cfg.cache.enabled;
  if (c) cache["unbumped_databases"] = c->unbumped();
  return cache;
}

json::object mongo_json(MongoProxy& proxy) {
  json::object mongo;
  json::array servers;
  for (const auto& s : proxy.topology()->servers) {
    json::object o;
    o["address"] = s.address;
    o["role"] = s.primary ? "primary" : "secondary";
    o["up"] = s.up;
    o["checked"] = s.checked;
    o["error"] = s.error;
    o["rtt_seconds"] = s.rtt_ms / 1000.0;
    if (s.lag_seconds) o["lag_seconds"] = *s.lag_seconds;
    servers.push_back(std::move(o));
  }
  mongo["servers"] = std::move(servers);
  auto counts = proxy.open_counts();
  mongo["cursors_open"] = counts.first;
  mongo["transactions_open"] = counts.second;
  return mongo;
}

}  // namespace

std::string status_json(Runtime& rt) {
  auto cfg = rt.config();
  json::object doc;
  doc["version"] = version();
  doc["started"] = iso_time(rt.started);
  auto ready = readiness(rt);
  doc["ready"] = ready.ok;
  doc["reason"] = ready.reason;
  doc["pools"] = pools_json(rt);
  doc["clients"] = clients_json(rt, *cfg);
  doc["backends"] = backends_json(rt);
  doc["hosts"] = hosts_json(rt);
  doc["bans"] = bans_json(rt);
  json::array paused, disabled;
  for (const auto& [name, db] : cfg->databases) {
    if (rt.control.paused(name)) paused.push_back(json::string(name));
    if (rt.control.disabled(name)) disabled.push_back(json::string(name));
  }
  doc["paused"] = std::move(paused);
  doc["disabled"] = std::move(disabled);
  doc["cache"] = cache_json(rt, *cfg);
  if (rt.mongo) doc["mongo"] = mongo_json(*rt.mongo);
  return json::serialize(doc);
}

namespace {

struct ProbeResult {
  bool ok = false;
  std::string body;
  std::string error;
};

awaitable<void> probe_once(std::string host, std::string port, std::string target,
                           std::chrono::milliseconds timeout, ProbeResult& out) {
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  auto [rec, endpoints] = co_await resolver.async_resolve(host, port, use_nothrow);
  if (rec) {
    out.error = "cannot resolve " + host + ": " + rec.message();
    co_return;
  }
  beast::tcp_stream stream(ex);
  stream.expires_after(timeout);
  auto [cec, ep] = co_await stream.async_connect(endpoints, use_nothrow);
  if (cec) {
    out.error = "cannot connect to " + host + ":" + port + ": " + cec.message();
    co_return;
  }
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, host);
  req.set(http::field::user_agent, "sluice-probe/" + std::string(version()));
  req.keep_alive(false);
  auto [wec, wn] = co_await http::async_write(stream, req, use_nothrow);
  beast::flat_buffer buffer(kMaxRequest);
  http::response_parser<http::string_body> parser;
  parser.body_limit(1 << 20);
  if (!wec) {
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, use_nothrow);
    if (ec) out.error = "no answer from " + host + ":" + port + target + ": " + ec.message();
  } else {
    out.error = "cannot send the request: " + wec.message();
  }
  if (!out.error.empty()) co_return;
  const auto& res = parser.get();
  out.body = res.body();
  out.ok = res.result_int() >= 200 && res.result_int() < 300;
  if (!out.ok) out.error = "HTTP " + std::to_string(res.result_int());
}

}  // namespace

int http_probe(std::string_view url, std::chrono::milliseconds timeout, std::ostream& out,
               std::ostream& err) {
  constexpr std::string_view kScheme = "http://";
  if (!url.starts_with(kScheme)) {
    err << "sluice --probe: expected an http://host:port/path URL, got '" << url << "'\n";
    return 1;
  }
  auto rest = url.substr(kScheme.size());
  auto slash = rest.find('/');
  std::string target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  std::string authority(rest.substr(0, slash));
  std::string host = authority, port = "80";
  if (!authority.empty() && authority.front() == '[') {  // [::1]:9930
    auto close = authority.find(']');
    host = authority.substr(1, close == std::string::npos ? std::string::npos : close - 1);
    if (close != std::string::npos && close + 1 < authority.size() && authority[close + 1] == ':')
      port = authority.substr(close + 2);
  } else if (auto colon = authority.rfind(':'); colon != std::string::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty() || port.empty()) {
    err << "sluice --probe: no host or port in '" << url << "'\n";
    return 1;
  }
  asio::io_context ctx{1};
  ProbeResult result;
  asio::co_spawn(ctx, probe_once(host, port, target, timeout, result), asio::detached);
  ctx.run_for(timeout + std::chrono::milliseconds(100));
  if (!result.ok && result.error.empty()) result.error = "timed out";
  out << result.body;
  if (!result.body.empty() && result.body.back() != '\n') out << "\n";
  if (!result.ok) err << "sluice --probe " << url << ": " << result.error << "\n";
  return result.ok ? 0 : 1;
}

}  // namespace sluice::server
