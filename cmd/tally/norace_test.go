//go:build !race

package main

// raceEnabled says the test runs under the race detector; binaries built by tests use it too.
const raceEnabled = false
