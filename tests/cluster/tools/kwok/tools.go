//go:build tools

// Package tools pins kwok for the local test cluster and scripts.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
