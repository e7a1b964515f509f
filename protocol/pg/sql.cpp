// Literal quoting and startup `options` parsing, as libpq and the postmaster define them.
#include "protocol/pg/sql.hpp"

#include <cctype>

namespace sluice::pg::sql {

std::string quote_literal(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 3);
  if (s.find('\\') != std::string_view::npos) out.push_back('E');
  out.push_back('\'');
  for (char c : s) {
    if (c == '\'' || c == '\\') out.push_back(c);
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

std::string quote_ident(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (char c : s) {
    if (c == '"') out.push_back(c);
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

std::string raise_error(std::string_view sqlstate, std::string_view message,
                        std::string_view hint) {
  // The body is dollar-quoted: its own tag must not occur inside.
  auto clean = [](std::string_view s) {
    std::string out(s);
    for (std::size_t at; (at = out.find("$sluice$")) != std::string::npos;) out[at] = '?';
    return out;
  };
  std::string code;
  for (char c : sqlstate.substr(0, 5))
    code.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '0');
  return "DO $sluice$BEGIN RAISE EXCEPTION USING ERRCODE = '" + code +
         "', MESSAGE = " + quote_literal(clean(message)) +
         ", HINT = " + quote_literal(clean(hint)) + "; END$sluice$";
}

bool is_setting_name(std::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}

namespace {
// Splits on unescaped whitespace; "\ " keeps a space, "\\" a backslash (pg_split_opts).
std::vector<std::string> split_words(std::string_view s) {
  std::vector<std::string> words;
  std::string cur;
  bool in_word = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      if (in_word) words.push_back(std::move(cur)), cur.clear();
      in_word = false;
      continue;
    }
    in_word = true;
    if (c == '\\' && i + 1 < s.size()) c = s[++i];
    cur.push_back(c);
  }
  if (in_word) words.push_back(std::move(cur));
  return words;
}

std::optional<std::pair<std::string, std::string>> setting(std::string_view word) {
  auto eq = word.find('=');
  if (eq == std::string_view::npos) return std::nullopt;
  std::string name(word.substr(0, eq));
  for (auto& c : name) {
    if (c == '-') c = '_';  // postgres accepts -c statement-timeout=... too
  }
  if (!is_setting_name(name)) return std::nullopt;
  return std::pair{name, std::string(word.substr(eq + 1))};
}
}  // namespace

std::optional<std::vector<std::pair<std::string, std::string>>> parse_options(
    std::string_view opts) {
  std::vector<std::pair<std::string, std::string>> out;
  auto words = split_words(opts);
  for (std::size_t i = 0; i < words.size(); ++i) {
    std::string_view w = words[i];
    std::optional<std::pair<std::string, std::string>> s;
    if (w == "-c" && i + 1 < words.size()) {
      s = setting(words[++i]);
    } else if (w.starts_with("-c")) {
      s = setting(w.substr(2));
    } else if (w.starts_with("--")) {
      s = setting(w.substr(2));
    }
    if (!s) return std::nullopt;
    out.push_back(std::move(*s));
  }
  return out;
}

}  // namespace sluice::pg::sql
