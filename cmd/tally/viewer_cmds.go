package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/httpapi"
)

// newViewerCommand is `tally viewer`: create, list and revoke the console's read-only viewer
// credentials (admin API).
func newViewerCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "viewer", Short: "Manage read-only viewer credentials of the console and audit API (admin API)"}
	var name string
	var validFor time.Duration
	create := &cobra.Command{
		Use:   "create --name NAME [--valid-for 720h]",
		Short: "Create a viewer credential and print its secret (shown only this once)",
		Long: "Create a read-only viewer credential and print its secret, which is shown only this once.\n" +
			"A viewer signs in to the console (/console/) and reads everything the admin reads through\n" +
			"the audit and admin APIs; every change is refused.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := httpapi.CreateViewerRequest{Name: name}
			if validFor < 0 {
				return fmt.Errorf("--valid-for %v: want a positive duration", validFor)
			}
			if validFor > 0 {
				exp := time.Now().Add(validFor).UTC().Truncate(time.Second)
				req.Expires = &exp
			}
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			v, err := c.CreateViewer(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "viewer %s created; its secret is shown only now:\n", v.ID)
			_, err = fmt.Fprintln(cmd.OutOrStdout(), v.Secret)
			return err
		},
	}
	create.Flags().StringVar(&name, "name", "", "who or what the credential is for")
	create.Flags().DurationVar(&validFor, "valid-for", 0, "how long the credential works (0: until revoked)")
	_ = create.MarkFlagRequired("name")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the viewer credentials (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			vs, err := c.ListViewers(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tEXPIRES\tREVOKED\tCREATED")
			for _, v := range vs {
				exp := "-"
				if v.Expires != nil {
					exp = v.Expires.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\n", v.ID, v.Name, exp, v.Revoked, v.Created.UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a viewer credential",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := uuid.Parse(args[0])
			if err != nil {
				return fmt.Errorf("viewer id %q: %w", args[0], err)
			}
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			v, err := c.RevokeViewer(cmd.Context(), id)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", v.ID)
			return err
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
