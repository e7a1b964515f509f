// Client cancel keys and forwarding of CancelRequest to the right server backend.
#include "server/cancel_registry.hpp"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include "protocol/pg/scram.hpp"

namespace sluice::server {

pg::BackendKeyData CancelRegistry::add_client() {
  auto random = pg::scram::random_bytes(8);
  std::uint32_t secret = bytes::load_be32(random.data());
  std::lock_guard lock(mu_);
  if (next_pid_ == 0) next_pid_ = (bytes::load_be32(random.data() + 4) & 0x3fffffff) | 1;
  std::uint32_t pid = 0;
  do {
    pid = next_pid_++;
    if (next_pid_ == 0 || next_pid_ > 0x7fffffff) next_pid_ = 1;  // keep pids positive int32
  } while (pid == 0 || entries_.contains(pid));
  entries_[pid] = Entry{secret, nullptr};
  return {pid, secret};
}

void CancelRegistry::set_target(pg::BackendKeyData client, std::optional<CancelTarget> target) {
  std::lock_guard lock(mu_);
  if (auto it = entries_.find(client.pid); it != entries_.end())
    it->second.target = target ? std::make_unique<CancelTarget>(std::move(*target)) : nullptr;
}

void CancelRegistry::remove(pg::BackendKeyData client) {
  std::lock_guard lock(mu_);
  entries_.erase(client.pid);
}

awaitable<void> CancelRegistry::forward(pg::BackendKeyData client) {
  std::optional<CancelTarget> target;
  {
    // One critical section: a session that releases its server clears its target under this
    // lock first, so a cancel read before that is counted before the server can be reused.
    std::lock_guard lock(mu_);
    auto it = entries_.find(client.pid);
    if (it == entries_.end() || !it->second.target ||
        CRYPTO_memcmp(&it->second.secret, &client.secret, sizeof client.secret) != 0)
      co_return;
    target = *it->second.target;
    ++in_flight_[id_of(*target)];
    in_flight_total_.fetch_add(1, std::memory_order_relaxed);
  }
  struct Settle {  // however send_cancel ends, its frame destroyed included
    CancelRegistry* registry;
    BackendId id;
    ~Settle() { registry->settled(id); }
  } settle{this, id_of(*target)};
  co_await send_cancel(*target);
}

awaitable<void> CancelRegistry::wait_settled(CancelTarget backend, const bool* stop) {
  if (!any_in_flight()) co_return;
  const auto id = id_of(backend);
  const auto deadline = Clock::now() + std::chrono::seconds(10);  // send_cancel's own limits: 7 s
  auto cs = co_await asio::this_coro::cancellation_state;
  while (in_flight(id) && !*stop && Clock::now() < deadline &&
         cs.cancelled() == asio::cancellation_type::none)
    co_await sleep_for(std::chrono::milliseconds(2));
}

bool CancelRegistry::in_flight(const BackendId& id) {
  std::lock_guard lock(mu_);
  return in_flight_.contains(id);
}

void CancelRegistry::settled(const BackendId& id) {
  std::lock_guard lock(mu_);
  if (auto it = in_flight_.find(id); it != in_flight_.end() && --it->second == 0)
    in_flight_.erase(it);
  in_flight_total_.fetch_sub(1, std::memory_order_relaxed);
}

awaitable<void> send_cancel(CancelTarget target) {
  using namespace asio::experimental::awaitable_operators;
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  auto [rec, endpoints] =
      co_await resolver.async_resolve(target.host, std::to_string(target.port), use_nothrow);
  if (rec) co_return;
  tcp::socket socket(ex);
  auto c = co_await (asio::async_connect(socket, endpoints, use_nothrow) ||
                     sleep_for(std::chrono::seconds(5)));
  if (c.index() != 0 || std::get<0>(std::get<0>(c))) {
    spdlog::warn("cancel: could not connect to {}:{}", target.host, target.port);
    co_return;
  }
  pg::Buffer req;
  pg::encode_cancel_request(req, target.key);
  co_await asio::async_write(socket, asio::buffer(req), use_nothrow);
  // The server closes the connection once it has read the request; wait for that briefly.
  std::array<char, 1> sink{};
  co_await (socket.async_read_some(asio::buffer(sink), use_nothrow) ||
            sleep_for(std::chrono::seconds(2)));
}

}  // namespace sluice::server
