//go:build race

package crashtest

// raceEnabled says the test runs under the race detector; the binary is then built with it too.
const raceEnabled = true
