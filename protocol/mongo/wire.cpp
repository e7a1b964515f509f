#include "protocol/mongo/wire.hpp"

#include <bson/bson.h>

#include <array>
#include <cstring>

namespace sluice::mongo {

namespace {

// Commands may exceed maxBsonObjectSize a little (servers allow 16 KiB for the command's own
// fields around a maximal document).
constexpr std::uint32_t kMaxCommandSize = kMaxBsonObjectSize + 16 * 1024;
// maxWriteBatchSize: the most documents one sequence may carry.
constexpr std::size_t kMaxSequenceDocuments = 100'000;

std::uint32_t load_le32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} | (std::uint32_t{p[1]} << 8) | (std::uint32_t{p[2]} << 16) |
         (std::uint32_t{p[3]} << 24);
}
void store_le32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void put_le32(Buffer& out, std::uint32_t v) {
  std::uint8_t b[4];
  store_le32(b, v);
  out.insert(out.end(), b, b + 4);
}

Failure fail(WireError e, std::string detail) {
  return {e, std::move(detail)};
}

// Reads one document at the reader's position into *out.
std::optional<Failure> read_document(bytes::Reader& r, Span all, std::uint32_t max, Span* out,
                                     const char* what) {
  std::string why;
  auto doc = valid_document(all.subspan(r.pos()), max, &why);
  if (!doc) return fail(WireError::kBadDocument, std::string(what) + ": " + why);
  r.take(doc->size());
  *out = *doc;
  return std::nullopt;
}

std::array<std::uint32_t, 256> make_crc_table() {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

void put_header(Buffer& out, std::int32_t request_id, std::int32_t response_to, OpCode op) {
  put_le32(out, 0);  // length, filled in by finish()
  put_le32(out, static_cast<std::uint32_t>(request_id));
  put_le32(out, static_cast<std::uint32_t>(response_to));
  put_le32(out, static_cast<std::uint32_t>(op));
}
void finish(Buffer& out, std::size_t start) {
  store_le32(out.data() + start, static_cast<std::uint32_t>(out.size() - start));
}

std::array<std::uint8_t, kHeaderSize> header_bytes(const Header& h) {
  std::array<std::uint8_t, kHeaderSize> b{};
  store_le32(b.data(), static_cast<std::uint32_t>(h.length));
  store_le32(b.data() + 4, static_cast<std::uint32_t>(h.request_id));
  store_le32(b.data() + 8, static_cast<std::uint32_t>(h.response_to));
  store_le32(b.data() + 12, static_cast<std::uint32_t>(h.op_code));
  return b;
}

}  // namespace

std::string_view describe(WireError e) {
  switch (e) {
    case WireError::kLengthTooSmall:
      return "message length too small";
    case WireError::kLengthTooLarge:
      return "message length above maxMessageSizeBytes";
    case WireError::kUnsupportedOpCode:
      return "unsupported opcode";
    case WireError::kTruncated:
      return "truncated message";
    case WireError::kUnknownRequiredFlag:
      return "unknown required OP_MSG flag bit";
    case WireError::kChecksumMismatch:
      return "OP_MSG checksum mismatch";
    case WireError::kNoBody:
      return "OP_MSG without a body section";
    case WireError::kTwoBodies:
      return "OP_MSG with more than one body section";
    case WireError::kUnknownSectionKind:
      return "unknown OP_MSG section kind";
    case WireError::kBadDocument:
      return "invalid BSON document";
    case WireError::kTrailingBytes:
      return "bytes after the end of the message's fields";
    case WireError::kUnsupportedCompressor:
      return "unsupported compressor";
  }
  return "unknown error";
}

std::uint32_t crc32c(Span data, std::uint32_t crc) {
  static const auto table = make_crc_table();
  std::uint32_t c = ~crc;
  for (auto b : data) c = table[(c ^ b) & 0xffu] ^ (c >> 8);
  return ~c;
}

FrameResult next_frame(Span buf, std::uint32_t max_size) {
  if (buf.size() < 4) return NeedMore{4 - buf.size()};
  // Read unsigned: a "negative" int32 is a claim of 2 GB or more, i.e. too large.
  const auto declared = load_le32(buf.data());
  if (declared > max_size)
    return fail(WireError::kLengthTooLarge, "messageLength " + std::to_string(declared) +
                                                " exceeds maxMessageSizeBytes " +
                                                std::to_string(max_size));
  if (declared < kHeaderSize)
    return fail(WireError::kLengthTooSmall,
                "messageLength " + std::to_string(declared) + " is below the 16-byte header");
  const auto length = static_cast<std::size_t>(declared);
  if (buf.size() < length) return NeedMore{length - buf.size()};
  Frame f;
  f.header.length = static_cast<std::int32_t>(declared);
  f.header.request_id = static_cast<std::int32_t>(load_le32(buf.data() + 4));
  f.header.response_to = static_cast<std::int32_t>(load_le32(buf.data() + 8));
  f.header.op_code = static_cast<std::int32_t>(load_le32(buf.data() + 12));
  f.message = buf.first(length);
  f.body = f.message.subspan(kHeaderSize);
  return f;
}

std::optional<Span> valid_document(Span data, std::uint32_t max, std::string* why) {
  auto say = [&](std::string s) {
    if (why) *why = std::move(s);
    return std::nullopt;
  };
  if (data.size() < 5) return say("a document needs at least 5 bytes");
  const auto len = static_cast<std::int32_t>(load_le32(data.data()));
  if (len < 5) return say("document length " + std::to_string(len) + " is below 5");
  if (static_cast<std::uint32_t>(len) > max)
    return say("document length " + std::to_string(len) + " exceeds " + std::to_string(max));
  if (static_cast<std::size_t>(len) > data.size())
    return say("document length " + std::to_string(len) + " runs past the message");
  Span doc = data.first(static_cast<std::size_t>(len));
  if (doc.back() != 0) return say("document does not end with a NUL byte");
  bson_t b;
  if (!bson_init_static(&b, doc.data(), doc.size())) return say("libbson rejects the document");
  bson_error_t err;
  if (!bson_validate_with_error(&b, BSON_VALIDATE_NONE, &err))
    return say(std::string("malformed BSON: ") + err.message);
  return doc;
}

std::variant<Msg, Failure> decode_msg(const Frame& frame) {
  Span body = frame.body;
  bytes::Reader r(body);
  Msg m;
  m.flags = r.u32le();
  if (!r.ok()) return fail(WireError::kTruncated, "OP_MSG shorter than its flagBits");
  if (const auto unknown = m.flags & 0xffffu & ~msg_flag::kKnownRequired; unknown != 0)
    return fail(
        WireError::kUnknownRequiredFlag, "OP_MSG flagBits has unknown required bits 0x" + [&] {
          char hex[9];
          std::snprintf(hex, sizeof hex, "%x", unknown);
          return std::string(hex);
        }());
  std::size_t end = body.size();
  if (m.flags & msg_flag::kChecksumPresent) {
    if (body.size() < 4 + 4) return fail(WireError::kTruncated, "OP_MSG checksum missing");
    end = body.size() - 4;
    m.checksum = load_le32(body.data() + end);
    const auto head = header_bytes(frame.header);
    const auto computed = crc32c(body.first(end), crc32c(head));
    if (computed != *m.checksum)
      return fail(WireError::kChecksumMismatch, "OP_MSG checksum mismatch");
  }
  Span sections = body.subspan(0, end);
  bytes::Reader s(sections);
  s.take(4);
  bool have_body = false;
  while (s.ok() && s.remaining() > 0) {
    const auto kind = s.u8();
    if (kind == 0) {
      if (have_body) return fail(WireError::kTwoBodies, "OP_MSG has more than one body section");
      if (auto f = read_document(s, sections, kMaxCommandSize, &m.body, "OP_MSG body")) return *f;
      have_body = true;
    } else if (kind == 1) {
      const auto start = s.pos();
      const auto size = s.i32le();
      if (!s.ok() || size < 5 || static_cast<std::size_t>(size) > sections.size() - start)
        return fail(WireError::kTruncated,
                    "OP_MSG document sequence size " + std::to_string(size) + " does not fit");
      const std::size_t seq_end = start + static_cast<std::size_t>(size);
      bytes::Reader seq(sections.first(seq_end));
      seq.take(start + 4);
      DocumentSequence ds;
      ds.identifier = seq.cstr();
      if (!seq.ok())
        return fail(WireError::kTruncated, "OP_MSG document sequence identifier is unterminated");
      while (seq.ok() && seq.remaining() > 0) {
        if (ds.documents.size() == kMaxSequenceDocuments)
          return fail(WireError::kBadDocument,
                      "more than maxWriteBatchSize (100000) documents "
                      "in one sequence");
        Span doc;
        if (auto f = read_document(seq, sections.first(seq_end), kMaxBsonObjectSize, &doc,
                                   "OP_MSG document sequence"))
          return *f;
        ds.documents.push_back(doc);
      }
      m.sequences.push_back(std::move(ds));
      s.take(static_cast<std::size_t>(size) - 4);  // the size word is read already
    } else {
      return fail(WireError::kUnknownSectionKind,
                  "OP_MSG section kind " + std::to_string(kind) + " is unknown");
    }
  }
  if (!s.ok()) return fail(WireError::kTruncated, "OP_MSG section runs past the message");
  if (!have_body) return fail(WireError::kNoBody, "OP_MSG has no body section (kind 0)");
  return m;
}

void encode_msg(Buffer& out, std::int32_t request_id, std::int32_t response_to, std::uint32_t flags,
                Span body, std::span<const DocumentSequence> sequences) {
  const auto start = out.size();
  put_header(out, request_id, response_to, kOpMsg);
  put_le32(out, flags);
  out.push_back(0);
  out.insert(out.end(), body.begin(), body.end());
  for (const auto& seq : sequences) {
    out.push_back(1);
    const auto size_at = out.size();
    put_le32(out, 0);
    out.insert(out.end(), seq.identifier.begin(), seq.identifier.end());
    out.push_back(0);
    for (auto d : seq.documents) out.insert(out.end(), d.begin(), d.end());
    store_le32(out.data() + size_at, static_cast<std::uint32_t>(out.size() - size_at));
  }
  if (flags & msg_flag::kChecksumPresent) {
    put_le32(out, 0);
    finish(out, start);
    const auto crc = crc32c(Span(out).subspan(start, out.size() - start - 4));
    store_le32(out.data() + out.size() - 4, crc);
    return;
  }
  finish(out, start);
}

void rewrite_ids(std::span<std::uint8_t> message, std::int32_t request_id, std::int32_t response_to,
                 std::uint32_t clear_flags) {
  if (message.size() < kHeaderSize) return;
  store_le32(message.data() + 4, static_cast<std::uint32_t>(request_id));
  store_le32(message.data() + 8, static_cast<std::uint32_t>(response_to));
  const auto op = static_cast<std::int32_t>(load_le32(message.data() + 12));
  clear_flags &= ~msg_flag::kChecksumPresent;  // the checksum's presence is the layout
  if (op == kOpMsg && clear_flags != 0 && message.size() >= kHeaderSize + 4) {
    auto* flags = message.data() + kHeaderSize;
    store_le32(flags, load_le32(flags) & ~clear_flags);
  }
  if (op == kOpMsg && message.size() >= kHeaderSize + 8 &&
      (load_le32(message.data() + kHeaderSize) & msg_flag::kChecksumPresent)) {
    const auto n = message.size() - 4;
    store_le32(message.data() + n, crc32c(Span(message.data(), n)));
  }
}

std::variant<Frame, Failure> decompress(const Frame& frame) {
  bytes::Reader r(frame.body);
  const auto original = r.i32le();
  const auto size = r.i32le();
  const auto compressor = r.u8();
  if (!r.ok()) return fail(WireError::kTruncated, "OP_COMPRESSED shorter than its fields");
  if (compressor != kCompressorNoop)
    return fail(WireError::kUnsupportedCompressor,
                "compressor " + std::to_string(compressor) +
                    " was not negotiated: sluice accepts uncompressed messages only");
  if (original == kOpCompressed)
    return fail(WireError::kUnsupportedOpCode, "OP_COMPRESSED inside OP_COMPRESSED");
  Span data = r.rest();
  if (size < 0 || static_cast<std::size_t>(size) != data.size())
    return fail(WireError::kTruncated, "OP_COMPRESSED uncompressedSize " + std::to_string(size) +
                                           " differs from the " + std::to_string(data.size()) +
                                           " bytes present");
  Frame inner;
  inner.header = frame.header;
  inner.header.op_code = original;
  inner.header.length = static_cast<std::int32_t>(kHeaderSize + data.size());
  inner.body = data;  // inner.message stays empty: the header bytes are not in the buffer
  return inner;
}

std::variant<Query, Failure> decode_query(const Frame& frame) {
  bytes::Reader r(frame.body);
  Query q;
  q.flags = r.i32le();
  q.collection = r.cstr();
  q.skip = r.i32le();
  q.limit = r.i32le();
  if (!r.ok()) return fail(WireError::kTruncated, "OP_QUERY shorter than its fields");
  if (auto f = read_document(r, frame.body, kMaxCommandSize, &q.query, "OP_QUERY query")) return *f;
  if (r.remaining() > 0) {
    Span fields;
    if (auto f = read_document(r, frame.body, kMaxBsonObjectSize, &fields, "OP_QUERY fields"))
      return *f;
    q.fields = fields;
  }
  if (r.remaining() > 0) return fail(WireError::kTrailingBytes, "bytes after OP_QUERY's fields");
  return q;
}

std::variant<Reply, Failure> decode_reply(const Frame& frame) {
  bytes::Reader r(frame.body);
  Reply rep;
  rep.flags = r.i32le();
  rep.cursor_id = r.i64le();
  rep.starting_from = r.i32le();
  const auto count = r.i32le();
  if (!r.ok()) return fail(WireError::kTruncated, "OP_REPLY shorter than its fields");
  if (count < 0 || static_cast<std::size_t>(count) > r.remaining() / 5)
    return fail(WireError::kTruncated,
                "OP_REPLY numberReturned " + std::to_string(count) + " does not fit the message");
  rep.documents.reserve(static_cast<std::size_t>(count));
  for (std::int32_t i = 0; i < count; ++i) {
    Span doc;
    if (auto f = read_document(r, frame.body, kMaxCommandSize, &doc, "OP_REPLY document"))
      return *f;
    rep.documents.push_back(doc);
  }
  if (r.remaining() > 0) return fail(WireError::kTrailingBytes, "bytes after OP_REPLY's documents");
  return rep;
}

void encode_reply(Buffer& out, std::int32_t request_id, std::int32_t response_to, Span document) {
  const auto start = out.size();
  put_header(out, request_id, response_to, kOpReply);
  put_le32(out, 0);  // responseFlags
  put_le32(out, 0);  // cursorID (int64)
  put_le32(out, 0);
  put_le32(out, 0);  // startingFrom
  put_le32(out, 1);  // numberReturned
  out.insert(out.end(), document.begin(), document.end());
  finish(out, start);
}

std::string_view command_name(Span body) {
  if (body.size() < 6 || body[4] == 0) return {};
  const auto* begin = body.data() + 5;
  const auto* nul = static_cast<const std::uint8_t*>(std::memchr(begin, 0, body.size() - 5));
  if (nul == nullptr) return {};
  return {reinterpret_cast<const char*>(begin), static_cast<std::size_t>(nul - begin)};
}

Buffer error_document(std::int32_t code, std::string_view code_name, std::string_view errmsg) {
  bson_t doc;
  bson_init(&doc);
  bson_append_double(&doc, "ok", 2, 0.0);
  bson_append_utf8(&doc, "errmsg", 6, errmsg.data(), static_cast<int>(errmsg.size()));
  bson_append_int32(&doc, "code", 4, code);
  bson_append_utf8(&doc, "codeName", 8, code_name.data(), static_cast<int>(code_name.size()));
  const auto* data = bson_get_data(&doc);
  Buffer out(data, data + doc.len);
  bson_destroy(&doc);
  return out;
}

}  // namespace sluice::mongo
