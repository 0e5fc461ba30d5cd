package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodTally = `
  tally:
    build: .
    command: [serve, --addr, ":8080", --admin-addr, ":8081", --data-dir, /data]
    ports: ["8080:8080", "127.0.0.1:8081:8081"]
    volumes: [tally-data:/data]
`

// TestRules: each rule refuses the mistake it is for, and a file without one passes.
func TestRules(t *testing.T) {
	cases := []struct {
		name, yaml string
		minTally   int
		want       string // "" for a pass
	}{
		{"good", "services:" + goodTally + "volumes: {tally-data: {}}\n", 1, ""},
		{"not compose", "services: [1, 2]\n", 0, "load"},
		{"unknown key", "services:\n  a:\n    image: x:1\n    imagee: y\n", 0, "load"},
		{"no tag", "services:\n  a:\n    image: busybox\n", 0, "has no tag"},
		{"latest", "services:\n  a:\n    image: busybox:latest\n", 0, "floats (latest)"},
		{"lts", "services:\n  a:\n    image: docker.kurrent.io/kurrent-lts/kurrentdb:lts\n", 0, "floats (lts)"},
		{"digest", "services:\n  a:\n    image: busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n", 0, ""},
		{"registry port is not a tag", "services:\n  a:\n    image: localhost:5000/busybox\n", 0, "has no tag"},
		{"kurrentdb on every interface", "services:\n  k:\n    image: kurrentdb:26.0.3\n    ports: [\"2113:2113\"]\n", 0, `published on "every interface"`},
		{"kurrentdb on 0.0.0.0", "services:\n  k:\n    image: kurrentdb:26.0.3\n    ports: [\"0.0.0.0:2113:2113\"]\n", 0, `published on "0.0.0.0"`},
		{"cert-gen not root", "services:\n  cert-gen:\n    image: g:1\n    user: \"1000:1000\"\n", 0, "must run as root"},
		{"no admin listener", "services:\n  tally:\n    build: .\n    command: [serve, --addr, \":8080\", --data-dir, /data]\n    volumes: [d:/data]\nvolumes: {d: {}}\n", 0, "no --admin-addr"},
		{"admin on every interface", strings.Replace("services:"+goodTally+"volumes: {tally-data: {}}\n", "127.0.0.1:8081:8081", "8081:8081", 1), 0, "admin port 8081 published"},
		{"data dir on a bind mount", strings.Replace("services:"+goodTally, "tally-data:/data", "./data:/data", 1), 0, "bind mount"},
		{"shared data volume", "services:" + goodTally + strings.Replace(goodTally, "tally:", "tally2:", 1) + "volumes: {tally-data: {}}\n", 0, "shares data volume"},
		{"too few instances", "services:" + goodTally + "volumes: {tally-data: {}}\n", 2, "want at least 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "compose.yml")
			if err := os.WriteFile(file, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := check(t.Context(), file, tc.minTally, "")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestProjectFiles: the repository's own compose files pass.
func TestProjectFiles(t *testing.T) {
	for file, minTally := range map[string]int{"../../docker-compose.yml": 1, "../../docker-compose.cluster.yml": 2} {
		if _, err := check(t.Context(), file, minTally, ""); err != nil {
			t.Errorf("%s: %v", file, err)
		}
	}
}
