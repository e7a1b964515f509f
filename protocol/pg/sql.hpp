// Small pieces of SQL text sluice writes itself: literal quoting and startup `options` parsing.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sluice::pg::sql {

// Quotes a string literal like PostgreSQL's quote_literal(): E'' form when backslashes occur.
std::string quote_literal(std::string_view s);

// Quotes an identifier like quote_ident(), always in double quotes.
std::string quote_ident(std::string_view s);

// A statement that fails on the server with this SQLSTATE, message and hint. Sent in place of a
// client's statement, it reports sluice's own error in order, with the server's transaction
// semantics (the transaction is aborted as by any error).
std::string raise_error(std::string_view sqlstate, std::string_view message, std::string_view hint);

// A setting name as the server accepts it (letters, digits, '_', '.'), so it can be sent as text.
bool is_setting_name(std::string_view name);

// Parses the `options` startup parameter ("-c name=value --name=value", backslash escapes a space)
// into settings. Returns nullopt when it holds something other than settings.
std::optional<std::vector<std::pair<std::string, std::string>>> parse_options(
    std::string_view opts);

}  // namespace sluice::pg::sql
