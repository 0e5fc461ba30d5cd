// Command vulngate reads govulncheck's JSON output (-format json) on stdin and fails when code
// of this module reaches a vulnerability in a dependency module. Vulnerabilities in the
// standard library are listed but do not fail the run: they belong to the Go toolchain that
// runs CI, which the project cannot choose here (the workplace offers Go 1.26.8); the release
// image builds with the newest Go 1.26 patch. docs/reliability.md says more.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

type frame struct {
	Module   string `json:"module"`
	Version  string `json:"version"`
	Package  string `json:"package"`
	Function string `json:"function"`
}

type message struct {
	Finding *struct {
		OSV          string  `json:"osv"`
		FixedVersion string  `json:"fixed_version"`
		Trace        []frame `json:"trace"`
	} `json:"finding"`
}

func main() {
	dec := json.NewDecoder(os.Stdin)
	reached := map[string]frame{} // reachable findings by OSV id: the vulnerable frame
	fixed := map[string]string{}
	for {
		var m message
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "vulngate: read govulncheck output:", err)
			os.Exit(2)
		}
		f := m.Finding
		// A finding whose first frame names a function is reached from this module's code;
		// others only say a vulnerable package or module is imported or required.
		if f == nil || len(f.Trace) == 0 || f.Trace[0].Function == "" {
			continue
		}
		reached[f.OSV] = f.Trace[0]
		fixed[f.OSV] = f.FixedVersion
	}
	ids := make([]string, 0, len(reached))
	for id := range reached {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	failed := 0
	for _, id := range ids {
		fr := reached[id]
		where := fmt.Sprintf("%s %s (%s.%s), fixed in %s", fr.Module, fr.Version, fr.Package, fr.Function, fixed[id])
		if fr.Module == "stdlib" {
			fmt.Printf("toolchain: %s reached in the standard library: %s\n", id, where)
			continue
		}
		fmt.Printf("FAIL: %s reached in a dependency: %s\n", id, where)
		failed++
	}
	fmt.Printf("vulngate: %d reachable vulnerabilities, %d in dependencies\n", len(ids), failed)
	if failed > 0 {
		os.Exit(1)
	}
}
