#!/usr/bin/env bash
# Build the servers and tools the test suite uses -- FerretDB, etcd, MinIO, the Kubernetes
# control plane (kube-apiserver, kube-controller-manager, kube-scheduler), kwok's fake kubelets
# and Helm -- from the Go module proxy into a cache outside the repository.
#
#   deploy/testbed/build.sh            build whatever is missing
#   deploy/testbed/build.sh --print    print the path of each pinned server binary
#   ONLY="ferretdb etcd" deploy/testbed/build.sh   build only those
#
# Idempotent: a server whose binary is already in the cache is skipped. Every step says what
# it did and how long it took. The cache lives in $MODELPLANE_TESTBED_CACHE (default
# ~/.cache/modelplane/testbed) with one folder per <server>-<version>.
set -euo pipefail

FERRETDB_VERSION="${FERRETDB_VERSION:-v1.24.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.36.3}"
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20251015172955-9e49d5e7a648}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v4.3.1}"

CACHE="${MODELPLANE_TESTBED_CACHE:-$HOME/.cache/modelplane/testbed}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED=0

log() { printf '[testbed] %s\n' "$*" >&2; }

dest() { printf '%s/%s-%s' "$CACHE" "$1" "$2"; }

if [[ "${1:-}" == "--print" ]]; then
  printf 'ferretdb=%s/bin/ferretdb\n' "$(dest ferretdb "$FERRETDB_VERSION")"
  printf 'etcd=%s/bin/etcd\n' "$(dest etcd "$ETCD_VERSION")"
  printf 'kube-apiserver=%s/bin/kube-apiserver\n' "$(dest kubernetes "$KUBERNETES_VERSION")"
  printf 'minio=%s/bin/minio\n' "$(dest minio "$MINIO_VERSION")"
  printf 'kube-controller-manager=%s/bin/kube-controller-manager\n' "$(dest kubernetes "$KUBERNETES_VERSION")"
  printf 'kube-scheduler=%s/bin/kube-scheduler\n' "$(dest kubernetes "$KUBERNETES_VERSION")"
  printf 'kwok=%s/bin/kwok\n' "$(dest kwok "$KWOK_VERSION")"
  printf 'helm=%s/bin/helm\n' "$(dest helm "$HELM_VERSION")"
  exit 0
fi

command -v go >/dev/null || { log "go is not on PATH; install Go 1.24 or newer"; exit 1; }

# build_one NAME VERSION BINARY FUNCTION: runs FUNCTION in a fresh wrapper module unless the
# binary already exists; the binary lands in <dest>/bin only when the build succeeded.
build_one() {
  local name="$1" version="$2" binary="$3" fn="$4"
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then return 0; fi
  local out; out="$(dest "$name" "$version")"
  if [[ -x "$out/bin/$binary" ]]; then
    log "$name $version: cached at $out/bin/$binary"
    return 0
  fi
  local work; work="$(mktemp -d)"
  local started=$SECONDS
  log "$name $version: building (this is a cold build; it takes minutes)"
  ( cd "$work" && "$fn" "$version" "$work/$binary" ) || { log "$name $version: build FAILED"; rm -rf "$work"; return 1; }
  mkdir -p "$out/bin"
  mv "$work/$binary" "$out/bin/$binary.tmp" && mv "$out/bin/$binary.tmp" "$out/bin/$binary"
  rm -rf "$work"
  log "$name $version: built in $((SECONDS - started)) s -> $out/bin/$binary"
}

build_ferretdb() {
  local version="$1" target="$2"
  go mod init local/ferretdb >/dev/null 2>&1
  go get "github.com/FerretDB/FerretDB/cmd/ferretdb@$version"
  # FerretDB reads build/version/version.txt through go:embed; the module zip lacks it
  # when it is fetched as a dependency, so write it into a writable copy of the module.
  local moddir; moddir="$(go list -m -f '{{.Dir}}' github.com/FerretDB/FerretDB)"
  cp -r "$moddir" ./ferretdb-src && chmod -R u+w ./ferretdb-src
  printf '%s' "$version" > ./ferretdb-src/build/version/version.txt
  go mod edit -replace "github.com/FerretDB/FerretDB=./ferretdb-src"
  # Both backends: SQLite (tests, make run) and PostgreSQL (bench/api.py).
  go build -trimpath -o "$target" github.com/FerretDB/FerretDB/cmd/ferretdb
}

build_etcd() {
  local version="$1" target="$2"
  go mod init local/etcd >/dev/null 2>&1
  cat > main.go <<'GO'
// Wrapper so that etcd builds from the module proxy: the root etcd module carries replace
// directives that `go install` refuses, the server module does not.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go get "go.etcd.io/etcd/server/v3@$version"
  go mod tidy
  go build -trimpath -o "$target" .
}

# kube_wrapper_module VERSION: turn the current (empty) folder into a module that requires
# k8s.io/kubernetes@VERSION and can build its commands. k8s.io/kubernetes requires its staging
# modules at v0.0.0 and replaces them with local folders; derive the list from that version's
# go.mod and point each at the published tag. tools.go names every command built from here so
# that all of them resolve against one and the same module graph (and so share the Go build
# cache package for package).
kube_wrapper_module() {
  local version="$1"
  go mod init local/kubernetes >/dev/null 2>&1
  local staging="v0.${version#v1.}"
  local gomod; gomod="$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  [[ -f "$gomod" ]] || { log "could not download k8s.io/kubernetes@$version"; return 1; }
  local mods; mods="$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u)"
  [[ -n "$mods" ]] || { log "no staging modules found in $gomod"; return 1; }
  local m
  for m in $mods; do go mod edit -replace "$m=$m@$staging"; done
  go mod edit -require "k8s.io/kubernetes@$version"
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
  go mod tidy
}

# build_kube_command COMMAND VERSION TARGET: one command of k8s.io/kubernetes, stamped with
# VERSION the way the release build does (clients and kwok read it from /version).
build_kube_command() {
  local command="$1" version="$2" target="$3"
  kube_wrapper_module "$version"
  go build -trimpath \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$version")" \
    -o "$target" "k8s.io/kubernetes/cmd/$command"
}

build_kube_apiserver() { build_kube_command kube-apiserver "$@"; }
build_kube_controller_manager() { build_kube_command kube-controller-manager "$@"; }
build_kube_scheduler() { build_kube_command kube-scheduler "$@"; }

# kwok (fake kubelets driven by Stage resources) is an ordinary module without replace
# directives, so a wrapper that requires it builds it with exactly its own dependency versions.
build_kwok() {
  local version="$1" target="$2"
  go mod init local/kwok >/dev/null 2>&1
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
GO
  go get "sigs.k8s.io/kwok@$version"
  go mod tidy
  go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${version#v}" \
    -o "$target" sigs.k8s.io/kwok/cmd/kwok
}

build_minio() {
  local version="$1" target="$2"
  go mod init local/minio >/dev/null 2>&1
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/minio/minio"
GO
  go get "github.com/minio/minio@$version"
  go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$target" github.com/minio/minio
}

build_helm() {
  local version="$1" target="$2"
  # tests/test_helm.py renders, lints and installs the chart with it. The module has no
  # replace directives, so a wrapper module that requires it builds the command as released;
  # the version is stamped as the release Makefile does (`helm version` reports it).
  local major="${version%%.*}"
  go mod init local/helm >/dev/null 2>&1
  cat > tools.go <<GO
//go:build tools

package tools

import _ "helm.sh/helm/$major/cmd/helm"
GO
  go get "helm.sh/helm/$major@$version"
  go mod tidy
  go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$version" \
    -o "$target" "helm.sh/helm/$major/cmd/helm"
}

total_started=$SECONDS
status=0
build_one ferretdb "$FERRETDB_VERSION" ferretdb build_ferretdb || status=1
build_one etcd "$ETCD_VERSION" etcd build_etcd || status=1
build_one minio "$MINIO_VERSION" minio build_minio || status=1
build_one kubernetes "$KUBERNETES_VERSION" kube-apiserver build_kube_apiserver || status=1
build_one kubernetes "$KUBERNETES_VERSION" kube-controller-manager build_kube_controller_manager || status=1
build_one kubernetes "$KUBERNETES_VERSION" kube-scheduler build_kube_scheduler || status=1
build_one kwok "$KWOK_VERSION" kwok build_kwok || status=1
build_one helm "$HELM_VERSION" helm build_helm || status=1
log "done in $((SECONDS - total_started)) s (status $status)"
exit $status
