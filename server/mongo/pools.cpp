// The MongoDB proxy's pooled server connections (per event loop) and its message reader.
#include "server/mongo/pools.hpp"

namespace sluice::server {

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

std::unique_ptr<MongoConn> MongoPools::take_idle(Slot& slot) {
  while (!slot.idle.empty()) {
    auto conn = std::move(slot.idle.back());
    slot.idle.pop_back();
    slot.gauges->idle--;
    if (conn->stream.idle_and_open()) return conn;
    --slot.open;  // closed by the server meanwhile
  }
  return nullptr;
}

awaitable<MongoPools::Checkout> MongoPools::get(const MongoServerState& server,
                                                const config::Mongo& cfg) {
  auto& slot = servers_[server.address];
  if (!slot.gauges) slot.gauges = &counters_.pool(server.address);
  const auto deadline = Clock::now() + cfg.wait_timeout;
  for (;;) {
    if (auto conn = take_idle(slot)) {
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

void MongoPools::put(std::unique_ptr<MongoConn> conn, bool reusable) {
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

void MongoPools::close_all() {
  for (auto& [addr, slot] : servers_) {
    for (auto& c : slot.idle) c->stream.close();
    if (slot.gauges) slot.gauges->idle -= static_cast<std::int64_t>(slot.idle.size());
    slot.open -= static_cast<std::uint32_t>(slot.idle.size());
    slot.idle.clear();
  }
}

awaitable<MongoPools::Checkout> MongoPools::connect(const MongoServerState& server,
                                                    const config::Mongo& cfg) {
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

}  // namespace sluice::server
