// Package hostiletest holds the hostile-client tests of the tally binary: it builds cmd/tally,
// runs `tally serve` as a child process, and attacks it as docs/reliability.md ("Hostile
// clients") describes: connections that announce a body and send it a byte a second, and many
// 64 MiB bodies with a wrong token, measuring the server process's memory from /proc. It has
// no code of its own outside tests.
package hostiletest
