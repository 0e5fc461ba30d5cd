package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"time"
	_ "time/tzdata" // zone data for --tz (Europe/Stockholm…) on machines without it

	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/cmd/tally/internal/auditcli"
	"github.com/tallyledger/tally/domain/eventstore"
)

// auditClient points the client commands at --server with the admin credential.
func auditClient(g *globalFlags) auditcli.Client {
	return auditcli.Client{
		Server: func() string { return g.Server }, AdminToken: g.adminToken,
		// Usage reports replay the whole store: a long timeout.
		NewHTTP:     func() (*http.Client, error) { return g.httpClient(5 * time.Minute) },
		NewLongHTTP: func() (*http.Client, error) { return g.httpClient(0) },
	}
}

// auditLocal lets replay and verify open the store the way tally serve does.
func auditLocal(g *globalFlags) auditcli.Local {
	return auditcli.Local{
		DataDir: func() string { return g.DataDir },
		Open: func(ctx context.Context, kind, kurrentURL string) (eventstore.Store, error) {
			// Info, not only warnings: opening a store of an earlier schema migrates it, which
			// takes minutes on a large store and logs its progress at Info (docs/operations.md).
			logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			return openStore(ctx, logger, g.DataDir, serveConfig{Store: kind, KurrentURL: kurrentURL})
		},
		InUse: func(err error) bool { return errors.Is(err, embedded.ErrLocked) },
	}
}

func newHistoryCommand(g *globalFlags) *cobra.Command {
	return auditcli.NewHistoryCommand(auditClient(g))
}
func newValueCommand(g *globalFlags) *cobra.Command { return auditcli.NewValueCommand(auditClient(g)) }
func newUsageCommand(g *globalFlags) *cobra.Command { return auditcli.NewUsageCommand(auditClient(g)) }
func newCorrectCommand(g *globalFlags) *cobra.Command {
	return auditcli.NewCorrectCommand(auditClient(g))
}
func newReplayCommand(g *globalFlags) *cobra.Command { return auditcli.NewReplayCommand(auditLocal(g)) }
func newVerifyCommand(g *globalFlags) *cobra.Command {
	return auditcli.NewVerifyCommand(auditLocal(g), auditClient(g))
}
func newReadModelsCommand(g *globalFlags) *cobra.Command {
	return auditcli.NewReadModelsCommand(auditClient(g))
}
