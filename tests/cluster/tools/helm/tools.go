//go:build tools

// Package tools pins helm for the local test cluster and scripts.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
