package shellcmd

import (
	"strings"
	"testing"
)

// FuzzAnalyze: any command line is analysed without a panic, in bounded
// time, and a simple command's words never hide a shell operator that an
// unquoted literal would have: joined back with quotes, they parse to the
// same words.
func FuzzAnalyze(f *testing.F) {
	for _, s := range []string{"uptime", "ls -l /tmp", "uptime; rm -rf /", "ls $(id)", `echo 'a b' "c\"d"`, "a\\;b", "echo \x00", "echo $'x'"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		facts, err := Analyze(cmd)
		if err != nil || !facts.Simple {
			return
		}
		if len(facts.Argv) == 0 {
			t.Fatalf("%q: simple with no words", cmd)
		}
		var quoted []string
		for _, w := range facts.Argv {
			quoted = append(quoted, "'"+strings.ReplaceAll(w, "'", `'\''`)+"'")
		}
		again, err := Analyze(strings.Join(quoted, " "))
		if err != nil || !again.Simple || strings.Join(again.Argv, "\x00") != strings.Join(facts.Argv, "\x00") {
			t.Fatalf("%q: words %q do not survive requoting: %+v %v", cmd, facts.Argv, again, err)
		}
	})
}
