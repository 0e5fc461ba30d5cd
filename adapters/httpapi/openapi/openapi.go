// Package openapi holds Tally's OpenAPI 3.1 document: every route of the data-object API
// (/api/data/), the admin API (/admin/v1/), the audit API (/v1/) and the operational
// endpoints, with their parameters and the JSON of their answers and refusals. It is written
// in YAML (openapi.yaml, embedded) and served as JSON at /openapi.json. The tests keep it true:
// TestOpenAPICoversRoutes compares it with the routes the routers serve, and the HTTP tests
// validate every response they get against it (package openapitest).
package openapi

import (
	_ "embed"
	"fmt"
	"net/http"

	"github.com/goccy/go-yaml"
)

//go:embed openapi.yaml
var document []byte

// YAML returns the document as written.
func YAML() []byte { return append([]byte(nil), document...) }

// JSON returns the document as JSON, with its keys in the order they are written.
func JSON() ([]byte, error) {
	j, err := yaml.YAMLToJSON(document)
	if err != nil {
		return nil, fmt.Errorf("openapi: convert the document to JSON: %w", err)
	}
	return j, nil
}

// Handler serves the document as JSON.
func Handler() (http.Handler, error) {
	j, err := JSON()
	if err != nil {
		return nil, err
	}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(j)
	}), nil
}
