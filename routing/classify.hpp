// Read/write classification of SQL with the real PostgreSQL parser (libpg_query): whether a
// statement string only reads (and may run on a replica), the functions it calls (whose
// volatility the catalog decides), transaction control, and routing hints in a leading comment.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "routing/shape.hpp"
#include "routing/text_cache.hpp"

namespace boost::json {
class object;
}

namespace sluice::routing {

enum class Hint : std::uint8_t { kNone, kPrimary, kReplica };

// A function named in the statement: pg_catalog.nextval → {"pg_catalog", "nextval"}.
struct FunctionRef {
  std::string schema;  // empty when unqualified
  std::string name;
  int args = -1;  // arguments passed (-1: not known; every overload may be meant)
  bool operator==(const FunctionRef&) const = default;
};

struct ReadFacts {
  bool parsed = false;  // false: the parser refused it (it goes to the primary)
  // Every statement is a read (SELECT/VALUES/TABLE without locking, INTO or data-modifying CTEs;
  // SHOW; EXPLAIN without ANALYZE) or touches only session/transaction state (SET, RESET,
  // COMMIT, ROLLBACK, SAVEPOINT...), and at least one statement exists.
  bool read = false;
  bool begins = false;          // BEGIN / START TRANSACTION opens an explicit transaction
  bool read_only_tx = false;    // ... READ ONLY, or SET TRANSACTION READ ONLY follows
  bool read_write_tx = false;   // ... READ WRITE said explicitly
  bool catalog_change = false;  // CREATE/ALTER/DROP FUNCTION, EXTENSION...: volatility may change
  bool show_last_write_lsn = false;  // exactly "SHOW sluice.last_write_lsn" (answered by sluice)
  std::uint32_t statements = 0;      // statements in the text
  bool plain_select = false;         // exactly one statement, a SELECT/VALUES/TABLE that reads
  Hint hint = Hint::kNone;           // /* sluice:primary */ or /* sluice:replica */ leading comment
  std::vector<FunctionRef> functions;  // every function called, each once
  // Some function called answers with the server itself (names_server): the primary, not a write.
  bool server_identity = false;
};

// Never throws; unparseable input gives parsed=false.
ReadFacts read_facts(std::string_view sql);
// True when `f`'s answer names the server that runs it (pg_backend_pid(), ...): a later statement
// acts on it (pg_cancel_backend(pid)), and that one runs on the primary. The list: classify.cpp.
bool names_server(const FunctionRef& f);
// The function a FuncCall node of libpg_query's JSON tree calls.
std::optional<FunctionRef> function_ref(const boost::json::object& call);
// "SET sluice.route = primary" (or TO, any case, optional semicolon): PRIMARY is a reserved word,
// so the server refuses it unquoted; sluice quotes it.
bool is_set_route_primary(std::string_view sql);
// The hint in a leading /* ... */ comment, if any.
Hint leading_hint(std::string_view sql);

// Cached by statement shape: literal values do not change where a statement may run (EXPLAIN
// aside, which read_facts_key keeps whole).
struct ReadFactsKey {
  static std::string_view key(std::string_view sql, std::string& buffer) {
    buffer = read_facts_key(sql);
    return buffer;
  }
};
using ReadFactsCache = TextCache<ReadFacts, read_facts, ReadFactsKey>;

class FunctionCatalog;
// Whether sluice may EXPLAIN this text on a connection of its own: one plain read (no
// data-modifying CTE, locking clause or INTO) whose every function is known to be immutable or
// stable in `catalog`. Anything else is never sent, not even inside a read-only transaction.
bool explainable(const ReadFacts& facts, const FunctionCatalog& catalog);

// pg_proc.provolatile of every function of one database, as fetched from its primary.
class FunctionCatalog {
 public:
  // `nargs` arguments, the last `defaults` of them optional, `variadic` taking any number more.
  void add(std::string schema, std::string name, char volatility, int nargs = -1, int defaults = 0,
           bool variadic = false);
  // True when calling `f` may write or depends on more than its arguments and the snapshot:
  // some overload is volatile, or the function is unknown (created since the last fetch).
  bool may_write(const FunctionRef& f) const;
  // True when `f` is known and every overload it may mean is immutable (cacheable results).
  bool immutable(const FunctionRef& f) const;
  // True when every overload `f` may mean lives in pg_catalog (built in).
  bool builtin(const FunctionRef& f) const;
  std::size_t size() const { return count_; }

 private:
  struct Entry {
    std::string schema;
    char volatility;
    int nargs;  // -1: any
    int defaults;
    bool variadic;
  };
  // Whether `e` can be the overload `f` calls (schema and number of arguments).
  static bool candidate(const Entry& e, const FunctionRef& f);
  // True when `f` is known and `pred` holds for every overload it may mean.
  bool every_overload(const FunctionRef& f, bool (*pred)(const Entry&)) const;
  std::unordered_map<std::string, std::vector<Entry>> by_name_;
  std::size_t count_ = 0;
};

// The SQL that lists (schema, name, provolatile) for FunctionCatalog::add.
inline constexpr std::string_view kFunctionCatalogSql =
    "SELECT n.nspname, p.proname, p.provolatile, p.pronargs, p.pronargdefaults, "
    "p.provariadic <> 0 FROM pg_catalog.pg_proc p "
    "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace";

}  // namespace sluice::routing
