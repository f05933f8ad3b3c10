package server

import "time"

// SetStreamGraces shortens the graces of an event stream's blocked
// write: after an overflow, and at shutdown.
func SetStreamGraces(s *Server, overflow, shutdown time.Duration) {
	s.overflowGrace, s.shutdownGrace = overflow, shutdown
}

// SetTimeouts shortens the HTTP server's read and write timeouts.
func SetTimeouts(s *Server, read, write time.Duration) {
	s.timeouts.read, s.timeouts.write = read, write
}
