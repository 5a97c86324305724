// Command gatehouse is Gatehouse's one binary: the CLI, the gateway, and the
// Terraform provider.
package main

import (
	"os"
	"path/filepath"

	"github.com/gatehouse-dev/gatehouse/cli"
)

func main() {
	// Terraform sets TF_PLUGIN_MAGIC_COOKIE when it launches a provider, and
	// a terraform-provider-gatehouse link to this binary is how Terraform
	// finds it. Either way the process must speak the plugin protocol.
	if os.Getenv("TF_PLUGIN_MAGIC_COOKIE") != "" || filepath.Base(os.Args[0]) == "terraform-provider-gatehouse" {
		os.Exit(cli.ServeProvider())
	}
	// SSH_ASKPASS names a program, not a command line: a gatehouse-askpass
	// link to this binary is `gatehouse ssh-askpass`.
	if filepath.Base(os.Args[0]) == "gatehouse-askpass" {
		os.Exit(cli.Execute(append([]string{"ssh-askpass"}, os.Args[1:]...)))
	}
	os.Exit(cli.Execute(os.Args[1:]))
}
