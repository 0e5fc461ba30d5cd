package main

import (
	"fmt"
	"io"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// buildInfo is what tally version reports, from the module's build information.
type buildInfo struct {
	Version   string // the module version ("(devel)" for a build from a checkout)
	Commit    string // vcs.revision, with "-dirty" when vcs.modified
	GoVersion string
	BuildDate string // vcs.time: the commit's time, the closest date a reproducible build has
}

// readBuildInfo reads the running binary's build information. Fields the binary does not
// carry (a test binary, a build without VCS stamping) are "unknown".
func readBuildInfo() buildInfo {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		info = nil
	}
	return buildInfoFrom(info)
}

// buildInfoFrom picks what tally version reports from a binary's build information (nil: none).
func buildInfoFrom(info *debug.BuildInfo) buildInfo {
	b := buildInfo{Version: "unknown", Commit: "unknown", GoVersion: "unknown", BuildDate: "unknown"}
	if info == nil {
		return b
	}
	b.GoVersion = info.GoVersion
	if v := info.Main.Version; v != "" {
		b.Version = v
	}
	modified := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Commit = s.Value
		case "vcs.time":
			b.BuildDate = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if modified && b.Commit != "unknown" {
		b.Commit += "-dirty"
	}
	return b
}

func (b buildInfo) String() string {
	return fmt.Sprintf("tally %s\ncommit: %s\ngo: %s\nbuilt: %s\n", b.Version, b.Commit, b.GoVersion, b.BuildDate)
}

func writeVersion(w io.Writer) error {
	_, err := io.WriteString(w, readBuildInfo().String())
	return err
}

// newVersionCommand is `tally version`.
func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit, Go version and build date",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return writeVersion(cmd.OutOrStdout())
		},
	}
}
