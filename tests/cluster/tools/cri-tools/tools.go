//go:build tools

// Package tools pins crictl, the CRI client the local node's teardown and
// the real-pod tests use to list, stop and remove pod sandboxes; build it
// with `go build sigs.k8s.io/cri-tools/cmd/crictl`.
package tools

import (
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
