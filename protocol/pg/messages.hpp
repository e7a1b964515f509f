// Decoders and encoders for the PostgreSQL v3 messages sluice inspects or originates.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "protocol/pg/framer.hpp"

namespace sluice::pg {

using Buffer = std::vector<std::uint8_t>;

// ---- startup packets (frontend, untyped) -------------------------------------------------

struct SslRequest {};
struct GssEncRequest {};
struct CancelRequest {
  std::uint32_t pid;
  std::uint32_t secret;
};
struct StartupMessage {
  std::uint32_t version;
  std::vector<std::pair<std::string_view, std::string_view>> params;  // views into the frame
  std::string_view get(std::string_view key) const;
};
struct DecodeError {
  std::string_view sqlstate;  // 08P01 protocol violation or 0A000 unsupported
  std::string message;
};
using StartupPacket = std::variant<SslRequest, GssEncRequest, CancelRequest, StartupMessage>;
std::variant<StartupPacket, DecodeError> decode_startup(Span body);

// ---- frontend messages -------------------------------------------------------------------

// 'p' during SASL: SASLInitialResponse
struct SaslInitialResponse {
  std::string_view mechanism;
  std::optional<Span> data;  // absent when the length is -1
};
std::optional<SaslInitialResponse> decode_sasl_initial_response(Span body);
// 'p' with a password (cleartext or md5): a single NUL-terminated string
std::optional<std::string_view> decode_password_message(Span body);
// 'Q'
std::optional<std::string_view> decode_query(Span body);

// ---- backend messages --------------------------------------------------------------------

namespace auth {
inline constexpr std::uint32_t kOk = 0;
inline constexpr std::uint32_t kCleartext = 3;
inline constexpr std::uint32_t kMd5 = 5;
inline constexpr std::uint32_t kSasl = 10;
inline constexpr std::uint32_t kSaslContinue = 11;
inline constexpr std::uint32_t kSaslFinal = 12;
}  // namespace auth

struct Authentication {
  std::uint32_t code;
  Span data;  // md5 salt, SASL mechanism list or SASL payload
};
std::optional<Authentication> decode_authentication(Span body);
// Mechanism names in an AuthenticationSASL payload.
std::optional<std::vector<std::string_view>> decode_sasl_mechanisms(Span data);

struct ParameterStatus {
  std::string_view name;
  std::string_view value;
};
std::optional<ParameterStatus> decode_parameter_status(Span body);

struct BackendKeyData {
  std::uint32_t pid;
  std::uint32_t secret;
};
std::optional<BackendKeyData> decode_backend_key_data(Span body);

// 'D': column values (nullopt = SQL NULL), as views into the body.
using DataRow = std::vector<std::optional<std::string_view>>;
std::optional<DataRow> decode_data_row(Span body);

// 'Z': the transaction status byte 'I', 'T' or 'E'.
std::optional<char> decode_ready_for_query(Span body);

// 'E' / 'N': field code → value.
struct ErrorFields {
  std::vector<std::pair<char, std::string_view>> fields;
  std::string_view get(char code) const;
};
std::optional<ErrorFields> decode_error_fields(Span body);

// ---- encoders (append one whole message to `out`) ----------------------------------------

struct ErrorSpec {
  std::string_view severity = "ERROR";  // ERROR, FATAL, NOTICE...
  std::string_view sqlstate;
  std::string_view message;
  std::string_view detail = {};
  std::string_view hint = {};
};
void encode_error_response(Buffer& out, const ErrorSpec& e);
void encode_notice_response(Buffer& out, const ErrorSpec& e);
void encode_authentication(Buffer& out, std::uint32_t code, Span data = {});
void encode_auth_sasl(Buffer& out, const std::vector<std::string_view>& mechanisms);
void encode_parameter_status(Buffer& out, std::string_view name, std::string_view value);
void encode_backend_key_data(Buffer& out, BackendKeyData key);
void encode_ready_for_query(Buffer& out, char status);
// RowDescription 'T' for text-format columns (name, type OID; typlen -1 unless known).
struct Column {
  std::string_view name;
  std::uint32_t type_oid = 25;  // text
  std::int16_t type_len = -1;
};
void encode_row_description(Buffer& out, const std::vector<Column>& columns);
void encode_data_row(Buffer& out, const std::vector<std::optional<std::string_view>>& values);
void encode_command_complete(Buffer& out, std::string_view tag);
void encode_negotiate_protocol_version(Buffer& out, std::uint32_t newest_minor,
                                       const std::vector<std::string_view>& unrecognized);

void encode_startup_message(Buffer& out,
                            const std::vector<std::pair<std::string, std::string>>& params);
void encode_ssl_request(Buffer& out);
void encode_cancel_request(Buffer& out, BackendKeyData key);
void encode_password_message(Buffer& out, std::string_view password);
void encode_sasl_initial_response(Buffer& out, std::string_view mechanism, Span data);
void encode_sasl_response(Buffer& out, Span data);
void encode_query(Buffer& out, std::string_view sql);
void encode_terminate(Buffer& out);
// Any message without a body (Terminate, Sync, Flush, ParseComplete, ...).
void encode_empty_message(Buffer& out, char type);

}  // namespace sluice::pg
