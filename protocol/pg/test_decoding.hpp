// The text the contrib plugin test_decoding writes for each change of a logical replication
// stream (the WAL follower's plugin when no publication is set up: it needs none, and no replica
// identity): which transaction boundary or which relations a line names. Sans-I/O, untrusted
// input: nullopt for anything that is not one whole line of that shape.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace sluice::pg::test_decoding {

struct Begin {};   // "BEGIN" or "BEGIN <xid>"
struct Commit {};  // "COMMIT", "COMMIT <xid>", "... (at <timestamp>)"
struct QualifiedName {
  std::string schema;  // unquoted
  std::string name;
};
// "table <schema>.<name>: INSERT|UPDATE|DELETE: <columns>", or for TRUNCATE every relation:
// "table <a>, <b>: TRUNCATE: <flags>".
struct Change {
  char kind = 'I';  // 'I', 'U', 'D', 'T'
  std::vector<QualifiedName> relations;
};
struct Other {};  // "message: ..." (pg_logical_emit_message)
using Message = std::variant<Begin, Commit, Change, Other>;

inline constexpr std::size_t kMaxRelations = 4096;  // one TRUNCATE's list

std::optional<Message> decode(std::string_view line, std::string* why = nullptr);

}  // namespace sluice::pg::test_decoding
