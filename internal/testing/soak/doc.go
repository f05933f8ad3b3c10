// Package soak loads one qsnapd with many domains, snapshots, readers
// and event streams at once (make soak; the test needs -tags soak).
package soak
