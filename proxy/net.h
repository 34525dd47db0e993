#pragma once

// Socket types of the data path.
//
// Asio's tcp::socket carries a type-erased any_io_executor, which every completion handler
// copies and moves. Sockets bound to io_context's own executor type skip that work; on the
// HTTP/1.1 keep-alive benchmark the erased executor cost about 3% of deferd's instructions.

#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/basic_stream_socket.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

namespace deferd {

using Socket =
    boost::asio::basic_stream_socket<boost::asio::ip::tcp, boost::asio::io_context::executor_type>;
using Acceptor = boost::asio::basic_socket_acceptor<boost::asio::ip::tcp,
                                                    boost::asio::io_context::executor_type>;

} // namespace deferd
