// A Redis client on the Asio event loop: RESP replies parsed by hiredis' redisReader fed from
// an Asio socket, commands pipelined on one connection, every command bounded by a timeout,
// reconnection with backoff, AUTH (password or ACL user) and SELECT. A connection belongs to one
// event loop: all of its methods run on that loop's thread.
//
// Redis is optional at run time: while a connection is down, command() completes at once with
// nullopt and the caller serves from the databases instead.
#pragma once

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct redisReader;

namespace sluice::cache {

namespace asio = boost::asio;

struct RedisReply {
  enum class Type : std::uint8_t { kNil, kString, kStatus, kInteger, kArray, kError };
  Type type = Type::kNil;
  std::string str;  // kString, kStatus, kError
  long long integer = 0;
  std::vector<RedisReply> elements;
  bool error() const { return type == Type::kError; }
  bool nil() const { return type == Type::kNil; }
};

struct RedisEndpoint {
  std::string host = "127.0.0.1";
  std::uint16_t port = 6379;
  std::string user;  // ACL user; empty: AUTH with the password alone
  std::string password;
  int db = 0;
  std::string display() const;  // host:port/db, never the password
};

// redis://[[user]:password@]host[:port][/db]; nullopt with `why` set when malformed.
std::optional<RedisEndpoint> parse_redis_url(std::string_view url, std::string* why);

// One command in RESP: an array of bulk strings.
std::string encode_command(const std::vector<std::string>& args);

// Incremental RESP reader (hiredis' redisReader).
class ReplyParser {
 public:
  ReplyParser();
  ~ReplyParser();
  ReplyParser(const ReplyParser&) = delete;
  ReplyParser& operator=(const ReplyParser&) = delete;
  void feed(std::string_view bytes);
  void reset();
  // The next whole reply; nullopt when more bytes are needed. Sets `broken` on a protocol error.
  std::optional<RedisReply> next(bool& broken);

 private:
  redisReader* reader_;
};

class RedisConnection : public std::enable_shared_from_this<RedisConnection> {
 public:
  struct Options {
    RedisEndpoint endpoint;
    std::chrono::milliseconds connect_timeout{1000};
    std::chrono::milliseconds command_timeout{200};
    std::string subscribe;  // non-empty: a subscriber connection to this channel
  };
  // Called on every change of state: up, or down with the reason.
  using StateHandler = std::function<void(bool up, const std::string& why)>;
  // Subscriber connections: each message published on the channel.
  using MessageHandler = std::function<void(std::string_view payload)>;

  RedisConnection(asio::any_io_executor ex, Options options);
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  void start(StateHandler on_state, MessageHandler on_message = {});
  void stop();  // on the connection's loop
  bool up() const { return up_; }
  const asio::any_io_executor& executor() const { return ex_; }

  // Sends the commands in one write; their replies in order, or nullopt (down, timeout).
  asio::awaitable<std::optional<std::vector<RedisReply>>> run(
      std::vector<std::vector<std::string>> commands);
  asio::awaitable<std::optional<RedisReply>> command(std::vector<std::string> args);
  // A read-only command whose reply may serve every identical call made meanwhile: at most one
  // round of it is in flight; calls made while one is join the next, sent when that one
  // returns. A call never gets the reply of a round sent before it began, so the reply reflects
  // every write Redis had acknowledged by then (as command() would).
  asio::awaitable<std::optional<RedisReply>> shared_read(std::vector<std::string> args);
  // Sends without waiting for the reply (it is read and dropped). False when down.
  bool send(const std::vector<std::string>& args);

 private:
  struct Pending;
  struct ReadRound;
  struct ReadGroup {
    bool in_flight = false;           // a round of this read was sent and has not returned
    std::shared_ptr<ReadRound> next;  // the calls waiting for the next round
  };
  asio::awaitable<void> run_rounds(std::vector<std::string> args);
  asio::awaitable<void> connect_loop();
  asio::awaitable<bool> handshake();
  asio::awaitable<std::string> try_connect();  // "" when connected and logged in
  asio::awaitable<void> read_loop();
  asio::awaitable<void> write_loop();
  void enqueue(const std::vector<std::string>& args, std::shared_ptr<Pending> p);
  void fail(const std::string& why);
  void deliver(RedisReply reply);

  asio::any_io_executor ex_;
  Options options_;
  asio::ip::tcp::socket socket_;
  StateHandler on_state_;
  MessageHandler on_message_;
  ReplyParser parser_;
  std::deque<std::shared_ptr<Pending>> pending_;
  std::string out_;
  bool writing_ = false;
  bool up_ = false;
  bool stopped_ = false;
  std::uint64_t session_ = 0;  // bumped by every (re)connection
  std::shared_ptr<asio::steady_timer> backoff_;
  std::map<std::vector<std::string>, ReadGroup> reads_;  // shared_read() rounds by command
};

}  // namespace sluice::cache
