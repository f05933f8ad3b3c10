//go:build !linux

package main

import "os"

// isTerminal says whether f may be a terminal: a character device.
// /dev/null is one too, and gets a progress bar it discards.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
