// Transaction pooling without breakage, sans-I/O: each client's prepared statements and settings
// are its own, and follow it onto whichever server connection it gets next.
//
// A PooledSession sees every client message that matters (Parse, Bind, Describe, Close, Query,
// Sync, FunctionCall) and writes what the server must get instead: statements under server-side
// names of sluice's own ("sluice_" + hash of text and types), prepared on demand on the current
// server; SQL-level PREPAREd statements re-prepared before EXECUTE. It keeps a queue of the
// replies it expects, in order, so the relay can drop the replies to what sluice injected and
// forward the rest untouched.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "protocol/pg/extended.hpp"
#include "protocol/pg/messages.hpp"
#include "routing/known_statements.hpp"
#include "routing/session_statements.hpp"

namespace sluice::routing {

// Setting name (lower case) → value as the server shows it (current_setting()).
using Settings = std::map<std::string, std::string>;
// Rows of a result read back by sluice (NULL = nullopt).
using Rows = std::vector<std::vector<std::optional<std::string>>>;

// A protocol-level prepared statement as the server sees it.
struct PreparedStatement {
  std::string query;
  std::vector<std::uint32_t> param_types;
  std::string server_name;  // "sluice_" + 16 hex digits of a hash of query and types
  bool same_as(const PreparedStatement& o) const {
    return query == o.query && param_types == o.param_types;
  }
};
using StatementPtr = std::shared_ptr<const PreparedStatement>;
StatementPtr make_statement(std::string_view query, std::vector<std::uint32_t> param_types);

// A name for Close that never exists on a server: closing it only yields CloseComplete.
inline constexpr std::string_view kNoSuchStatement = "sluice_none";
// A scratch name: a client's Parse of a statement the server has already is checked under it,
// and it is closed right after, in the same request (it never outlives that request).
inline constexpr std::string_view kProbeStatement = "sluice_probe";

// What sluice knows of one server connection's session: its prepared statements (bounded, LRU),
// SQL-level prepared statements, and the settings sluice changed from the login defaults.
class ServerState {
 public:
  explicit ServerState(std::size_t max_statements = 250)
      : max_statements_(std::max<std::size_t>(max_statements, 1)) {}

  // True when this server has the statement; it becomes the most recently used.
  bool has(const PreparedStatement& s);
  // Records that `s` is being prepared here. Returns server names to Close first: the least
  // recently used beyond the bound, and a different statement under the same name.
  std::vector<StatementPtr> add(StatementPtr s);
  void forget(std::string_view server_name);
  // A Close of `s` sent to this server was skipped (an error before it): the server keeps it.
  void restore(StatementPtr s);
  std::size_t statement_count() const { return lru_.size(); }
  void set_max_statements(std::size_t n) { max_statements_ = std::max<std::size_t>(n, 1); }
  // DEALLOCATE ALL ran: no prepared statement of either kind is left.
  void clear_statements();

  Settings settings;                                // absent: the login default
  std::map<std::string, std::string> sql_prepared;  // PREPARE name → its statement text

 private:
  std::size_t max_statements_;
  std::list<StatementPtr> lru_;  // front = most recently used
  std::unordered_map<std::string_view, std::list<StatementPtr>::iterator> index_;
};

// One statement sluice runs with text parameters (Parse/Bind/Execute). Names and values travel
// as parameters, never inside the SQL text: the server converts them from the connection's
// client_encoding as values, so no encoding whose multibyte characters end in a backslash
// (SJIS, BIG5, GBK...) can make one break out of quoting and run as SQL.
struct ParamQuery {
  std::string sql;
  std::vector<std::optional<std::string>> params;  // nullopt = NULL
};
// Statements that turn `have` into `want` on a server (none when they already agree):
// set_config(name, value) for values that differ, set_config(name, NULL) = RESET for names only
// `have` has. A change of client_encoding comes first, alone: the server converts each Bind's
// parameters with the encoding in effect when it arrives, and the values are in the new one.
std::vector<ParamQuery> settings_sync(const Settings& want, const Settings& have);
// Statements whose rows are (name, current_setting(name, true)) for each name.
std::vector<ParamQuery> settings_capture(const std::set<std::string>& names);
// Cheap check before parsing: false only when `sql` cannot change session state or pin.
bool may_affect_session(std::string_view sql);
// Cheap check: false only when no statement of `sql` is a DROP or ALTER (which may make a
// statement that parsed before fail to parse now).
bool may_break_statements(std::string_view sql);

class PooledSession {
 public:
  struct Options {
    bool pin_is_error = false;  // pool.pinning: error
    // Statements known to parse, shared by the clients of one pool (null: no local answers),
    // and what keys them to that pool (database and user).
    KnownStatements* known = nullptr;
    std::string scope;
  };
  PooledSession(AnalysisCache& analyses, Settings startup, Options options)
      : analyses_(analyses), startup_(startup), settings_(std::move(startup)), options_(options) {}

  // ---- client → server ----
  struct ClientOutcome {
    bool bad = false;        // malformed message: a protocol violation
    std::optional<Pin> pin;  // the message needs a session of its own (or was refused)
  };
  // A whole client message of a type the relay inspects ('P','B','D','C','Q','S','F'); appends
  // what the server must receive to `out`.
  ClientOutcome on_client(const pg::Frame& f, ServerState& server, pg::Buffer& out);
  // A client message passed through unchanged (Execute, Flush, CopyData...).
  void on_client_passed(char type);

  // ---- a client that holds no server connection ----
  struct LocalAnswer {
    enum Kind { kNo, kNeedMore, kAnswered } kind = kNo;
    std::size_t need = 0;      // kNeedMore: at least this many more bytes
    std::size_t consumed = 0;  // kAnswered: bytes of `data` answered, through the Sync
  };
  // The first request in `data`, when sluice answers it without a server: named Parses of new
  // names whose statements are known to parse under this client's settings, Closes, then Sync.
  // On kAnswered the statements exist for the client (prepared on a server at their first
  // Bind) and `out` holds ParseComplete/CloseComplete and ReadyForQuery.
  LocalAnswer answer_detached(pg::Span data, pg::Buffer& out);

  // ---- server → client ----
  enum class Verdict { kForward, kDrop, kDesync };
  // A whole server message; the relay must show it whole for '1','2','3','E','Z','S', and for
  // every message while swallowing() is true.
  Verdict on_server(const pg::Frame& f, ServerState& server);
  // The next server messages answer a query sluice injected: drop all of them.
  bool swallowing() const {
    return !expect_empty() && front().injected && front().kind == Expect::kSync;
  }

  // Nothing outstanding, outside a transaction, no unsynced extended messages: the server
  // connection may go back to the pool.
  bool idle() const { return expect_empty() && !unsynced_ && tx_status_ == 'I'; }
  char tx_status() const { return tx_status_; }
  // Extended-query messages were sent after the last Sync (e.g. Describe + Flush).
  bool unsynced() const { return unsynced_; }
  // Client requests (Query, Sync, FunctionCall) not yet answered by ReadyForQuery.
  int pending() const { return pending_; }

  // ---- on attach / release ----
  const Settings& settings() const { return settings_; }
  // Names whose values must be read back from the server before it is released.
  const std::set<std::string>& touched() const { return touched_; }
  // What to read back: touched(), and every setting when client_encoding was touched (the
  // server shows values in the client's encoding; those kept were read in the old one).
  std::set<std::string> capture_names() const;
  // The server's answer to settings_capture(capture_names()).
  void apply_capture(const Rows& rows, ServerState& server);
  // SQL-level prepared statements whose creation may have failed: names to check on the server.
  const std::set<std::string>& uncertain() const { return uncertain_; }
  // `present`: names of SQL-prepared statements the server really has (pg_prepared_statements).
  void apply_present(const std::set<std::string>& present, ServerState& server);
  // After the settings were synced to a new server.
  void attached(ServerState& server) { server.settings = settings_; }

  std::size_t statement_count() const { return statements_.size(); }
  // The client's named protocol-level statement, or null.
  StatementPtr statement(std::string_view client_name) const {
    auto it = statements_.find(std::string(client_name));
    return it == statements_.end() ? nullptr : it->second;
  }
  // Nothing beyond the startup settings: an idle client's session can be built again from them
  // (a parked client then keeps no PooledSession).
  bool fresh() const {
    return statements_.empty() && sql_prepared_.empty() && touched_.empty() && uncertain_.empty() &&
           expect_empty() && !unsynced_ && !skipping_ && tx_status_ == 'I' && pending_ == 0 &&
           settings_ == startup_;
  }
  // Gives back the reply queue's memory while the client idles.
  void trim() {
    if (expect_empty()) std::vector<Expect>().swap(expect_);
  }

 private:
  struct Expect {
    enum Kind : std::uint8_t { kReply, kSync };  // '1'/'2'/'3', or a request ending in 'Z'
    Expect(Kind k, bool inj = false, StatementPtr p = nullptr, std::string client = {})
        : kind(k), injected(inj), prepared(std::move(p)), client_name(std::move(client)) {}
    Kind kind;
    bool injected = false;
    bool failed = false;
    bool probe = false;       // parsed under kProbeStatement: the server's copy of
                              // `prepared` is untouched either way
    StatementPtr prepared;    // a Parse: the server has it only if this succeeds
    std::string client_name;  // a client's named Parse: it exists only if this succeeds
    std::string sql_name;     // an injected PREPARE: the server has it only if this succeeds
    StatementPtr closed;      // a client's Close of `client_name`: it stays if the server skips it
    StatementPtr evicted;     // sluice's Close of a server copy: it stays if the server skips it
    std::string known_key;    // a Parse first in its request, outside a transaction: on success
                              // its statement is known to parse under the client's settings
  };
  void push(Expect e);
  // The queue of expected replies: a vector and a head index (a deque allocates ~600 bytes up
  // front, per idle client).
  bool expect_empty() const { return head_ == expect_.size(); }
  const Expect& front() const { return expect_[head_]; }
  Expect& front() { return expect_[head_]; }
  void pop_front() {
    if (++head_ == expect_.size()) {
      expect_.clear();
      head_ = 0;
    }
  }
  void ensure_prepared(const StatementPtr& s, ServerState& server, pg::Buffer& out);
  // Names `s` under this client's pool and settings in options_.known.
  std::string known_key(const PreparedStatement& s) const;
  // Nothing is in flight or unsynced, outside a transaction, settings all read back.
  bool at_rest() const {
    return expect_empty() && !unsynced_ && !skipping_ && tx_status_ == 'I' && touched_.empty();
  }
  void inject_query(std::string sql, pg::Buffer& out);
  ClientOutcome on_query(std::string_view sql, ServerState& server, pg::Buffer& out);
  std::optional<Pin> note_text(const Analysis& a, ServerState& server, pg::Buffer& out,
                               bool simple_query);
  void ensure_sql_prepared(const std::string& name, ServerState& server, pg::Buffer& out);
  // Undoes what sluice recorded for a reply the server skipped; `on_server` false: only the
  // client's side (the server's copy is known otherwise).
  void drop_reply(const Expect& e, ServerState& server, bool on_server = true);
  void close_on_server(StatementPtr s, pg::Buffer& out);
  // A Parse of `s` waits for its reply behind a Sync sent since: the server may still skip it.
  bool parse_unsettled(const PreparedStatement& s) const;

  AnalysisCache& analyses_;
  Settings startup_;
  Settings settings_;
  Options options_;
  std::unordered_map<std::string, StatementPtr> statements_;  // client name → statement
  std::map<std::string, std::string> sql_prepared_;           // SQL PREPARE name → text
  std::set<std::string> touched_;
  std::set<std::string> uncertain_;
  std::vector<Expect> expect_;
  std::size_t head_ = 0;
  bool unsynced_ = false;
  // An extended-query message failed and the client's Sync is still to come: the server
  // discards everything until then.
  bool skipping_ = false;
  char tx_status_ = 'I';
  int pending_ = 0;
};

}  // namespace sluice::routing
