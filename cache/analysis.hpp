// What the cache needs to know of one SQL string, from libpg_query's parse tree: whether it is a
// single SELECT that may be cached (no locking clause, INTO, data-modifying CTE, CURRENT_DATE-like
// value functions or TABLESAMPLE), the relation names it reads and the functions it calls (judged
// against the catalog when used), and what it may write: target relations of INSERT, UPDATE,
// DELETE, MERGE, TRUNCATE and COPY FROM, or "anything" for DDL, DO, CALL and the like.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cache/relations.hpp"
#include "routing/classify.hpp"
#include "routing/text_cache.hpp"

namespace sluice::cache {

struct CacheFacts {
  bool parsed = false;
  bool select = false;  // exactly one SELECT whose result only its inputs decide (functions aside)
  std::vector<RelationName> reads;  // every relation name in FROM clauses, subqueries and CTEs
  std::vector<std::string> ctes;    // names WITH defines (a FROM item of that name may be one)
  std::vector<routing::FunctionRef> functions;  // every function called
  std::vector<RelationName> writes;             // relations the statements write
  bool writes_unknown = false;  // DDL, DO, CALL, EXECUTE...: may change any relation
  bool writes_roles = false;    // CREATE/ALTER/DROP ROLE, GRANT role: every database is affected
  bool catalog_change = false;  // relations or functions may have changed: refetch the catalog
  bool nocache_hint = false;    // /* sluice:nocache */ leading comment
  std::string fingerprint;      // libpg_query fingerprint (hex), for rules and statistics
};

// Never throws; unparseable SQL gives parsed=false (not cacheable, writes_unknown).
CacheFacts cache_facts(std::string_view sql);

// Cached by statement shape: literals do not change any of the facts.
using CacheFactsCache = routing::TextCache<CacheFacts, cache_facts, routing::ReadFactsKey>;

// True when a row-level security policy expression (pg_get_expr of polqual or polwithcheck; ""
// for none) depends on the role alone, so that its rows may be cached per role: it is made only
// of the row's columns, constants, operators, casts, CASE/COALESCE and the like, and
// CURRENT_USER / CURRENT_ROLE / SESSION_USER / USER. Any function call (current_setting(),
// now(), a user function), subquery or other value function (CURRENT_DATE...) depends on more.
// User-defined operators are not seen here (pg_depend tells, see kPoliciesSql).
bool policy_role_only(std::string_view expr);

// True when every function is known and all of its overloads are immutable.
bool all_immutable(const routing::FunctionCatalog& catalog,
                   const std::vector<routing::FunctionRef>& functions);
// True when some function is not a built-in one (pg_catalog) and may be volatile: it may write.
bool user_function_may_write(const routing::FunctionCatalog& catalog,
                             const std::vector<routing::FunctionRef>& functions);

}  // namespace sluice::cache
