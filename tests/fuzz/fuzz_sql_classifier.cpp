// libFuzzer: session-state analysis of arbitrary SQL (libpg_query + the JSON walk). Properties:
// unparsed SQL yields no statements; each statement's own text (what sluice replays on another
// server connection) analyses again to one statement of the same kind and name; a SET value
// quoted with quote_literal() reads back as the same value.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "protocol/pg/sql.hpp"
#include "routing/session_statements.hpp"

using namespace sluice;

namespace {

void check_statement(const routing::Statement& s) {
  using routing::StatementKind;
  if (s.text.empty()) return;  // an empty statement between semicolons
  auto again = routing::analyze(s.text);
  if (!again.parsed || again.statements.size() != 1) __builtin_trap();
  const auto& t = again.statements[0];
  if (t.kind != s.kind || t.name != s.name || t.value != s.value) __builtin_trap();
  if (s.kind != StatementKind::kSet || s.name.empty() || s.value.find('\0') != s.value.npos) return;
  // What sluice sends to restore a setting elsewhere: SET "name" = 'value'.
  auto restored = routing::analyze("SET " + pg::sql::quote_ident(s.name) + " = " +
                                   pg::sql::quote_literal(s.value));
  if (!restored.parsed || restored.statements.size() != 1 ||
      restored.statements[0].value != s.value)
    __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view sql(reinterpret_cast<const char*>(data), size);
  auto analysis = routing::analyze(sql);
  if (!analysis.parsed) {
    if (!analysis.statements.empty() || !analysis.pins.empty()) __builtin_trap();
    return 0;
  }
  if (size > 2048) return 0;  // re-parsing every statement is for inputs of ordinary size
  for (const auto& s : analysis.statements) check_statement(s);
  return 0;
}
