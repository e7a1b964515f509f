// Statement shapes: SQL text with its literals masked, so caches keyed by them parse once per
// shape rather than once per literal value.
#include "routing/shape.hpp"

#include "routing/fnv1a.hpp"

namespace sluice::routing {
namespace {

bool ident_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '$' || static_cast<unsigned char>(c) >= 0x80;
}
bool digit(char c) {
  return c >= '0' && c <= '9';
}

// Calls add(c) for the text with numeric and quoted-string literals replaced by one marker each;
// false (nothing added) when the text has a backslash (E'' strings), a block comment or a dollar
// quote, whose lexing is not attempted. Identifiers, "quoted identifiers", -- comments and $n are
// kept as written. An unterminated string is added as written, or with `cut_unterminated` as one
// '\x03' that ends the text.
template <typename Add>
bool mask_literals(std::string_view sql, Add&& add, bool cut_unterminated = false) {
  for (std::size_t k = 0; k < sql.size(); ++k) {
    const char c = sql[k];
    if (c == '\\' || (c == '/' && k + 1 < sql.size() && sql[k + 1] == '*') ||
        (c == '$' && (k + 1 >= sql.size() || !digit(sql[k + 1]))))
      return false;
  }
  std::size_t i = 0;
  const std::size_t n = sql.size();
  while (i < n) {
    char c = sql[i];
    const bool after_ident = i > 0 && ident_char(sql[i - 1]);
    if (digit(c) && !after_ident) {  // 12, 1.5, 1e-3, .5 handled as '.' then digits
      while (i < n && (digit(sql[i]) || sql[i] == '.')) ++i;
      if (i < n && (sql[i] == 'e' || sql[i] == 'E')) {
        std::size_t j = i + 1;
        if (j < n && (sql[j] == '+' || sql[j] == '-')) ++j;
        if (j < n && digit(sql[j])) {
          i = j;
          while (i < n && digit(sql[i])) ++i;
        }
      }
      if (i < n && ident_char(sql[i])) {  // 1abc is not a plain number: keep it all
        add('#');
        continue;
      }
      add('\x01');
      continue;
    }
    if (c == '"' || (c == '-' && i + 1 < n && sql[i + 1] == '-')) {  // copied as written
      const char end = c == '"' ? '"' : '\n';
      add(c);
      for (++i; i < n && sql[i] != end; ++i) add(sql[i]);  // "" escapes: two quoted runs
      if (i < n) add(sql[i++]);
      continue;
    }
    if (c == '\'' && !after_ident) {  // 'text' with '' escapes (standard strings)
      std::size_t j = i + 1;
      for (; j < n; ++j) {
        if (sql[j] == '\'') {
          if (j + 1 < n && sql[j + 1] == '\'') {
            ++j;
            continue;
          }
          break;
        }
      }
      if (j >= n) {  // unterminated: hash the rest as written
        if (cut_unterminated) {
          add('\x03');
          break;
        }
        for (; i < n; ++i) add(sql[i]);
        break;
      }
      add('\x02');
      i = j + 1;
      continue;
    }
    add(c);
    ++i;
  }
  return true;
}

bool contains_explain(std::string_view sql) {
  static constexpr std::string_view kWord = "explain";
  for (std::size_t i = 0; i + kWord.size() <= sql.size(); ++i) {
    std::size_t k = 0;
    while (k < kWord.size() && (sql[i + k] | 0x20) == kWord[k]) ++k;
    if (k == kWord.size()) return true;
  }
  return false;
}

}  // namespace

std::uint64_t shape_hash(std::string_view sql) {
  Fnv1a h;
  if (!mask_literals(sql, [&h](char c) { h.add(static_cast<std::uint8_t>(c)); })) return fnv1a(sql);
  return h.value();
}

std::string statement_shape(std::string_view sql) {
  std::string out;
  out.reserve(sql.size());
  if (!mask_literals(sql, [&out](char c) { out += c; })) return std::string(sql);
  return out;
}

std::string masked_text(std::string_view sql) {
  std::string out;
  out.reserve(sql.size());
  auto mask = [&out](char c) {
    if (c == '\x03') {
      out += "?...";
    } else {
      out += c == '\x01' || c == '\x02' || c == '#' ? '?' : c;
    }
  };
  if (!mask_literals(sql, mask, true)) {
    // Lex only the part before the first construct the masker does not handle (or any quote).
    std::size_t cut = 0;
    while (cut < sql.size()) {
      const char c = sql[cut];
      const char next = cut + 1 < sql.size() ? sql[cut + 1] : '\0';
      if (c == '\\' || c == '\'' || (c == '/' && next == '*') ||
          (c == '$' && (next < '0' || next > '9')))
        break;
      ++cut;
    }
    mask_literals(sql.substr(0, cut), mask, true);
    out += "?...";
  }
  // A -- comment may hold anything: cut it (in a "quoted identifier" this masks more, not less).
  for (auto at = out.find("--"); at != std::string::npos; at = out.find("--", at + 3)) {
    auto end = out.find('\n', at);
    out.replace(at, end == std::string::npos ? std::string::npos : end - at, "-- ?");
  }
  return out;
}

std::string read_facts_key(std::string_view sql) {
  // EXPLAIN (ANALYZE 0) and (ANALYZE 1) differ only in a literal, and in where they may run.
  if (contains_explain(sql)) return std::string(sql);
  return statement_shape(sql);
}

}  // namespace sluice::routing
