// Package crashtest holds the crash-under-load test of the tally binary. It has no code of its
// own outside tests: the test builds cmd/tally, runs `tally serve` as a child process, drives it
// over HTTP from many concurrent clients, kills it with SIGKILL at random moments, restarts it
// on the same data directory and finally proves from the events that nothing acknowledged was
// lost, nothing was counted twice and no upload was applied in part. It lives apart from
// cmd/tally so that the CLI's unit tests stay quick and this one can be run on its own.
package crashtest
