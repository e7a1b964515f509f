// libpg_query → Boost.JSON.
#include "routing/parse_tree.hpp"

#include <pg_query.h>

namespace sluice::routing {

std::optional<boost::json::value> parse_tree(std::string_view sql) {
  std::string text(sql);  // the parser wants a NUL-terminated string
  PgQueryParseResult r = pg_query_parse(text.c_str());
  struct Release {
    PgQueryParseResult& result;
    ~Release() { pg_query_free_parse_result(result); }
  } release{r};
  if (r.error != nullptr || r.parse_tree == nullptr) return std::nullopt;
  boost::system::error_code ec;
  auto root = boost::json::parse(r.parse_tree, ec);
  if (ec || !root.is_object()) return std::nullopt;
  return root;
}

}  // namespace sluice::routing
