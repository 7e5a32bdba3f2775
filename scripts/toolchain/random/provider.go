// The random resource provider: the Terraform random provider (a Terraform Plugin Framework
// provider) served to the Pulumi engine by pulumi-terraform-bridge's framework bridge, under the
// tokens of the pulumi_random SDK (random:index/randomPassword:RandomPassword, ...).
//
// This module's path lies under the Terraform provider's own module path: Go lets only code under
// that prefix import its internal/provider package, which holds the provider's constructor.
package main

import (
	pf "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/pf/tfbridge"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge/tokens"
	"github.com/terraform-providers/terraform-provider-random/internal/provider"
)

// version is stamped by the build (-X main.version=...).
var version = "0.0.0-dev"

// info describes the provider to the bridge; metadata is the bridge-metadata.json that the
// schema generator writes (empty while generating it).
func info(metadata []byte) tfbridge.ProviderInfo {
	p := tfbridge.ProviderInfo{
		P:            pf.ShimProvider(provider.New()),
		Name:         "random",
		Version:      version,
		Description:  "Random values (passwords, ids, ...) kept in the stack's state.",
		License:      "Apache-2.0",
		MetadataInfo: tfbridge.NewProviderMetadata(metadata),
		// Preview shows what the provider would plan, not a guess from the inputs.
		EnableAccurateBridgePreview: true,
	}
	// random_password -> random:index/randomPassword:RandomPassword, as the SDK names them.
	random := tokens.MakeStandard("random")
	p.MustComputeTokens(tokens.SingleModule("random_", "index", func(module, name string) (string, error) {
		return random(module, "Random"+name)
	}))
	return p
}
