// MongoDB routing decisions, pure: what a command is (read, write, cursor, transaction control,
// answered by sluice), what it writes, whether its result may be cached, whether the listener
// opens it to unauthenticated clients, the client's read preference, and which server a read
// preference selects from a topology snapshot.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/mongo/wire.hpp"

namespace sluice::routing::mongo {

using sluice::mongo::Span;

enum class Route : std::uint8_t {
  kLocal,        // hello, ping, buildInfo, endSessions...: sluice answers
  kRead,         // any server the read preference allows
  kWrite,        // the primary
  kCursor,       // getMore / killCursors: the server that owns the cursor
  kTransaction,  // commitTransaction / abortTransaction: the session's server
};

enum class Mode : std::uint8_t {
  kPrimary,
  kPrimaryPreferred,
  kSecondary,
  kSecondaryPreferred,
  kNearest
};
std::string_view to_string(Mode m);

struct ReadPreference {
  Mode mode = Mode::kPrimary;
  std::vector<std::map<std::string, std::string>> tag_sets;  // empty: any tags
  std::optional<double> max_staleness_seconds;
};

// A collection written: `collection` empty when the whole database may have changed; `db` "*"
// when any database may have (an unknown command on admin).
struct Written {
  std::string db;
  std::string collection;
  bool operator==(const Written&) const = default;
};

// Why the listener refuses a command (13 Unauthorized) while it authenticates no client: the
// kind of command, and the name mongo.allow_commands takes to allow it (the command's, or an
// aggregation stage's); empty when no setting allows it (the servers' internal databases).
struct Refusal {
  std::string what;
  std::string allow_as;
  bool operator==(const Refusal&) const = default;
};

struct Command {
  std::string name;  // the body's first key, as sent
  Route route = Route::kWrite;
  std::string db;          // $db
  std::string collection;  // the collection the command names (a string first value), if any
  ReadPreference pref;
  std::string pref_error;          // non-empty: a malformed $readPreference (code 9 FailedToParse)
  std::vector<Written> writes;     // what a write changes (bumped in the cache)
  bool cacheable = false;          // find / read-only aggregate outside a transaction
  std::vector<std::string> reads;  // collections a cacheable read reads (its own, $lookup...)
  std::string lsid;                // lsid.id bytes, empty without a session
  bool in_transaction = false;     // autocommit: false
  bool starts_transaction = false;
  bool unacknowledged = false;        // writeConcern w: 0
  std::string read_concern;           // readConcern.level ("" when not given): part of a cache key
  std::vector<std::int64_t> cursors;  // getMore's cursor, killCursors' list
  std::optional<Refusal> refusal;     // set: not open to unauthenticated clients
};

// Reads what routing needs from a command body (already validated BSON).
Command analyze(Span body);

// The metric label of a command name: known names as they are, everything else "other".
std::string_view command_label(std::string_view name);

// One server as routing sees it at one moment.
struct ServerView {
  bool primary = false;
  bool up = false;
  double rtt_ms = 0;
  std::optional<double> lag_seconds;  // secondaries; unknown when the server reports no optime
  const std::map<std::string, std::string>* tags = nullptr;
};

struct Selection {
  std::optional<std::size_t> server;  // index into the views
  std::int32_t code = 0;              // when no server: 133 FailedToSatisfyReadPreference, 2
  std::string error;
};

// Server selection (the Server Selection spec's rules for a replica set): mode, tag sets,
// maxStalenessSeconds against measured lag (a secondary of unknown lag is not eligible when a
// bound is given), then the latency window (15 ms above the nearest); `turn` picks among the
// servers left (round robin).
Selection select(const std::vector<ServerView>& servers, const ReadPreference& pref,
                 double max_staleness_floor_seconds, std::uint64_t turn);

// The cache key's document: the command with its top-level keys sorted and the fields that do
// not change the result removed (lsid, $clusterTime, $readPreference, txnNumber, $db...), as
// canonical BSON bytes. Nested documents keep their order (a sort spec's order matters).
std::string canonical_command(Span body);

// The cursor id of a reply ({cursor: {id}}), and whether it is the complete result: ok: 1 and
// cursor id 0.
struct ReplyFacts {
  bool ok = false;
  std::optional<std::int64_t> cursor_id;
  bool transient_txn_error = false;
};
ReplyFacts reply_facts(Span body);

}  // namespace sluice::routing::mongo
