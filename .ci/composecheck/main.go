// Command composecheck validates Tally's compose files without a Docker engine: each file is
// loaded by compose-go (the library Docker Compose itself loads files with: interpolation,
// the Compose Specification's JSON schema, normalisation, consistency of networks and volumes),
// and then held to the project's deployment rules:
//
//   - every image has a pinned tag (none, "latest" or "lts" is refused);
//   - KurrentDB's ports are published on 127.0.0.1 only;
//   - each Tally service (a service built from the Dockerfile) serves the admin listener
//     (--admin-addr) and publishes it, if at all, on 127.0.0.1 only, and keeps its
//     --data-dir on a named volume of its own;
//   - a certificate generator (a service named cert-gen) runs as root, so that it can write
//     the bind mount it generates into whoever owns it on the host;
//   - FILE:N asks for at least N Tally services in FILE;
//   - with -tally BINARY, each Tally service's command is parsed by that binary (`tally
//     <command> --help`), so a flag the binary does not have fails here.
//
// Usage: composecheck [-tally BINARY] FILE[:N]...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

func main() {
	tallyBin := flag.String("tally", "", "tally binary to parse each Tally service's command with")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: composecheck [-tally BINARY] FILE[:MIN_TALLY]...")
		os.Exit(2)
	}
	failed := false
	for _, arg := range flag.Args() {
		file, minTally := arg, 0
		if i := strings.LastIndex(arg, ":"); i > 0 {
			n, err := strconv.Atoi(arg[i+1:])
			if err == nil {
				file, minTally = arg[:i], n
			}
		}
		summary, err := check(context.Background(), file, minTally, *tallyBin)
		if err != nil {
			failed = true
			fmt.Fprintf(os.Stderr, "composecheck: %s:\n%v\n", file, err)
			continue
		}
		fmt.Printf("composecheck: %s: ok (%s)\n", file, summary)
	}
	if failed {
		os.Exit(1)
	}
}

// check loads one compose file and applies the rules; it returns a one-line summary.
func check(ctx context.Context, file string, minTally int, tallyBin string) (string, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return "", err
	}
	opts, err := cli.NewProjectOptions([]string{abs},
		cli.WithWorkingDirectory(filepath.Dir(abs)),
		cli.WithName("composecheck"),
		cli.WithEnv(nil), // the file must stand on its own, not on this machine's environment
	)
	if err != nil {
		return "", err
	}
	project, err := opts.LoadProject(ctx)
	if err != nil {
		return "", fmt.Errorf("load: %w", err)
	}
	return checkProject(project, minTally, tallyBin)
}

func checkProject(project *types.Project, minTally int, tallyBin string) (string, error) {
	var problems []error
	fail := func(format string, args ...any) { problems = append(problems, fmt.Errorf("  "+format, args...)) }
	names := make([]string, 0, len(project.Services))
	for name := range project.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	dataVolumes := map[string]string{} // volume -> Tally service using it
	var tallies []string
	for _, name := range names {
		svc := project.Services[name]
		if svc.Image != "" {
			if tag, ok := imageTag(svc.Image); !ok {
				fail("service %s: image %q has no tag: pin a release", name, svc.Image)
			} else if tag == "latest" || tag == "lts" {
				fail("service %s: image %q floats (%s): pin a release", name, svc.Image, tag)
			}
		}
		if strings.Contains(svc.Image, "kurrentdb") {
			for _, p := range svc.Ports {
				if p.Published != "" && p.HostIP != "127.0.0.1" {
					fail("service %s: KurrentDB port %d published on %q, want 127.0.0.1 only", name, p.Target, hostIP(p))
				}
			}
		}
		if name == "cert-gen" && svc.User != "root" && svc.User != "0" && svc.User != "0:0" {
			fail("service %s: runs as %q; it must run as root to write the bind mount it generates into", name, svc.User)
		}
		if svc.Build == nil {
			continue
		}
		tallies = append(tallies, name)
		flags := commandFlags(svc.Command)
		admin, ok := flags["--admin-addr"]
		if !ok {
			fail("service %s: no --admin-addr: the admin API must have a listener of its own", name)
		} else if port, err := listenPort(admin); err != nil {
			fail("service %s: --admin-addr %q: %v", name, admin, err)
		} else {
			for _, p := range svc.Ports {
				if p.Target == port && p.Published != "" && p.HostIP != "127.0.0.1" {
					fail("service %s: admin port %d published on %q, want 127.0.0.1 only", name, port, hostIP(p))
				}
			}
		}
		if _, ok := flags["--addr"]; !ok {
			fail("service %s: no --addr for the public listener", name)
		}
		dataDir, ok := flags["--data-dir"]
		if !ok {
			fail("service %s: no --data-dir", name)
		} else {
			found := false
			for _, v := range svc.Volumes {
				if v.Target != dataDir {
					continue
				}
				found = true
				if v.Type != types.VolumeTypeVolume {
					fail("service %s: --data-dir %s is a %s mount, want a named volume", name, dataDir, v.Type)
				} else if other, dup := dataVolumes[v.Source]; dup {
					fail("service %s: shares data volume %s with %s: each instance needs its own data directory", name, v.Source, other)
				} else {
					dataVolumes[v.Source] = name
				}
			}
			if !found {
				fail("service %s: --data-dir %s is not on a volume", name, dataDir)
			}
		}
		if tallyBin != "" {
			args := append(append([]string(nil), svc.Command...), "--help")
			if out, err := exec.Command(tallyBin, args...).CombinedOutput(); err != nil {
				fail("service %s: %s %s: %v\n%s", name, tallyBin, strings.Join(args, " "), err, out)
			}
		}
	}
	if len(tallies) < minTally {
		fail("%d Tally services (%s), want at least %d", len(tallies), strings.Join(tallies, ", "), minTally)
	}
	if len(problems) > 0 {
		return "", errors.Join(problems...)
	}
	return fmt.Sprintf("%d services: %s; Tally: %s", len(names), strings.Join(names, ", "), strings.Join(tallies, ", ")), nil
}

// imageTag returns the tag (or digest) of an image reference, and whether it has one.
func imageTag(ref string) (string, bool) {
	if i := strings.Index(ref, "@"); i >= 0 {
		return ref[i+1:], true
	}
	last := ref[strings.LastIndex(ref, "/")+1:]
	if i := strings.LastIndex(last, ":"); i >= 0 {
		return last[i+1:], true
	}
	return "", false
}

func hostIP(p types.ServicePortConfig) string {
	if p.HostIP == "" {
		return "every interface"
	}
	return p.HostIP
}

// commandFlags reads --flag value and --flag=value pairs from a command.
func commandFlags(cmd types.ShellCommand) map[string]string {
	out := map[string]string{}
	for i := 0; i < len(cmd); i++ {
		a := cmd[i]
		if !strings.HasPrefix(a, "--") {
			continue
		}
		if k, v, ok := strings.Cut(a, "="); ok {
			out[k] = v
			continue
		}
		if i+1 < len(cmd) && !strings.HasPrefix(cmd[i+1], "--") {
			out[a] = cmd[i+1]
			i++
		} else {
			out[a] = ""
		}
	}
	return out
}

// listenPort is the port of a listen address such as ":8081" or "0.0.0.0:8081".
func listenPort(addr string) (uint32, error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return 0, errors.New("no port")
	}
	n, err := strconv.ParseUint(addr[i+1:], 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port: %w", err)
	}
	return uint32(n), nil
}
