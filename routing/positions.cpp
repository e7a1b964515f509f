// WAL positions for read consistency: the monitor's readings of the primary and local commits.
#include "routing/positions.hpp"

#include <algorithm>

namespace sluice::routing {

void WalPositions::primary_read(const std::string& db, Clock::time_point started, Lsn lsn) {
  std::lock_guard lock(mu_);
  auto& d = dbs_[db];
  if (started < d.read_started) return;  // an older reading finished late
  d.read_started = started;
  d.primary = std::max(d.primary.value_or(0), lsn);
}

std::optional<Lsn> WalPositions::primary_since(const std::string& db,
                                               Clock::time_point since) const {
  std::lock_guard lock(mu_);
  auto it = dbs_.find(db);
  if (it == dbs_.end() || !it->second.primary || it->second.read_started < since)
    return std::nullopt;
  return it->second.primary;
}

bool WalPositions::readable(const std::string& db) const {
  std::lock_guard lock(mu_);
  auto it = dbs_.find(db);
  return it != dbs_.end() && it->second.primary.has_value();
}

Lsn WalPositions::primary_last(const std::string& db) const {
  std::lock_guard lock(mu_);
  auto it = dbs_.find(db);
  return it == dbs_.end() ? 0 : it->second.primary.value_or(0);
}

void WalPositions::committed(const std::string& db, Lsn lsn, const std::vector<std::uint32_t>& oids,
                             bool unknown) {
  std::lock_guard lock(mu_);
  auto& d = dbs_[db];
  d.latest = std::max(d.latest, lsn);
  if (unknown) {
    d.unknown = std::max(d.unknown, lsn);
    return;
  }
  if (d.marks.size() + oids.size() > kMaxMarks) {
    // Bounded: the marks fold into the unknown-relations one (reads may wait for more than
    // they must, never for less).
    for (const auto& [oid, mark] : d.marks) d.unknown = std::max(d.unknown, mark);
    d.marks.clear();
    d.unknown = std::max(d.unknown, lsn);
    return;
  }
  for (auto oid : oids) {
    auto& mark = d.marks[oid];
    mark = std::max(mark, lsn);
  }
}

Lsn WalPositions::mark(const std::string& db,
                       const std::optional<std::vector<std::uint32_t>>& oids) const {
  std::lock_guard lock(mu_);
  auto it = dbs_.find(db);
  if (it == dbs_.end()) return 0;
  const auto& d = it->second;
  if (!oids) return d.latest;
  Lsn lsn = d.unknown;
  for (auto oid : *oids) {
    if (auto m = d.marks.find(oid); m != d.marks.end()) lsn = std::max(lsn, m->second);
  }
  return lsn;
}

}  // namespace sluice::routing
