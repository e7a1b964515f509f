#include "cache/relations.hpp"

#include <algorithm>
#include <cctype>

namespace sluice::cache {

std::vector<std::string> parse_search_path(std::string_view value, std::string_view role) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i <= value.size()) {
    while (i < value.size() && (value[i] == ' ' || value[i] == '\t')) ++i;
    std::string item;
    bool quoted = false;
    if (i < value.size() && value[i] == '"') {
      quoted = true;
      ++i;
      while (i < value.size()) {
        if (value[i] == '"') {
          if (i + 1 < value.size() && value[i + 1] == '"') {
            item.push_back('"');
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        item.push_back(value[i++]);
      }
      while (i < value.size() && value[i] != ',') ++i;
    } else {
      while (i < value.size() && value[i] != ',') item.push_back(value[i++]);
      while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.pop_back();
      for (auto& c : item) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    if (quoted && item == "$user") item = std::string(role);
    if (!quoted && item == "$user") item = std::string(role);
    if (!item.empty()) out.push_back(std::move(item));
    ++i;  // past the comma
  }
  return out;
}

void RelationCatalog::add(Relation r) {
  by_name_[{r.schema, r.name}] = r.oid;
  const auto oid = r.oid;
  by_oid_[oid] = std::move(r);
}

void RelationCatalog::add_dependency(std::uint32_t from, std::uint32_t to) {
  deps_[from].push_back(to);
}

void RelationCatalog::add_foreign_key(std::uint32_t referenced, std::uint32_t referencing) {
  fks_[referenced].push_back(referencing);
}

std::optional<std::string> RelationCatalog::default_search_path(const std::string& role) const {
  if (auto it = overrides_.find(role); it != overrides_.end()) return it->second;
  if (auto it = overrides_.find(""); it != overrides_.end()) return it->second;
  return default_search_path_;
}

const Relation* RelationCatalog::find(std::uint32_t oid) const {
  auto it = by_oid_.find(oid);
  return it == by_oid_.end() ? nullptr : &it->second;
}

const Relation* RelationCatalog::resolve(const RelationName& n,
                                         const std::vector<std::string>& search_path) const {
  auto lookup = [&](const std::string& schema) -> const Relation* {
    auto it = by_name_.find({schema, n.name});
    return it == by_name_.end() ? nullptr : find(it->second);
  };
  if (!n.schema.empty()) return lookup(n.schema);
  // pg_catalog is searched first unless the path names it later.
  if (std::find(search_path.begin(), search_path.end(), "pg_catalog") == search_path.end()) {
    if (const auto* r = lookup("pg_catalog")) return r;
  }
  for (const auto& schema : search_path) {
    if (const auto* r = lookup(schema)) return r;
  }
  return nullptr;
}

bool RelationCatalog::expand(std::uint32_t oid, std::vector<std::uint32_t>& out) const {
  std::vector<std::uint32_t> stack{oid};
  bool known = true;
  while (!stack.empty()) {
    const auto o = stack.back();
    stack.pop_back();
    if (std::find(out.begin(), out.end(), o) != out.end()) continue;
    if (out.size() > 10'000) return false;
    out.push_back(o);
    const auto* r = find(o);
    if (r && !r->deterministic) known = false;
    if (auto it = deps_.find(o); it != deps_.end()) {
      for (auto d : it->second) stack.push_back(d);
    }
  }
  // Unknown OIDs reached through a view are other objects (sequences, composite types): keep
  // only relations.
  std::erase_if(out, [&](std::uint32_t o) { return !find(o); });
  return known && find(oid) != nullptr;
}

void RelationCatalog::cascades(std::uint32_t oid, std::vector<std::uint32_t>& out) const {
  std::vector<std::uint32_t> stack{oid};
  std::vector<std::uint32_t> seen;
  while (!stack.empty()) {
    const auto o = stack.back();
    stack.pop_back();
    if (std::find(seen.begin(), seen.end(), o) != seen.end()) continue;
    seen.push_back(o);
    if (seen.size() > 10'000) break;
    if (auto it = fks_.find(o); it != fks_.end()) {
      for (auto r : it->second) {
        if (std::find(out.begin(), out.end(), r) == out.end()) out.push_back(r);
        stack.push_back(r);
      }
    }
  }
}

}  // namespace sluice::cache
