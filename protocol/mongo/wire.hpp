// MongoDB wire protocol, sans-I/O: frames (the 16-byte little-endian header), OP_MSG with its
// sections and CRC-32C checksum, OP_COMPRESSED (noop only: sluice does not advertise
// compression), the legacy OP_QUERY handshake and OP_REPLY. Every length is checked against the
// bytes present and against maxMessageSizeBytes before anything is allocated; BSON documents are
// validated with libbson over the caller's bytes (no copy).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "protocol/common/bytes.hpp"

namespace sluice::mongo {

using bytes::Span;
using Buffer = std::vector<std::uint8_t>;

inline constexpr std::uint32_t kMaxMessageSize = 48'000'000;           // maxMessageSizeBytes
inline constexpr std::uint32_t kMaxBsonObjectSize = 16 * 1024 * 1024;  // maxBsonObjectSize
inline constexpr std::size_t kHeaderSize = 16;

enum OpCode : std::int32_t {
  kOpReply = 1,
  kOpQuery = 2004,
  kOpCompressed = 2012,
  kOpMsg = 2013,
};

// OP_MSG flag bits. Bits 0-15 are "required": a receiver must reject a message with one it does
// not know; bits 16-31 are optional and ignored when unknown.
namespace msg_flag {
inline constexpr std::uint32_t kChecksumPresent = 1u << 0;
inline constexpr std::uint32_t kMoreToCome = 1u << 1;
inline constexpr std::uint32_t kExhaustAllowed = 1u << 16;
inline constexpr std::uint32_t kKnownRequired = kChecksumPresent | kMoreToCome;
}  // namespace msg_flag

enum class WireError {
  kLengthTooSmall,     // messageLength below the header, or below what the opcode needs
  kLengthTooLarge,     // messageLength above maxMessageSizeBytes
  kUnsupportedOpCode,  // not OP_MSG / OP_QUERY / OP_COMPRESSED (or OP_REPLY where expected)
  kTruncated,          // a field runs past the end of the message
  kUnknownRequiredFlag,
  kChecksumMismatch,
  kNoBody,     // OP_MSG without its kind-0 section
  kTwoBodies,  // more than one kind-0 section
  kUnknownSectionKind,
  kBadDocument,    // a BSON document that libbson rejects, or with a bad length
  kTrailingBytes,  // bytes after the last field that the format does not allow
  kUnsupportedCompressor,
};
std::string_view describe(WireError e);

// A decoding failure: what, and a sentence for the client's errmsg.
struct Failure {
  WireError error;
  std::string detail;
};

struct Header {
  std::int32_t length = 0;  // as declared: the whole message, header included
  std::int32_t request_id = 0;
  std::int32_t response_to = 0;
  std::int32_t op_code = 0;
};

struct NeedMore {
  std::size_t bytes;  // at least this many more bytes are needed
};
struct Frame {
  Header header;
  Span message;  // the whole message, header included (what the checksum covers)
  Span body;     // after the header
};
using FrameResult = std::variant<NeedMore, Frame, Failure>;

// The next message at the front of buf. The declared length is checked (>= 16, <= max_size)
// from the first 4 bytes alone, so a 2 GB claim fails before anything is buffered.
FrameResult next_frame(Span buf, std::uint32_t max_size = kMaxMessageSize);

// --- OP_MSG --------------------------------------------------------------------------------------

struct DocumentSequence {
  std::string_view identifier;  // e.g. "documents" for insert, "updates", "deletes"
  std::vector<Span> documents;
};
struct Msg {
  std::uint32_t flags = 0;
  Span body;  // the kind-0 document
  std::vector<DocumentSequence> sequences;
  std::optional<std::uint32_t> checksum;
  bool more_to_come() const { return (flags & msg_flag::kMoreToCome) != 0; }
  bool exhaust_allowed() const { return (flags & msg_flag::kExhaustAllowed) != 0; }
};
// Decodes and checks an OP_MSG frame: flags, exactly one body, every document valid BSON within
// kMaxBsonObjectSize (plus 16 KiB of headroom for commands, as servers allow), the checksum.
std::variant<Msg, Failure> decode_msg(const Frame& frame);

// OP_MSG with one body (and optional document sequences); the checksum when asked.
void encode_msg(Buffer& out, std::int32_t request_id, std::int32_t response_to, std::uint32_t flags,
                Span body, std::span<const DocumentSequence> sequences = {});

// Rewrites requestID and responseTo of a whole message in place (forwarding a client's bytes to a
// server), clears the OP_MSG flag bits in `clear_flags` (e.g. exhaustAllowed; never
// checksumPresent), and recomputes the CRC-32C of an OP_MSG that carries one.
void rewrite_ids(std::span<std::uint8_t> message, std::int32_t request_id, std::int32_t response_to,
                 std::uint32_t clear_flags = 0);

// --- OP_COMPRESSED -------------------------------------------------------------------------------

inline constexpr std::uint8_t kCompressorNoop = 0;
// The inner message of an OP_COMPRESSED frame with the noop compressor, as a frame whose header
// is the outer one with the original opcode (body = the uncompressed bytes, not a copy). Other
// compressors fail with kUnsupportedCompressor: sluice never advertises them in hello.
std::variant<Frame, Failure> decompress(const Frame& frame);

// --- Legacy handshake: OP_QUERY in, OP_REPLY out -------------------------------------------------

struct Query {
  std::int32_t flags = 0;
  std::string_view collection;  // "admin.$cmd" for a command
  std::int32_t skip = 0;
  std::int32_t limit = 0;
  Span query;
  std::optional<Span> fields;
};
std::variant<Query, Failure> decode_query(const Frame& frame);

struct Reply {
  std::int32_t flags = 0;
  std::int64_t cursor_id = 0;
  std::int32_t starting_from = 0;
  std::vector<Span> documents;
};
std::variant<Reply, Failure> decode_reply(const Frame& frame);
void encode_reply(Buffer& out, std::int32_t request_id, std::int32_t response_to, Span document);

// --- BSON helpers --------------------------------------------------------------------------------

// A whole BSON document at the front of data: its declared length (>= 5, <= data.size(), <=
// max), a trailing NUL, and libbson's structural validation of every element. Returns the
// document's bytes, or nullopt with the reason in *why.
std::optional<Span> valid_document(Span data, std::uint32_t max, std::string* why);

// The command's name: the first key of the body document (e.g. "find", "hello").
std::string_view command_name(Span body);

// A reply body {ok: 0.0, errmsg, code, codeName}, as servers send them.
Buffer error_document(std::int32_t code, std::string_view code_name, std::string_view errmsg);

// CRC-32C (Castagnoli), the OP_MSG checksum.
std::uint32_t crc32c(Span data, std::uint32_t crc = 0);

}  // namespace sluice::mongo
