// What SQL statements do to session state, decided with the real PostgreSQL parser (libpg_query):
// settings (SET/RESET/set_config), SQL-level prepared statements, transaction control, and the
// features that cannot be pooled (pins). Transaction pooling uses it to keep each client's state
// its own. Results are cached in a bounded LRU keyed by the exact statement text.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "routing/text_cache.hpp"

namespace sluice::routing {

enum class StatementKind {
  kOther,
  kSet,            // SET name ... / set_config(name, literal, false): session-wide
  kSetLocal,       // SET LOCAL / set_config(..., true): ends with the transaction
  kReset,          // RESET name / SET name TO DEFAULT
  kResetAll,       // RESET ALL
  kPrepare,        // PREPARE name AS ...
  kExecute,        // EXECUTE name
  kDeallocate,     // DEALLOCATE name
  kDeallocateAll,  // DEALLOCATE ALL
  kDiscardAll,     // DISCARD ALL: forgets settings, prepared statements, temp tables
  kBegin,
  kCommit,    // COMMIT / END / COMMIT PREPARED
  kRollback,  // ROLLBACK / ABORT (not ROLLBACK TO SAVEPOINT)
};

// Session features a pooled server connection cannot carry from one client to the next.
enum class Pin {
  kListen,
  kAdvisoryLock,    // session-level pg_advisory_lock* (the _xact_ forms are fine)
  kTempRelation,    // CREATE TEMP TABLE/VIEW/SEQUENCE, SELECT INTO TEMP
  kWithHoldCursor,  // DECLARE ... WITH HOLD
  kSetRole,         // SET ROLE
  kSessionAuthorization,
  kUntrackedSetConfig,  // set_config(..., false) with non-literal arguments
  // standard_conforming_strings off or a client-only encoding (SJIS, BIG5...): the server no
  // longer lexes strings as libpg_query does, so sluice cannot read the client's SQL
  kLexer,
  kPrepareText,  // SQL PREPARE text that might not be one statement when replayed (a backslash)
};
std::string_view to_string(Pin p);

struct Statement {
  StatementKind kind = StatementKind::kOther;
  std::string name;   // setting (lower case) or prepared statement name
  std::string value;  // kSet/kSetLocal: the literal value (set_config(), SET name = one literal)
  std::string text;   // the statement's own text, to replay a SET on another connection
};

struct Analysis {
  bool parsed = false;  // false: not valid SQL for the parser (the server will say why)
  std::vector<Statement> statements;        // one per statement in the string
  std::vector<Statement> set_config_calls;  // set_config(literal, literal, bool) calls inside them
  std::vector<Pin> pins;
};

// True when the server, with setting `name` at `value`, lexes SQL as libpg_query does: always for
// other settings; for standard_conforming_strings only when on; for client_encoding only for
// encodings whose multibyte characters never contain an ASCII byte that matters to the lexer
// (not SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030, JOHAB: a second byte can be a backslash).
bool lexer_agrees(std::string_view name, std::string_view value);

// Parses `sql` (one or many statements). Never throws; unparseable input gives parsed=false.
Analysis analyze(std::string_view sql);

// Session-state analyses, cached by statement text.
using AnalysisCache = TextCache<Analysis, analyze>;

}  // namespace sluice::routing
