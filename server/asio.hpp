// Common Asio aliases for the server: coroutine tokens where I/O errors are values.
#pragma once

#include <spdlog/spdlog.h>

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl.hpp>
#include <chrono>
#include <optional>
#include <string>

namespace sluice::server {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;
using asio::awaitable;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

inline constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

// Completion handler for co_spawn: an exception that escapes a coroutine is logged, never lost.
inline auto log_exceptions(std::string what) {
  return [what = std::move(what)](const std::exception_ptr& e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      spdlog::error("{} stopped with an exception: {}", what, ex.what());
    } catch (...) {
      spdlog::error("{} stopped with an unknown exception", what);
    }
  };
}

// Completes after `d` unless cancelled; used as the right-hand side of `op || sleep_for(d)`.
inline awaitable<void> sleep_for(Clock::duration d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(use_nothrow);
}

// Wraps a result so `op || other` keeps its shape: the operator flattens variant results.
template <typename T>
struct Boxed {
  T value;
};
template <typename T>
awaitable<Boxed<T>> boxed(awaitable<T> op) {
  T value = co_await std::move(op);  // named first: see the g++ 12 note in docs/ARCHITECTURE.md
  co_return Boxed<T>{std::move(value)};
}

// The result of `op`, or nullopt when `d` passes first (op is then cancelled).
template <typename T>
awaitable<std::optional<T>> with_timeout(awaitable<T> op, Clock::duration d) {
  using namespace asio::experimental::awaitable_operators;
  auto r = co_await (boxed(std::move(op)) || sleep_for(d));
  if (r.index() == 1) co_return std::nullopt;
  co_return std::move(std::get<0>(r).value);
}

}  // namespace sluice::server
