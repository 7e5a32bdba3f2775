//go:build !tfgen

// The provider binary. The build (scripts/toolchain.py) first runs this module with the tfgen tag
// (tfgen.go), which writes the two embedded files below from the provider definition.
package main

import (
	"context"
	_ "embed"

	pf "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/pf/tfbridge"
)

//go:embed schema.json
var schema []byte

//go:embed bridge-metadata.json
var metadata []byte

func main() {
	pf.Main(context.Background(), "random", info(metadata), pf.ProviderMetadata{PackageSchema: schema})
}
