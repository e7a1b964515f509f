// Statement shapes: SQL text with numeric and quoted-string literals masked. Texts that differ
// only in constants share a shape, so caches keyed by it run libpg_query once per shape, not once
// per literal value (a simple-protocol client sends a new text for every value). Conservative:
// identifiers, "quoted identifiers", comments and $n stay as written; a text with a backslash
// (E'' strings), a block comment or a dollar quote is its own shape.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace sluice::routing {

std::uint64_t shape_hash(std::string_view sql);
std::string statement_shape(std::string_view sql);
// The key read/write classification is cached under: the shape, except for EXPLAIN, whose
// options are literals that decide whether it runs the statement.
std::string read_facts_key(std::string_view sql);
// Text safe to show people (SHOW QUERIES, SHOW CACHE, logs, metric labels) of a statement the
// parser refused: numbers and quoted strings become '?', -- comments are cut; from the first
// construct the masker does not lex (a backslash, a block comment, a dollar quote) to the end
// everything becomes "?...". Never shows a literal value.
std::string masked_text(std::string_view sql);

}  // namespace sluice::routing
