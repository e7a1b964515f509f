// MongoProxy: construction, start and stop, the topology snapshot and its readiness, client
// sessions, and the ownership bookkeeping shared by the event loops (under one mutex).
#include <spdlog/spdlog.h>

#include "server/mongo.hpp"
#include "server/mongo/metrics.hpp"
#include "server/mongo/pools.hpp"
#include "server/mongo/session.hpp"
#include "server/runtime.hpp"

namespace sluice::server {

namespace {

std::shared_ptr<MongoTopology> configured_topology(const config::Mongo& cfg) {
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
  return t;
}

// Logs how `s` changed since the snapshot before (`before`: null when it was not in it).
void log_change(const MongoServerState* before, const MongoServerState& s) {
  const char* role = s.primary ? "primary" : "secondary";
  if (!s.checked) return;
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

}  // namespace

MongoProxy::MongoProxy(Runtime& rt, const config::Mongo& cfg, std::size_t loops)
    : rt_(rt), cfg_(cfg), counters_(std::make_unique<MongoCounters>(rt.obs.registry)) {
  topology_ = configured_topology(cfg);
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
    log_change(before, s);
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

awaitable<void> MongoProxy::session(tcp::socket socket, std::size_t loop) {
  MongoSession s(*this, std::move(socket), loop);
  co_await s.run();
}

// --- Ownership, shared by every loop ----------------------------------------------------------

std::optional<routing::mongo::CursorOwner> MongoProxy::cursor_owner(std::int64_t id) {
  std::lock_guard lock(mu_);
  return ownership_.cursor_owner(id, Clock::now());
}

void MongoProxy::note_cursor(std::int64_t id, routing::mongo::CursorOwner owner) {
  std::lock_guard lock(mu_);
  ownership_.note_cursor(id, std::move(owner), Clock::now());
}

void MongoProxy::forget_cursor(std::int64_t id) {
  std::lock_guard lock(mu_);
  ownership_.forget_cursor(id);
}

std::optional<routing::mongo::Pin> MongoProxy::pin(const std::string& lsid) {
  std::lock_guard lock(mu_);
  return ownership_.pin(lsid, Clock::now());
}

void MongoProxy::set_pin(const std::string& lsid, routing::mongo::Pin p) {
  std::lock_guard lock(mu_);
  ownership_.set_pin(lsid, std::move(p), Clock::now());
}

void MongoProxy::add_pin_writes(const std::string& lsid, const std::string& db,
                                const std::string& coll) {
  std::lock_guard lock(mu_);
  ownership_.add_pin_writes(lsid, db, coll);
}

std::optional<routing::mongo::Pin> MongoProxy::take_pin(const std::string& lsid) {
  std::lock_guard lock(mu_);
  return ownership_.take_pin(lsid);
}

void MongoProxy::claim_session(const std::string& lsid, std::int64_t conn) {
  std::lock_guard lock(mu_);
  ownership_.claim_session(lsid, conn, Clock::now());
}

bool MongoProxy::may_end_session(const std::string& lsid, std::int64_t conn) {
  std::lock_guard lock(mu_);
  return ownership_.may_end_session(lsid, conn);
}

void MongoProxy::forget_session(const std::string& lsid) {
  std::lock_guard lock(mu_);
  ownership_.forget_session(lsid);
}

void MongoProxy::connection_opened(std::int64_t conn) {
  std::lock_guard lock(mu_);
  ownership_.connection_opened(conn);
}

void MongoProxy::connection_closed(std::int64_t conn) {
  std::lock_guard lock(mu_);
  ownership_.connection_closed(conn);
}

}  // namespace sluice::server
