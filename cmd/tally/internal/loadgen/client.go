package loadgen

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
)

// apiClient calls the Cryptolens data-object API with prepared form bodies.
type apiClient struct {
	base string
	hc   *http.Client
}

func newAPIClient(base string, hc *http.Client) *apiClient {
	return &apiClient{base: strings.TrimRight(base, "/"), hc: hc}
}

// apiAnswer is the body every data-object method answers with, with Tally's additions.
type apiAnswer struct {
	Result      int     `json:"result"`
	Message     *string `json:"message"`
	ID          int64   `json:"id"`
	Applied     int     `json:"applied"`
	Known       int64   `json:"known"`
	DataObjects []struct {
		ID       int64 `json:"id"`
		IntValue int32 `json:"intValue"`
	} `json:"dataObjects"`
}

// refusal is a call the server answered with result 1.
type refusal struct {
	method  string
	status  int
	message string
}

func (r *refusal) Error() string {
	return fmt.Sprintf("%s: HTTP %d: %s", r.method, r.status, r.message)
}

// form encodes parameters as a request body.
func form(kv ...string) []byte {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return []byte(v.Encode())
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// do posts a prepared form body to a method and decodes the answer.
func (c *apiClient) do(ctx context.Context, method string, body []byte) (apiAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/data/"+method, bytes.NewReader(body))
	if err != nil {
		return apiAnswer{}, fmt.Errorf("%s: %w", method, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.hc.Do(req)
	if err != nil {
		return apiAnswer{}, fmt.Errorf("%s: %w", method, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return apiAnswer{}, fmt.Errorf("%s: read answer: %w", method, err)
	}
	return decodeAnswer(method, resp.StatusCode, b)
}

// maxAnswerBytes bounds an answer's body (a ListDataObjects of many objects is the largest).
const maxAnswerBytes = 64 << 20

// decodeAnswer decodes a method's answer; a result other than 0 or a status other than 200 is
// a refusal.
func decodeAnswer(method string, status int, body []byte) (apiAnswer, error) {
	var a apiAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return apiAnswer{}, fmt.Errorf("%s: HTTP %d: decode answer %q: %w", method, status, truncate(body, 200), err)
	}
	if a.Result != 0 || status != http.StatusOK {
		msg := ""
		if a.Message != nil {
			msg = *a.Message
		}
		return a, &refusal{method: method, status: status, message: msg}
	}
	return a, nil
}

// call runs a method whose answer carries nothing but success.
func (c *apiClient) call(ctx context.Context, method string, body []byte) error {
	_, err := c.do(ctx, method, body)
	return err
}

// upload sends a prepared UploadValuesToKey body.
func (c *apiClient) upload(ctx context.Context, body []byte) (apiAnswer, error) {
	return c.do(ctx, "UploadValuesToKey", body)
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
