package cli

import (
	"fmt"
	"os"
)

// ServeProvider serves the Terraform provider over the plugin protocol. The
// provider is not part of this build yet; Terraform shows this message.
func ServeProvider() int {
	fmt.Fprintln(os.Stderr, "gatehouse: this build does not include the Terraform provider yet; build a gatehouse that does, or use `gatehouse bundle build` with HCL policies")
	return exitFailure
}
