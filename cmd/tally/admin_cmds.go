package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/domain"
)

// adminClient returns a client of the admin API at --server with the admin credential.
// (--server's default and TALLY_SERVER are applied to the flag by applyEnv, as for the audit
// commands.)
func (g *globalFlags) adminClient() (*httpapi.AdminClient, error) {
	token, err := g.adminToken()
	if err != nil {
		return nil, err
	}
	hc, err := g.httpClient(30 * time.Second)
	if err != nil {
		return nil, err
	}
	return httpapi.NewAdminClient(g.Server, token, hc), nil
}

// newProductCommand is `tally product`: create and list products.
func newProductCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "product", Short: "Manage products (admin API)"}
	var name string
	create := &cobra.Command{
		Use:   "create --name NAME",
		Short: "Create a product and print its id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			p, err := c.CreateProduct(cmd.Context(), name)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), p.ID)
			return err
		},
	}
	create.Flags().StringVar(&name, "name", "", "product name")
	_ = create.MarkFlagRequired("name")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the products",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			ps, err := c.ListProducts(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tCREATED\tON TAMPER")
			for _, p := range ps {
				onTamper := p.OnTamper
				if onTamper == "" {
					onTamper = string(domain.DefaultIntegrityPolicy) + " (default)"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", p.ID, p.Name, p.Created.UTC().Format(time.RFC3339), onTamper)
			}
			return tw.Flush()
		},
	}
	cmd.AddCommand(create, list, newProductSetCommand(g))
	return cmd
}

// newKeyCommand is `tally key`: create and list license keys.
func newKeyCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Manage license keys (admin API)"}
	var createProduct int64
	create := &cobra.Command{
		Use:   "create --product ID",
		Short: "Create a license key of a product and print the key string",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			k, err := c.CreateKey(cmd.Context(), createProduct)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), k.Key)
			return err
		},
	}
	create.Flags().Int64Var(&createProduct, "product", 0, "product id")
	_ = create.MarkFlagRequired("product")
	var listProduct int64
	list := &cobra.Command{
		Use:   "list [--product ID]",
		Short: "List the license keys, of one product or of all",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			ks, err := c.ListKeys(cmd.Context(), listProduct)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tPRODUCT\tKEY\tCREATED")
			for _, k := range ks {
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\n", k.ID, k.ProductID, k.Key, k.Created.UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	list.Flags().Int64Var(&listProduct, "product", 0, "only the keys of this product")
	cmd.AddCommand(create, list)
	return cmd
}

// newTokenCommand is `tally token`: create, list and revoke access tokens.
func newTokenCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage access tokens (admin API)"}
	var req httpapi.CreateTokenRequest
	var permissions string
	create := &cobra.Command{
		Use:   "create --permissions LIST --product-lock P --key-lock K --feature-lock F [--name N]",
		Short: "Create an access token and print its secret (shown only this once)",
		Long: "Create an access token and print its secret, which is shown only this once.\n\n" +
			"--permissions is a comma-separated list of data-object methods (" + methodList() + ") or \"all\".\n" +
			"--product-lock 0 allows any product; --key-lock 0 is none, -1 confines the token to the\n" +
			"key-specific (…ToKey) methods, a key id locks it to that key; --feature-lock 0 is none,\n" +
			"else the largest step of one increment or decrement. Every lock must be given, so that a\n" +
			"token is never unlocked by oversight.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			methods, err := parsePermissions(permissions)
			if err != nil {
				return err
			}
			req.Methods = methods
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			t, err := c.CreateToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s created; its secret is shown only now:\n", t.ID)
			_, err = fmt.Fprintln(cmd.OutOrStdout(), t.Secret)
			return err
		},
	}
	f := create.Flags()
	f.StringVar(&permissions, "permissions", "", `comma-separated method names, or "all"`)
	f.Int64Var(&req.ProductLock, "product-lock", 0, "0: any product; else that product only")
	f.Int64Var(&req.KeyLock, "key-lock", 0, "0: none; -1: key-specific methods only; a key id: that key only")
	f.Int64Var(&req.FeatureLock, "feature-lock", 0, "0: none; else the largest step of one change")
	f.StringVar(&req.Name, "name", "", "a name to recognise the token by")
	for _, name := range []string{"permissions", "product-lock", "key-lock", "feature-lock"} {
		_ = create.MarkFlagRequired(name)
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the access tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			ts, err := c.ListTokens(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tPERMISSIONS\tPRODUCT LOCK\tKEY LOCK\tFEATURE LOCK\tREVOKED\tCREATED")
			for _, t := range ts {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%t\t%s\n", t.ID, t.Name, strings.Join(t.Methods, ","),
					t.ProductLock, t.KeyLock, t.FeatureLock, t.Revoked, t.Created.UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an access token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := uuid.Parse(args[0])
			if err != nil {
				return fmt.Errorf("token id %q: %w", args[0], err)
			}
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			t, err := c.RevokeToken(cmd.Context(), id)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", t.ID)
			return err
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

// parsePermissions reads --permissions: method names in any case, or "all".
func parsePermissions(list string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(list, ",") {
		part = strings.TrimSpace(part)
		switch {
		case part == "":
			continue
		case strings.EqualFold(part, "all"):
			for _, m := range domain.AllMethods {
				out = append(out, string(m))
			}
			continue
		}
		m, err := domain.ParseMethod(part)
		if err != nil {
			return nil, fmt.Errorf("--permissions: %w (known: %s, or all)", err, methodList())
		}
		out = append(out, string(m))
	}
	if len(out) == 0 {
		return nil, errors.New("--permissions: name at least one method, or all")
	}
	return out, nil
}

func methodList() string {
	names := make([]string, len(domain.AllMethods))
	for i, m := range domain.AllMethods {
		names[i] = string(m)
	}
	return strings.Join(names, ", ")
}
