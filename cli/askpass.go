package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/gateway/ssh"
)

// partPrompt is how the gateway asks for the further parts of a long token.
var partPrompt = regexp.MustCompile(`part ([0-9]+)`)

func newSSHAskpassCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh-askpass [PROMPT]",
		Short: "Answer the SSH gateway's token prompts for ssh, scp and sftp (SSH_ASKPASS)",
		Long: `Answer the gateway's token prompts for an unmodified ssh, scp or sftp, as their SSH_ASKPASS
program. The token comes from $GATEHOUSE_TOKEN, the file $GATEHOUSE_TOKEN_FILE, or the output of the
command $GATEHOUSE_TOKEN_COMMAND (run with sh -c), in that order.

OpenSSH reads at most 1023 bytes per prompt, and OIDC tokens are often longer. The gateway's
keyboard-interactive prompt asks for a long token in parts of 1000 bytes ("Access token, part 2:");
this program prints the part the prompt asks for. SSH_ASKPASS names a program, so make a
gatehouse-askpass link to the gatehouse binary (the binary runs ssh-askpass under that name), and
use keyboard-interactive authentication:

  ln -s "$(command -v gatehouse)" ~/bin/gatehouse-askpass
  export SSH_ASKPASS=~/bin/gatehouse-askpass SSH_ASKPASS_REQUIRE=force
  export GATEHOUSE_TOKEN_FILE=~/.gatehouse/token
  ssh -o PreferredAuthentications=keyboard-interactive bastion@gateway.internal -p 2222 uptime

A token of at most 1023 bytes can also be given as the password (PreferredAuthentications=password).`,
		Example: `  gatehouse ssh-askpass "Access token, part 2: "      # what ssh runs, through the link
  SSH_ASKPASS=~/bin/gatehouse-askpass SSH_ASKPASS_REQUIRE=force GATEHOUSE_TOKEN_FILE=token \
    ssh -o PreferredAuthentications=keyboard-interactive -p 2222 bastion@127.0.0.1 uptime`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			token, err := askpassToken()
			if err != nil {
				return failed("%w", err)
			}
			prompt := ""
			if len(args) == 1 {
				prompt = args[0]
			}
			fmt.Fprintln(cmd.OutOrStdout(), tokenPart(token, prompt))
			return nil
		},
	}
}

// tokenPart is what to answer prompt with: the part it asks for, the first
// part for the first token prompt, or the whole token for a password
// prompt.
func tokenPart(token, prompt string) string {
	part := 0
	if m := partPrompt.FindStringSubmatch(prompt); m != nil {
		part, _ = strconv.Atoi(m[1])
	} else if strings.Contains(prompt, "Access token") {
		part = 1
	}
	if part == 0 {
		return token
	}
	start := (part - 1) * ssh.TokenPart
	if start >= len(token) {
		return ""
	}
	return token[start:min(start+ssh.TokenPart, len(token))]
}

func askpassToken() (string, error) {
	if t := strings.TrimSpace(os.Getenv("GATEHOUSE_TOKEN")); t != "" {
		return t, nil
	}
	if f := os.Getenv("GATEHOUSE_TOKEN_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	}
	if c := os.Getenv("GATEHOUSE_TOKEN_COMMAND"); c != "" {
		out, err := exec.Command("sh", "-c", c).Output()
		if err != nil {
			return "", fmt.Errorf("GATEHOUSE_TOKEN_COMMAND: %w", err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	return "", errors.New("no token: set GATEHOUSE_TOKEN, GATEHOUSE_TOKEN_FILE or GATEHOUSE_TOKEN_COMMAND")
}
