//go:build tfgen

// The bridge's schema generator on our provider definition:
// `go run -tags tfgen . schema --out DIR` writes schema.json and bridge-metadata.json.
package main

import "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/pf/tfgen"

func main() {
	tfgen.Main("random", info(nil))
}
