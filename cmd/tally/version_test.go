package main

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// TestVersion: tally version and tally --version print the same four lines, with the Go
// version the binary was built with; the build information of a binary built from a modified Git
// checkout gives its version, commit (marked dirty) and the commit's date.
func TestVersion(t *testing.T) {
	out, err := run(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "tally ") || !strings.Contains(out, "\ngo: "+runtime.Version()+"\n") ||
		!strings.Contains(out, "\ncommit: ") || !strings.Contains(out, "\nbuilt: ") {
		t.Fatalf("tally version:\n%s", out)
	}
	flag, err := run(t, "--version")
	if err != nil || flag != out {
		t.Fatalf("tally --version: %v\n%s\nwant\n%s", err, flag, out)
	}

	info := &debug.BuildInfo{
		GoVersion: "go1.26.8", Path: "github.com/tallyledger/tally/cmd/tally",
		Main: debug.Module{Path: "github.com/tallyledger/tally", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "b07251dfc958c1c2e8038e0939f9d145cabb6103"},
			{Key: "vcs.time", Value: "2026-12-03T05:42:46Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	want := "tally v1.2.3\ncommit: b07251dfc958c1c2e8038e0939f9d145cabb6103-dirty\ngo: go1.26.8\nbuilt: 2026-12-03T05:42:46Z\n"
	if got := buildInfoFrom(info).String(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if got := buildInfoFrom(nil); got.Commit != "unknown" || got.Version != "unknown" {
		t.Fatalf("no build information: %+v", got)
	}
}
