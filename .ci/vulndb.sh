#!/usr/bin/env bash
# Builds a local Go vulnerability database in govulncheck's v1 format (index/db.json,
# index/modules.json, index/vulns.json, ID/<id>.json) in the directory given as $1.
#
# Why: vuln.go.dev is not reachable from CI, but the Go module proxy is, and it serves the
# golang.org/x/vulndb module, whose data/osv/ holds every OSV entry of the database, and whose
# cmd/indexdb writes the v1 database from a folder of OSV files. The database is rebuilt only
# when the vulndb version changes. VULNDB_VERSION pins a version; by default the latest one
# the proxy knows is used, and the pinned fallback below when that lookup fails.
set -euo pipefail
out=${1:?usage: .ci/vulndb.sh OUTDIR}
fallback=v0.0.0-20261105234957-e22db6528018
version=${VULNDB_VERSION:-$(go list -m -f '{{.Version}}' golang.org/x/vulndb@latest 2>/dev/null || echo "$fallback")}

if [ -f "$out/.version" ] && [ "$(cat "$out/.version")" = "$version" ]; then
  echo "vulnerability database $version already in $out"
  exit 0
fi
src=$(go mod download -json "golang.org/x/vulndb@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src/data/osv" ] || { echo "no data/osv in golang.org/x/vulndb@$version" >&2; exit 1; }
rm -rf "$out.tmp"
go run "golang.org/x/vulndb/cmd/indexdb@$version" -vulns "$src/data/osv" -out "$out.tmp"
echo "$version" > "$out.tmp/.version"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "vulnerability database $version: $(ls "$out/ID" | grep -c '\.json$') entries in $out"
