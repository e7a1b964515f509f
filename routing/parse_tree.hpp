// libpg_query's JSON parse tree, read with Boost.JSON (the protobuf unpacker is not in Debian's
// static library), and small helpers for walking it.
#pragma once

#include <algorithm>
#include <boost/json.hpp>
#include <cctype>
#include <optional>
#include <string>
#include <string_view>

namespace sluice::routing {

// The tree of `sql` (one or many statements), or nullopt when the parser refuses it.
std::optional<boost::json::value> parse_tree(std::string_view sql);

inline std::string_view str_field(const boost::json::object& o, std::string_view key) {
  if (const auto* v = o.if_contains(key); v && v->is_string()) return v->get_string();
  return {};
}

inline std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// The number of arguments a FuncCall node passes (count(*) passes none); -1 for VARIADIC calls.
inline int argument_count(const boost::json::object& call) {
  if (const auto* v = call.if_contains("func_variadic"); v && v->is_bool() && v->get_bool())
    return -1;
  const auto* args = call.if_contains("args");
  if (args == nullptr || !args->is_array()) return 0;
  return static_cast<int>(args->get_array().size());
}

}  // namespace sluice::routing
