package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// AdminClient calls the admin API; the tally CLI uses it.
type AdminClient struct {
	base  string
	token string
	hc    *http.Client
}

// NewAdminClient returns a client of the admin API at baseURL (e.g. http://127.0.0.1:8080)
// that presents token. A nil hc uses http.DefaultClient.
func NewAdminClient(baseURL, token string, hc *http.Client) *AdminClient {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &AdminClient{base: strings.TrimRight(baseURL, "/"), token: token, hc: hc}
}

// AdminError is a refusal of the admin API.
type AdminError struct {
	Status  int
	Message string
}

func (e *AdminError) Error() string {
	return fmt.Sprintf("admin API: %s (HTTP %d)", e.Message, e.Status)
}

// CreateProduct adds a product.
func (c *AdminClient) CreateProduct(ctx context.Context, name string) (Product, error) {
	var p Product
	err := c.do(ctx, http.MethodPost, "/admin/v1/products", CreateProductRequest{Name: name}, &p)
	return p, err
}

// ListProducts lists the products by id.
func (c *AdminClient) ListProducts(ctx context.Context) ([]Product, error) {
	var out ProductList
	err := c.do(ctx, http.MethodGet, "/admin/v1/products", nil, &out)
	return out.Products, err
}

// CreateKey adds a license key to a product.
func (c *AdminClient) CreateKey(ctx context.Context, productID int64) (LicenseKey, error) {
	var k LicenseKey
	err := c.do(ctx, http.MethodPost, "/admin/v1/keys", CreateKeyRequest{ProductID: productID}, &k)
	return k, err
}

// ListKeys lists the keys of a product (0: of every product) by id.
func (c *AdminClient) ListKeys(ctx context.Context, productID int64) ([]LicenseKey, error) {
	path := "/admin/v1/keys"
	if productID != 0 {
		path += "?productId=" + url.QueryEscape(strconv.FormatInt(productID, 10))
	}
	var out KeyList
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out.Keys, err
}

// CreateToken adds an access token; the answer holds its secret, shown this once.
func (c *AdminClient) CreateToken(ctx context.Context, req CreateTokenRequest) (NewToken, error) {
	var t NewToken
	err := c.do(ctx, http.MethodPost, "/admin/v1/tokens", req, &t)
	return t, err
}

// ListTokens lists the tokens by creation time, without their secrets.
func (c *AdminClient) ListTokens(ctx context.Context) ([]Token, error) {
	var out TokenList
	err := c.do(ctx, http.MethodGet, "/admin/v1/tokens", nil, &out)
	return out.Tokens, err
}

// RevokeToken ends a token's use and returns it as it now is.
func (c *AdminClient) RevokeToken(ctx context.Context, id uuid.UUID) (Token, error) {
	var t Token
	err := c.do(ctx, http.MethodPost, "/admin/v1/tokens/"+id.String()+"/revoke", nil, &t)
	return t, err
}

func (c *AdminClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("admin API request: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin API %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin API %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e adminError
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &AdminError{Status: resp.StatusCode, Message: e.Error}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("admin API %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Backup fetches a backup archive of the server's data (GET /admin/v1/backup) and copies it to
// w as it arrives. The caller checks the archive: a connection cut mid-way ends it early.
func (c *AdminClient) Backup(ctx context.Context, w io.Writer) (int64, error) {
	const path = "/admin/v1/backup"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return 0, fmt.Errorf("admin API request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("admin API GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e adminError
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return 0, &AdminError{Status: resp.StatusCode, Message: e.Error}
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("admin API GET %s: read the archive: %w", path, err)
	}
	return n, nil
}
