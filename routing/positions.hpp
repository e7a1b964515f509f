// What this instance knows of each database's WAL for read consistency: the primary's position
// as the health monitor last read it (and when that reading started), and the commit LSN of the
// last write acknowledged through this instance. Thread-safe; time is passed in.
#pragma once

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "routing/replicas.hpp"

namespace sluice::routing {

class WalPositions {
 public:
  using Clock = std::chrono::steady_clock;
  // A reading of the primary's WAL insert position by a query that started at `started`.
  void primary_read(const std::string& db, Clock::time_point started, Lsn lsn);
  // The position read by a query that started at or after `since` (so it is at least every
  // commit acknowledged before `since`); nullopt until such a reading arrives.
  std::optional<Lsn> primary_since(const std::string& db, Clock::time_point since) const;
  // Whether the primary's position was ever read (the monitor can log in).
  bool readable(const std::string& db) const;
  // The last position read, however old (0 when never).
  Lsn primary_last(const std::string& db) const;
  // A write through this instance committed at `lsn` (acknowledged once its client is told):
  // the relations it wrote (`oids`; every relation when `unknown`) and the database's latest.
  void committed(const std::string& db, Lsn lsn, const std::vector<std::uint32_t>& oids = {},
                 bool unknown = false);
  // What a read must reach: the largest mark among `oids` and the writes of unknown relations;
  // the database's latest write when the read's relations cannot be told (nullopt).
  Lsn mark(const std::string& db, const std::optional<std::vector<std::uint32_t>>& oids) const;

 private:
  struct Db {
    Clock::time_point read_started{};
    std::optional<Lsn> primary;
    Lsn latest = 0;                                // any write
    Lsn unknown = 0;                               // writes whose relations were not told
    std::unordered_map<std::uint32_t, Lsn> marks;  // by relation written
  };
  static constexpr std::size_t kMaxMarks = 100'000;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Db> dbs_;
};

}  // namespace sluice::routing
