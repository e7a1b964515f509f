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

}  // namespace sluice::routing
