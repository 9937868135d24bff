//go:build tools

// Package tools pins promtool and the Prometheus server that the local image of the dedicated tier runs.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
