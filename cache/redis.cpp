#include "cache/redis.hpp"

#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <charconv>

namespace sluice::cache {

namespace {

using asio::awaitable;
using tcp = asio::ip::tcp;
constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

RedisReply convert(const redisReply* r) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::kError;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::kArray;
      out.elements.reserve(r->elements);
      for (std::size_t i = 0; i < r->elements; ++i) out.elements.push_back(convert(r->element[i]));
      break;
    default:
      out.type = RedisReply::Type::kNil;
  }
  return out;
}

std::string percent_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      int v = 0;
      auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
      if (ec == std::errc() && p == s.data() + i + 3) {
        out.push_back(static_cast<char>(v));
        i += 2;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

}  // namespace

std::string RedisEndpoint::display() const {
  return host + ":" + std::to_string(port) + "/" + std::to_string(db);
}

std::optional<RedisEndpoint> parse_redis_url(std::string_view url, std::string* why) {
  auto bad = [&](std::string w) -> std::optional<RedisEndpoint> {
    if (why) *why = std::move(w);
    return std::nullopt;
  };
  constexpr std::string_view scheme = "redis://";
  if (!url.starts_with(scheme)) return bad("expected redis://[user:password@]host:port[/db]");
  url.remove_prefix(scheme.size());
  RedisEndpoint e;
  if (auto at = url.rfind('@'); at != std::string_view::npos) {
    auto cred = url.substr(0, at);
    url.remove_prefix(at + 1);
    if (auto colon = cred.find(':'); colon != std::string_view::npos) {
      e.user = percent_decode(cred.substr(0, colon));
      e.password = percent_decode(cred.substr(colon + 1));
    } else {
      e.password = percent_decode(cred);
    }
  }
  std::string_view hostport = url;
  if (auto slash = url.find('/'); slash != std::string_view::npos) {
    hostport = url.substr(0, slash);
    auto db = url.substr(slash + 1);
    if (!db.empty()) {
      auto [p, ec] = std::from_chars(db.data(), db.data() + db.size(), e.db);
      if (ec != std::errc() || p != db.data() + db.size() || e.db < 0)
        return bad("the database after '/' must be a number");
    }
  }
  std::string_view host = hostport;
  if (!hostport.empty() && hostport.front() == '[') {  // [::1]:6379
    auto close = hostport.find(']');
    if (close == std::string_view::npos) return bad("unterminated [ in the host");
    host = hostport.substr(1, close - 1);
    hostport.remove_prefix(close + 1);
    if (!hostport.empty() && hostport.front() != ':') return bad("expected :port after ]");
    if (!hostport.empty())
      hostport.remove_prefix(1);
    else
      hostport = {};
  } else if (auto colon = hostport.rfind(':'); colon != std::string_view::npos) {
    host = hostport.substr(0, colon);
    hostport = hostport.substr(colon + 1);
  } else {
    hostport = {};
  }
  if (host.empty()) return bad("the host is missing");
  e.host = std::string(host);
  if (!hostport.empty()) {
    unsigned port = 0;
    auto [p, ec] = std::from_chars(hostport.data(), hostport.data() + hostport.size(), port);
    if (ec != std::errc() || p != hostport.data() + hostport.size() || port == 0 || port > 65535)
      return bad("the port must be a number from 1 to 65535");
    e.port = static_cast<std::uint16_t>(port);
  }
  return e;
}

std::string encode_command(const std::vector<std::string>& args) {
  std::string out = "*" + std::to_string(args.size()) + "\r\n";
  for (const auto& a : args) {
    out += "$";
    out += std::to_string(a.size());
    out += "\r\n";
    out += a;
    out += "\r\n";
  }
  return out;
}

ReplyParser::ReplyParser() : reader_(redisReaderCreate()) {}
ReplyParser::~ReplyParser() {
  redisReaderFree(reader_);
}

void ReplyParser::reset() {
  redisReaderFree(reader_);
  reader_ = redisReaderCreate();
}

void ReplyParser::feed(std::string_view bytes) {
  redisReaderFeed(reader_, bytes.data(), bytes.size());
}

std::optional<RedisReply> ReplyParser::next(bool& broken) {
  void* raw = nullptr;
  if (redisReaderGetReply(reader_, &raw) != REDIS_OK) {
    broken = true;
    return std::nullopt;
  }
  if (raw == nullptr) return std::nullopt;
  auto reply = convert(static_cast<redisReply*>(raw));
  freeReplyObject(raw);
  return reply;
}

struct RedisConnection::Pending {
  std::optional<RedisReply> reply;
  bool done = false;
  std::shared_ptr<asio::steady_timer> waiter;  // null: nobody waits for this reply
  std::vector<RedisReply>* batch = nullptr;    // replies of a run() batch go here
};

RedisConnection::RedisConnection(asio::any_io_executor ex, Options options)
    : ex_(ex), options_(std::move(options)), socket_(ex) {}

RedisConnection::~RedisConnection() = default;

void RedisConnection::start(StateHandler on_state, MessageHandler on_message) {
  on_state_ = std::move(on_state);
  on_message_ = std::move(on_message);
  asio::co_spawn(ex_, connect_loop(), asio::detached);  // it holds a reference to this
}

void RedisConnection::stop() {
  stopped_ = true;
  if (backoff_) backoff_->cancel();
  fail("stopped");
}

void RedisConnection::fail(const std::string& why) {
  boost::system::error_code ec;
  socket_.close(ec);
  auto pending = std::move(pending_);
  pending_.clear();
  out_.clear();
  for (auto& p : pending) {
    p->done = true;
    if (p->waiter) p->waiter->cancel();
  }
  if (up_) {
    up_ = false;
    if (on_state_) on_state_(false, why);
  }
}

void RedisConnection::enqueue(const std::vector<std::string>& args, std::shared_ptr<Pending> p) {
  out_ += encode_command(args);
  pending_.push_back(std::move(p));
  if (!writing_) {
    writing_ = true;
    asio::co_spawn(ex_, write_loop(), asio::detached);
  }
}

awaitable<void> RedisConnection::write_loop() {
  auto self = shared_from_this();
  std::string buf;
  const auto session = session_;
  while (!out_.empty() && up_ && session == session_) {
    buf.clear();
    buf.swap(out_);
    auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(buf), use_nothrow);
    if (ec) {
      if (session == session_) fail("write failed: " + ec.message());
      break;
    }
  }
  writing_ = false;
}

bool RedisConnection::send(const std::vector<std::string>& args) {
  if (!up_) return false;
  enqueue(args, std::make_shared<Pending>());
  return true;
}

awaitable<std::optional<std::vector<RedisReply>>> RedisConnection::run(
    std::vector<std::vector<std::string>> commands) {
  if (!up_ || commands.empty()) co_return std::nullopt;
  auto self = shared_from_this();
  std::vector<RedisReply> replies;
  replies.reserve(commands.size());
  auto waiter = std::make_shared<asio::steady_timer>(ex_, options_.command_timeout);
  std::shared_ptr<Pending> last;
  const auto session = session_;
  for (std::size_t i = 0; i < commands.size(); ++i) {
    auto p = std::make_shared<Pending>();
    p->batch = &replies;
    if (i + 1 == commands.size()) {
      p->waiter = waiter;
      last = p;
    }
    enqueue(commands[i], std::move(p));
  }
  co_await waiter->async_wait(use_nothrow);
  if (!last->done) {  // the timer ran out
    if (session == session_)
      fail("no reply within cache.command_timeout (" +
           std::to_string(options_.command_timeout.count()) + " ms)");
    co_return std::nullopt;
  }
  if (replies.size() != commands.size()) co_return std::nullopt;  // the connection failed
  co_return replies;
}

awaitable<std::optional<RedisReply>> RedisConnection::command(std::vector<std::string> args) {
  std::vector<std::vector<std::string>> one;
  one.push_back(std::move(args));
  auto r = co_await run(std::move(one));
  if (!r) co_return std::nullopt;
  co_return std::move(r->front());
}

struct RedisConnection::ReadRound {
  std::optional<RedisReply> reply;
  bool done = false;
  std::vector<std::shared_ptr<asio::steady_timer>> waiters;
};

awaitable<std::optional<RedisReply>> RedisConnection::shared_read(std::vector<std::string> args) {
  if (!up_) co_return std::nullopt;
  auto& group = reads_[args];  // map nodes stay put while others come and go
  if (!group.in_flight) {      // nothing in flight: this call sends its round at once
    group.in_flight = true;
    auto self = shared_from_this();
    std::vector<std::string> key = args;  // named: no temporary inside a co_await (g++ 12)
    auto reply = co_await command(std::move(args));
    if (auto it = reads_.find(key); it != reads_.end()) {
      if (it->second.next)  // calls joined meanwhile: their round goes out now
        asio::co_spawn(ex_, run_rounds(std::move(key)), asio::detached);
      else
        reads_.erase(it);
    }
    co_return reply;
  }
  if (!group.next) group.next = std::make_shared<ReadRound>();
  auto round = group.next;
  // The round in flight and then this one, each bounded by command_timeout.
  auto waiter = std::make_shared<asio::steady_timer>(
      ex_, 2 * options_.command_timeout + std::chrono::milliseconds(50));
  round->waiters.push_back(waiter);
  co_await waiter->async_wait(use_nothrow);
  if (!round->done) co_return std::nullopt;
  co_return round->reply;
}

// After a round of `args` returned: sends the next one while calls wait for it.
awaitable<void> RedisConnection::run_rounds(std::vector<std::string> args) {
  auto self = shared_from_this();
  for (;;) {
    auto it = reads_.find(args);
    if (it == reads_.end()) co_return;
    auto round = std::move(it->second.next);
    if (!round) {
      reads_.erase(it);
      co_return;
    }
    std::vector<std::string> again = args;
    auto reply = co_await command(std::move(again));
    round->reply = std::move(reply);
    round->done = true;
    for (auto& w : round->waiters) w->cancel();
  }
}

void RedisConnection::deliver(RedisReply reply) {
  if (!options_.subscribe.empty()) {
    if (reply.type == RedisReply::Type::kArray && reply.elements.size() == 3 &&
        reply.elements[0].str == "message" && on_message_)
      on_message_(reply.elements[2].str);
    return;
  }
  if (pending_.empty()) {
    fail("a reply nobody asked for");
    return;
  }
  auto p = std::move(pending_.front());
  pending_.pop_front();
  p->done = true;
  if (p->batch) p->batch->push_back(std::move(reply));
  if (p->waiter) p->waiter->cancel();
}

awaitable<bool> RedisConnection::handshake() {
  std::vector<std::vector<std::string>> cmds;
  const auto& e = options_.endpoint;
  if (!e.password.empty()) {
    if (e.user.empty())
      cmds.push_back({"AUTH", e.password});
    else
      cmds.push_back({"AUTH", e.user, e.password});
  }
  if (e.db != 0) cmds.push_back({"SELECT", std::to_string(e.db)});
  if (!options_.subscribe.empty()) cmds.push_back({"SUBSCRIBE", options_.subscribe});
  if (cmds.empty()) cmds.push_back({"PING"});
  std::string out;
  for (const auto& c : cmds) out += encode_command(c);
  auto [wec, wn] = co_await asio::async_write(socket_, asio::buffer(out), use_nothrow);
  if (wec) co_return false;
  std::size_t got = 0;
  char buf[4096];
  while (got < cmds.size()) {
    auto [ec, n] = co_await socket_.async_read_some(asio::buffer(buf), use_nothrow);
    if (ec) co_return false;
    parser_.feed(std::string_view(buf, n));
    bool broken = false;
    while (auto r = parser_.next(broken)) {
      if (r->error()) {
        // The password is never logged: only what Redis said.
        spdlog::warn("cache: redis {} refused the handshake: {}", options_.endpoint.display(),
                     r->str);
        co_return false;
      }
      ++got;
    }
    if (broken) co_return false;
  }
  co_return true;
}

awaitable<void> RedisConnection::read_loop() {
  std::vector<char> buf(16 * 1024);
  const auto session = session_;
  for (;;) {
    auto [ec, n] = co_await socket_.async_read_some(asio::buffer(buf), use_nothrow);
    if (session != session_) co_return;
    if (ec) {
      fail(ec == asio::error::eof ? std::string("redis closed the connection")
                                  : "read failed: " + ec.message());
      co_return;
    }
    parser_.feed(std::string_view(buf.data(), n));
    bool broken = false;
    while (auto r = parser_.next(broken)) deliver(std::move(*r));
    if (broken) {
      fail("malformed reply from redis");
      co_return;
    }
    if (session != session_) co_return;
  }
}

awaitable<std::string> RedisConnection::try_connect() {
  tcp::resolver resolver(ex_);
  auto [rec, results] = co_await resolver.async_resolve(
      options_.endpoint.host, std::to_string(options_.endpoint.port), use_nothrow);
  if (rec) co_return "cannot resolve " + options_.endpoint.host + ": " + rec.message();
  boost::system::error_code cec = asio::error::host_not_found;
  for (const auto& r : results) {
    socket_ = tcp::socket(ex_);
    auto [ec] = co_await socket_.async_connect(r.endpoint(), use_nothrow);
    cec = ec;
    if (!ec) break;
  }
  if (cec) co_return "connect failed: " + cec.message();
  boost::system::error_code ignored;
  socket_.set_option(tcp::no_delay(true), ignored);
  if (!co_await handshake()) co_return std::string("handshake failed");
  co_return std::string();
}

awaitable<void> RedisConnection::connect_loop() {
  using namespace asio::experimental::awaitable_operators;
  auto self = shared_from_this();
  std::chrono::milliseconds backoff{100};
  std::string last_error;
  while (!stopped_) {
    ++session_;
    parser_.reset();  // no half reply from the last connection
    asio::steady_timer deadline(ex_, options_.connect_timeout);
    auto r = co_await (try_connect() || deadline.async_wait(use_nothrow));
    if (stopped_) break;
    std::string why =
        r.index() == 0 ? std::get<0>(r) : std::string("connect timed out (cache.connect_timeout)");
    if (why.empty()) {
      backoff = std::chrono::milliseconds(100);
      up_ = true;
      last_error.clear();
      if (on_state_) on_state_(true, "");
      co_await read_loop();
      if (stopped_) break;
    } else {
      boost::system::error_code ec;
      socket_.close(ec);
      if (why != last_error) {
        spdlog::debug("cache: redis {}: {}", options_.endpoint.display(), why);
        last_error = why;
      }
    }
    backoff_ = std::make_shared<asio::steady_timer>(ex_, backoff);
    co_await backoff_->async_wait(use_nothrow);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
}

}  // namespace sluice::cache
