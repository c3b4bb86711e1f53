//go:build tools

// Package tools pins grpcurl for the local test cluster and scripts.
package tools

import _ "github.com/fullstorydev/grpcurl/cmd/grpcurl"
