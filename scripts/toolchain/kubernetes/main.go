// The Kubernetes resource provider, served by the pulumi-kubernetes provider module. The build
// (scripts/toolchain.py) writes the two embedded files beside this one with the provider's own
// generator, from the schema.json and terraform-mapping.json its module ships.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema-embed.json
var pulumiSchema []byte

//go:embed terraform-mapping-embed.json
var terraformMapping []byte

func main() {
	provider.Serve("kubernetes", version.Version, pulumiSchema, terraformMapping)
}
