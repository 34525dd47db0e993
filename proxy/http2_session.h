#pragma once

// Downstream HTTP/2 cleartext (h2c with prior knowledge) on the listeners that serve HTTP/1.1.
//
// One nghttp2 server session per connection, driven from the worker's io_context: bytes read
// from the socket go to nghttp2_session_mem_recv(), and whatever nghttp2_session_mem_send()
// produces is written with one async_write at a time. nghttp2 calls back into the session only
// from inside those two functions, so nothing here needs a lock and no callback writes to the
// socket itself.
//
// Each request stream runs the route's filter chain and is then relayed to an HTTP/1.1
// upstream connection taken from the worker's pool (http_translation.h has the header rules).
//
// Flow control, end to end:
//   - request body: automatic WINDOW_UPDATE is off. Received DATA is acknowledged with
//     nghttp2_session_consume() only once it has been written to the upstream, so a slow
//     upstream limits the client to its stream window (the listener's http2.initial_window_size)
//     and deferd buffers at most that much per stream.
//   - response body: upstream bytes wait in the stream's send buffer for nghttp2's data
//     provider, which pulls them as the client's window allows. Above 128 KiB the stream
//     stops reading its upstream socket and resumes when the provider drains it, so a slow
//     reader throttles the upstream instead of filling memory.
//
// Protection, from the listener's `http2` settings (config::Http2Limits):
// SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_HEADER_LIST_SIZE from the listener's
// max_header_bytes (and max_header_count),
// a token bucket on the client's RST_STREAM frames (a rapid-reset flood ends in GOAWAY
// ENHANCE_YOUR_CALM, with nghttp2's own reset limit behind it), nghttp2's cap on queued
// control frames (max_outbound_ack) and on CONTINUATION frames per header block
// (max_continuations).

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "proxy/net.h"

namespace deferd {

class Worker;

// The 24-byte connection preface that a client with prior knowledge sends first.
inline constexpr std::string_view kHttp2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Starts serving an accepted connection whose first bytes, `received`, were already read. The
// connection is already counted in the listener's connection metrics, and the session uncounts
// it when it closes.
void startHttp2Session(Worker& worker, Socket socket, size_t listener_index,
                       std::string_view received);

} // namespace deferd
